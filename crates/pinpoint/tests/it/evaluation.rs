//! The side-effect-free evaluation decides as the live proxy does: a few thousand generated
//! requests (methods in any case, dot-segment and encoded paths, hosts, credentials of
//! several tenants, origins, forwarded addresses, override headers) are sent to the running
//! proxy over raw sockets and given to an `Evaluator` of the same config over the same
//! store; the verdicts and reason codes must all agree.

use std::sync::Arc;

use pinpoint_core::config::Config;
use pinpoint_gateway::directory::{Directory, LiveIdentities};
use pinpoint_gateway::evaluate::Evaluator;
use pinpoint_gateway::tokens::TokenService;
use pinpoint_policy::world::FixedClock;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::access::world;

/// A small deterministic generator (xorshift), so a failure names a reproducible case.
struct Cases(u64);

impl Cases {
    fn pick<'a, T>(&mut self, from: &'a [T]) -> &'a T {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        &from[(self.0 % from.len() as u64) as usize]
    }
}

/// Sends `head` (a whole request head) on a fresh connection and returns the response's
/// status and Pinpoint's request id.
async fn send(proxy: std::net::SocketAddr, head: &str) -> (u16, Option<String>) {
    let mut stream = tokio::net::TcpStream::connect(proxy).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8_lossy(&response);
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let id = text
        .lines()
        .take_while(|l| !l.is_empty())
        .find_map(|l| l.strip_prefix("x-request-id: "))
        .map(|v| v.trim().to_owned());
    (status, id)
}

#[tokio::test]
async fn the_evaluation_decides_every_generated_request_as_the_live_proxy_does() {
    let w = world("").await;
    let text = std::fs::read_to_string(&w.gw.config_path).unwrap();
    let config = Config::parse(&text, "evaluated").unwrap();
    let identities = Arc::new(LiveIdentities {
        directory: Directory::load(&w.gw.store).await.unwrap(),
        tokens: TokenService::start(&w.gw.store, &config.jwt).await.unwrap(),
    });
    let evaluator = Evaluator::new(config, identities, Arc::new(FixedClock(pinpoint_store::now_ms())));

    let alice = format!("/profiles/{}", w.alice_id);
    let bob = format!("/profiles/{}/settings", w.bob_id);
    let paths = [
        "/orders",
        "/orders/1",
        "/orders/bulk/2",
        "/ORDERS/1",
        "/orders/../acme/x",
        "/orders/%2e%2e/acme",
        "/orders//x/./y",
        "/orders/a%2Fb",
        "/orders;v=1/x",
        "/orders/%7Ex",
        "/acme/report",
        alice.as_str(),
        bob.as_str(),
        "/internal/x",
        "/partners/x",
        "/limited",
        "/metered",
        "/public/x",
        "/nope",
        "/",
        "/orders/x?api_key=pp_0123456789abcdef_x",
    ];
    let methods = [
        "GET", "POST", "PUT", "DELETE", "OPTIONS", "HEAD", "PATCH", "get", "Post", "PROPFIND",
    ];
    let bearer = |key: &str| format!("Authorization: Bearer {key}\r\n");
    let credentials = [
        String::new(),
        bearer(&w.alice_key),
        bearer(&w.alice_read_only_key),
        bearer(&w.bob_key),
        bearer(&w.carol_key),
        bearer(&w.globex_key),
        bearer("pp_0123456789abcdef_notakeyatall0000000000000000000000"),
        bearer("garbage"),
        format!("X-API-Key: {}\r\n", w.bob_key),
        format!(
            "DD-API-KEY: {}\r\nDD-APPLICATION-KEY: {}\r\n",
            w.acme_org_key, w.alice_key
        ),
        format!("DD-APPLICATION-KEY: {}\r\n", w.alice_key),
        format!("DD-API-KEY: {}\r\n", w.globex_org_key),
    ];
    let extras = [
        "",
        "",
        "Origin: https://app.example.com\r\n",
        "Origin: https://evil.example\r\n",
        "Origin: https://app.example.com\r\nAccess-Control-Request-Method: POST\r\n",
        "X-Forwarded-For: 10.1.2.3\r\n",
        "X-Forwarded-For: 203.0.113.9\r\n",
        "X-Forwarded-For: 192.0.2.7\r\n",
        "X-HTTP-Method-Override: DELETE\r\n",
        "X-Original-URL: /acme/report\r\n",
        "Host: second.example\r\n",
    ];
    let hosts = ["localhost", "LOCALHOST", "127.0.0.1", "api.example.com"];

    let mut cases = Cases(0x9e37_79b9_7f4a_7c15);
    let mut sent = Vec::new();
    for _ in 0..3_000 {
        let (method, path) = (*cases.pick(&methods), *cases.pick(&paths));
        let (credential, extra, host) = (cases.pick(&credentials), *cases.pick(&extras), *cases.pick(&hosts));
        let head = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n{credential}{extra}Connection: close\r\n\r\n");
        let (status, id) = send(w.gw.proxy, &head).await;
        let request: http::Request<()> = {
            let mut builder = http::Request::builder().method(method).uri(path);
            for line in head.lines().skip(1).take_while(|l| !l.is_empty()) {
                let (name, value) = line.split_once(": ").unwrap();
                builder = builder.header(name, value);
            }
            builder.body(()).unwrap()
        };
        let evaluation = evaluator.evaluate(
            request.version(),
            request.method(),
            request.uri(),
            request.headers(),
            std::net::SocketAddr::from(([127, 0, 0, 1], 40_000)),
        );
        sent.push((head, status, id, evaluation));
    }

    let mut mismatches = Vec::new();
    let mut refused = 0;
    for (head, status, id, evaluation) in &sent {
        let id = id
            .as_deref()
            .unwrap_or_else(|| panic!("no request id ({status}) for\n{head}"));
        let live = w.gw.decision(id).await;
        refused += usize::from(live.reason.is_some());
        if live.reason != evaluation.reason {
            mismatches.push(format!(
                "{head}live {:?} ({status}), evaluated {:?}",
                live.reason, evaluation.reason
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} differ; first:\n{}",
        mismatches.len(),
        sent.len(),
        mismatches[0]
    );
    // The generated cases reach both outcomes in earnest.
    assert!(
        refused > 200 && refused < sent.len() - 200,
        "{refused} of {} refused",
        sent.len()
    );
}
