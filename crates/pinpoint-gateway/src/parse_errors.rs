//! Refusals of request heads the HTTP/1 parser cannot read. hyper answers those itself,
//! before any service sees a request: a bare `400` or `431` with no body, no reason and no
//! request id. This module owns the connection wrapper ([`ProblemStream`]) that recognises
//! such an answer on its way out and writes in its place what every other refusal has: a
//! problem body with a catalogue reason (`request.malformed`, `request.target_too_long`,
//! `request.headers_too_large`),
//! a request id, and a decision recorded under it ([`Refusals`]).
//!
//! hyper's answer is recognisable exactly: a `4xx` head with `connection: close` and
//! `content-length: 0` and no `x-request-id`, which every response Pinpoint's services
//! produce carries. Only writes before a connection's first service response are looked
//! at: after it, writes carry response bodies (the upstream's bytes, which could imitate
//! that head), so a request the parser refuses later on a kept-alive connection keeps
//! hyper's bare answer.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Builds the whole response (head and problem body) that replaces the parser's bare one,
/// recording its decision: `(peer, status)` to bytes, or `None` to keep the parser's.
pub type Refusals = Arc<dyn Fn(SocketAddr, u16) -> Option<Vec<u8>> + Send + Sync>;

/// A client connection whose parser-made refusals are rewritten (see the module docs).
pub struct ProblemStream<S> {
    inner: S,
    peer: SocketAddr,
    /// `None` once nothing more is to be inspected (rewritten once, or switched protocols).
    refusals: Option<Refusals>,
    /// Replacement bytes not yet written to `inner`.
    pending: Vec<u8>,
}

impl<S> ProblemStream<S> {
    pub fn new(inner: S, peer: SocketAddr, refusals: Option<Refusals>) -> Self {
        ProblemStream {
            inner,
            peer,
            refusals,
            pending: Vec::new(),
        }
    }

    /// Whether `bytes`, one write of the connection before any service response, is the
    /// parser's bare refusal (replaced, and `true` returned). The first head that is not
    /// (a service's response; only an interim `100 Continue` may come before it) ends
    /// inspection: after it, writes carry response bodies, which are the upstream's bytes
    /// and may look like anything, so they are never read. A request the parser refuses
    /// later on a kept-alive connection gets hyper's bare answer.
    fn replace_bare_refusal(&mut self, bytes: &[u8]) -> bool {
        let Some(refusals) = &self.refusals else {
            return false;
        };
        let Some(status) = bare_refusal_status(bytes) else {
            let interim =
                bytes.starts_with(b"HTTP/1.") && bytes.get(9) == Some(&b'1') && bytes.get(9..12) != Some(b"101");
            if !interim {
                self.refusals = None;
            }
            return false;
        };
        match refusals(self.peer, status) {
            Some(response) => {
                self.pending = response;
                self.refusals = None;
                true
            }
            None => false,
        }
    }
}

/// The status of a parser-made refusal head: the whole write is one head (nothing after
/// its blank line), `4xx`, closing, empty, and without the request id every service
/// response has.
fn bare_refusal_status(bytes: &[u8]) -> Option<u16> {
    // Cheapest test first: every response a service answers with passes through here, and
    // nearly all are not `4xx`.
    if bytes.get(9) != Some(&b'4') || bytes.get(8) != Some(&b' ') || !bytes.ends_with(b"\r\n\r\n") {
        return None;
    }
    let status: u16 = std::str::from_utf8(bytes.get(9..12)?).ok()?.parse().ok()?;
    // hyper writes header names in lower case.
    let has = |line: &[u8]| bytes.windows(line.len()).any(|w| w == line);
    // One head alone: its first blank line is its end.
    let one_head = bytes.windows(4).position(|w| w == b"\r\n\r\n") == Some(bytes.len() - 4);
    (one_head && has(b"\r\nconnection: close\r\n") && has(b"\r\ncontent-length: 0\r\n") && !has(b"\r\nx-request-id:"))
        .then_some(status)
}

impl<S: AsyncWrite + Unpin> ProblemStream<S> {
    /// Writes what is left of a replacement.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.pending.is_empty() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.pending.drain(..n);
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ProblemStream<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ProblemStream<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_pending(cx))?;
        if this.replace_bare_refusal(buf) {
            // The parser's bytes count as written: the replacement goes out in their place.
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_pending(cx))?;
        if let Some(first) = bufs.iter().find(|b| !b.is_empty()) {
            if this.replace_bare_refusal(first) {
                return Poll::Ready(Ok(first.len()));
            }
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The [`Refusals`] of a listener whose decisions name the route `route`.
pub fn refusals_for(shared: std::sync::Arc<crate::runtime::Shared>, route: &str) -> Refusals {
    let route: Arc<str> = Arc::from(route);
    Arc::new(move |peer, status| refusal(&shared, &route, peer, status))
}

/// The replacement for a parser-made refusal with `status`, as the listener named `route`
/// answers it: the problem body, its decision recorded (no method or path: the parser read
/// none), and the response's bytes. `None` for a status no catalogue reason stands for.
pub fn refusal(shared: &crate::runtime::Shared, route: &Arc<str>, peer: SocketAddr, status: u16) -> Option<Vec<u8>> {
    use pinpoint_core::{LayerTrace, Mark, Mode, Reason};
    let (reason, detail) = match status {
        400 => (Reason::RequestMalformed, "The request head is not well-formed HTTP."),
        414 => (
            Reason::RequestTargetTooLong,
            "The request target (path and query) is far longer than this gateway accepts.",
        ),
        431 => (
            Reason::RequestHeadersTooLarge,
            "The request head (request line and headers) is far larger than this gateway accepts.",
        ),
        _ => return None,
    };
    let runtime = shared.runtime.load();
    let request_id = crate::respond::new_request_id();
    let format = pinpoint_core::problem::ProblemFormat::Json;
    let body = pinpoint_core::problem::Problem::new(
        reason,
        detail.to_owned(),
        &request_id,
        &runtime.config.server.reasons_url,
    )
    .render(format);
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\ncontent-type: {}\r\ncache-control: no-store\r\nx-pinpoint-reason: {}\r\n\
         x-request-id: {request_id}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
        http::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or(""),
        format.content_type(),
        reason.code(),
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_ref());
    crate::telemetry::count_denial(reason, route, Mode::Enforce);
    let decision = pinpoint_core::Decision {
        request_id,
        client_request_id: None,
        at_ms: pinpoint_store::now_ms(),
        trace_id: None,
        client_cert: None,
        method: String::from("-"),
        path: String::from(UNREAD_PATH),
        raw_path: None,
        host: None,
        client_addr: pinpoint_core::addr::socket(peer),
        route: None,
        principal: None,
        caller: None,
        status,
        reason: Some(reason),
        upstream_target: None,
        config_revision: runtime.config.revision.clone(),
        duration_micros: 0,
        trace: vec![LayerTrace {
            layer: reason.layer().into(),
            mark: Mark::Deny,
            mode: Mode::Enforce,
            reason: Some(reason),
            rule_id: None,
            detail: Some(detail.to_owned()),
            note: Some(String::from("refused by the HTTP/1 parser before any layer ran")),
            platform_note: None,
            micros: 0,
        }],
    };
    crate::telemetry::finish_request(
        shared.decisions.as_ref(),
        route,
        decision,
        pinpoint_core::config::SampleRate::ALL,
        None,
    );
    Some(out)
}

/// The path a decision records for a request whose head the parser could not read.
pub const UNREAD_PATH: &str = "/(unread: the request head was not well-formed)";

#[cfg(test)]
mod tests {
    use super::bare_refusal_status;

    #[test]
    fn only_the_parsers_bare_refusal_is_recognised() {
        let bare = b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\ndate: Sun, 06 Dec 2026 17:11:34 GMT\r\n\r\n";
        assert_eq!(bare_refusal_status(bare), Some(400));
        let too_large =
            b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(bare_refusal_status(too_large), Some(431));
        // A service's response has a request id; a head with a body after it is not one.
        let ours = b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\nx-request-id: 1\r\n\r\n";
        assert_eq!(bare_refusal_status(ours), None);
        let with_body = b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\nx";
        assert_eq!(bare_refusal_status(with_body), None);
        let kept_open = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(bare_refusal_status(kept_open), None);
        let server_error = b"HTTP/1.1 500 Internal Server Error\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(bare_refusal_status(server_error), None);
        assert_eq!(bare_refusal_status(b"HTTP/1.1 4"), None);
    }
}
