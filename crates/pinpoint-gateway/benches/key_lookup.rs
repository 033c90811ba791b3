//! API-key lookup cost as the directory grows to 1,000,000 keys: one concurrent-map lookup
//! and one HMAC-SHA256, so the time should stay flat. Prints the process's resident memory
//! after each size is loaded. Run: `cargo bench -p pinpoint-gateway --bench key_lookup`.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use pinpoint_core::identity::{ApiKey, KeyKind};
use pinpoint_core::keys;
use pinpoint_gateway::directory::Directory;

const SECRET: &str = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQ";

fn resident_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

fn key_id(i: usize) -> String {
    format!("{i:016x}")
}

fn fill(directory: &Directory, pepper: &[u8], from: usize, to: usize) {
    // Every key shares one secret so filling is fast; lookups still hash and compare.
    let hash = keys::hash_secret(pepper, SECRET).to_vec();
    for i in from..to {
        directory.insert_key(
            ApiKey {
                id: key_id(i),
                name: String::from("bench"),
                kind: KeyKind::Application,
                org_id: String::from("00000000-0000-0000-0000-000000000000"),
                principal_id: Some(format!("p{}", i % 1000)),
                scopes: None,
                expires_at_ms: None,
                revoked: false,
                created_at_ms: 0,
                last_used_at_ms: None,
                replaced_by: None,
            },
            hash.clone(),
        );
    }
}

fn lookup(c: &mut Criterion) {
    let pepper: Arc<[u8]> = Arc::from(&[7u8; 32][..]);
    let directory = Directory::in_memory(pepper.clone());
    let mut group = c.benchmark_group("key_lookup");
    let mut loaded = 0;
    let base_rss = resident_mib();
    for size in [1_000usize, 100_000, 1_000_000] {
        fill(&directory, &pepper, loaded, size);
        loaded = size;
        eprintln!(
            "key_lookup: {size} keys loaded, resident memory {:.1} MiB ({:.1} MiB over the empty process)",
            resident_mib(),
            resident_mib() - base_rss
        );
        let presented: Vec<String> = (0..1024)
            .map(|i| keys::format(&key_id((i * 7919) % size), SECRET))
            .collect();
        let mut n = 0;
        group.bench_with_input(BenchmarkId::from_parameter(size), &size, |b, _| {
            b.iter(|| {
                n = (n + 1) % presented.len();
                black_box(directory.verify_key(black_box(&presented[n]), 0).is_ok())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, lookup);
criterion_main!(benches);
