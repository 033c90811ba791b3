//! The floor under Pinpoint's proxy (issue #18): the least a hyper HTTP/1 reverse proxy
//! can do per request in Pinpoint's runtime layout (one current-thread runtime, the
//! client connection's upstream connection its own), with none of Pinpoint's work: no
//! canonical request, routes, filters, headers, decision record or log. `bench/floor.sh`
//! serves the benchmark's GET through it, beside nginx and Pinpoint's bare route, to
//! show how much of the gap to nginx is hyper and tokio rather than Pinpoint.
//!
//! `cargo run --release -p pinpoint-gateway --example hyper_floor -- LISTEN UPSTREAM [auto]`
//! (`auto`: hyper-util's HTTP/1-or-2 server, as Pinpoint serves; otherwise hyper's
//! HTTP/1 server).

use std::net::SocketAddr;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        eprintln!("usage: hyper_floor LISTEN UPSTREAM [auto]");
        std::process::exit(2);
    };
    let auto = args.next().as_deref() == Some("auto");
    let (listen, upstream): (SocketAddr, SocketAddr) = match (listen.parse(), upstream.parse()) {
        (Ok(l), Ok(u)) => (l, u),
        _ => {
            eprintln!("LISTEN and UPSTREAM are socket addresses (127.0.0.1:8080)");
            std::process::exit(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen).await.expect("the listen address");
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                // This client connection's own upstream connection.
                let Ok(up) = tokio::net::TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = up.set_nodelay(true);
                let Ok((sender, connection)) = hyper::client::conn::http1::handshake(TokioIo::new(up)).await else {
                    return;
                };
                tokio::spawn(connection);
                let sender = std::sync::Arc::new(tokio::sync::Mutex::new(sender));
                let service = service_fn(move |request: Request<Incoming>| {
                    let sender = sender.clone();
                    async move {
                        let (parts, body) = request.into_parts();
                        let mut forwarded = Request::new(body);
                        *forwarded.method_mut() = parts.method;
                        *forwarded.uri_mut() = parts.uri;
                        *forwarded.headers_mut() = parts.headers;
                        let response: Result<Response<Incoming>, hyper::Error> =
                            sender.lock().await.send_request(forwarded).await;
                        response
                    }
                });
                let io = TokioIo::new(stream);
                if auto {
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(io, service)
                        .await;
                } else {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                }
            });
        }
    });
}
