//! CPU cost of the policy pipeline alone, per request: a route with no access rules (every
//! layer "not mine") against one with the full chain (API-key authentication, RBAC, an IP
//! allow list and a rate limit sized not to trigger). The routes are bench/routes.toml, the
//! same the throughput benchmark (bench/run.sh) measures over real sockets. The
//! `_2threads` variants run the same request on two threads at once (one caller served by
//! both cores), which shows what shared writes (locks, reference counts) cost.
//! Run: `cargo bench -p pinpoint-gateway --bench pipeline`.

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue, Method};
use pinpoint_core::config::Config;
use pinpoint_core::identity::{KeyKind, PrincipalKind};
use pinpoint_gateway::directory::Directory;
use pinpoint_gateway::runtime::{Runtime, Services};
use pinpoint_gateway::tokens::TokenService;
use pinpoint_gateway::upstream::HealthRegistry;
use pinpoint_policy::pipeline::RequestCtx;
use pinpoint_policy::rate_state::MemoryRateState;
use pinpoint_store::prelude::*;
use pinpoint_store::{NewKey, Store};

/// The same routes as the throughput benchmark's, with an upstream that is never called.
const ROUTES: &str = include_str!("../../../bench/routes.toml");

fn pipeline(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (runtime, key) = rt.block_on(async {
        let store = Store::open(dir.path()).await.unwrap();
        let org = store.create_org("bench").await.unwrap();
        let role = store
            .create_role(&org.id, "reader", &["orders:read".into()])
            .await
            .unwrap();
        let user = store
            .create_principal(&org.id, PrincipalKind::User, "u", None)
            .await
            .unwrap();
        store.assign_role(&user.id, &role.id).await.unwrap();
        let key = store
            .create_key(NewKey {
                name: "k".into(),
                kind: KeyKind::Application,
                org_id: org.id.clone(),
                principal_id: Some(user.id.clone()),
                scopes: None,
                expires_at_ms: None,
            })
            .await
            .unwrap()
            .key;
        let config = Config::parse(&ROUTES.replace("@ECHO_ADDR@", "127.0.0.1:9"), "bench").unwrap();
        let replay = Arc::new(pinpoint_gateway::cloudauth::ProofReplay::new(store.clone()));
        let services = Services {
            cloudauth: Arc::new(
                pinpoint_gateway::cloudauth::CloudAuth::new(
                    &config.cloudauth,
                    replay.clone(),
                    Arc::new(MemoryRateState::default()),
                )
                .unwrap(),
            ),
            directory: Directory::load(&store).await.unwrap(),
            tokens: TokenService::start(&store, &config.jwt).await.unwrap(),
            rate: Arc::new(MemoryRateState::default()),
            replay,
            cluster: None,
        };
        (
            Runtime::build(config, &HealthRegistry::default(), "127.0.0.1:9", &services),
            key,
        )
    });
    let peer = SocketAddr::from(([127, 0, 0, 1], 40000));
    let mut with_key = HeaderMap::new();
    with_key.insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {key}")).unwrap(),
    );
    let mut group = c.benchmark_group("pipeline");
    for (name, path) in [("bare", "/bare/x"), ("chain", "/chain/x")] {
        group.bench_function(name, |b| {
            b.iter(|| {
                rt.block_on(async {
                    let mut ctx = RequestCtx::new(&Method::GET, path, None, &with_key, peer, peer.ip(), "bench", 0);
                    let verdict = runtime.pipeline.run(&mut ctx).await;
                    assert!(verdict.denial.is_none());
                    black_box((verdict, ctx.identity.take(), std::mem::take(&mut ctx.response_headers)))
                })
            })
        });
    }
    // Two threads on one key: what the shared cache lines cost when both cores serve
    // the same caller at once.
    for (name, path) in [("bare_2threads", "/bare/x"), ("chain_2threads", "/chain/x")] {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                std::thread::scope(|s| {
                    let handles: Vec<_> = (0..2)
                        .map(|_| {
                            s.spawn(|| {
                                let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
                                let start = std::time::Instant::now();
                                for _ in 0..iters {
                                    rt.block_on(async {
                                        let mut ctx = RequestCtx::new(
                                            &Method::GET,
                                            path,
                                            None,
                                            &with_key,
                                            peer,
                                            peer.ip(),
                                            "bench",
                                            0,
                                        );
                                        let verdict = runtime.pipeline.run(&mut ctx).await;
                                        black_box((
                                            verdict,
                                            ctx.identity.take(),
                                            std::mem::take(&mut ctx.response_headers),
                                        ))
                                    });
                                }
                                start.elapsed()
                            })
                        })
                        .collect();
                    handles.into_iter().map(|h| h.join().unwrap()).max().unwrap()
                })
            })
        });
    }
    group.finish();
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
