//! W3C Trace Context (`traceparent`, `tracestate`): every proxied request joins the
//! caller's trace when it sent a valid `traceparent`, or starts one. The upstream receives
//! the same trace id with Pinpoint's own span as parent, and `tracestate` unchanged (dropped
//! with an invalid or absent `traceparent`, as the spec says). The trace id goes into the
//! decision and the access log, so a trace and a refusal find each other.

use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;

static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// Most `tracestate` bytes passed on (the spec allows 32 members of up to 256 bytes each;
/// longer values are dropped rather than cut).
const MAX_TRACESTATE: usize = 8192;

/// A request's place in a distributed trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// 32 lower-case hex digits.
    pub trace_id: String,
    /// Pinpoint's span for this request: 16 lower-case hex digits.
    pub span_id: String,
    /// The caller's span, when it sent one.
    pub parent_id: Option<String>,
    /// Trace flags (bit 0: sampled).
    pub flags: u8,
    /// The caller's `tracestate`, kept only with a valid `traceparent`.
    pub state: Option<HeaderValue>,
}

impl TraceContext {
    /// Joins the trace the request's headers name, or starts a new one.
    pub fn of(headers: &HeaderMap) -> TraceContext {
        let span_id = pinpoint_core::hex::lower(&nonzero_u64().to_be_bytes());
        let mut parents = headers.get_all(&TRACEPARENT).iter();
        let parent = match (parents.next(), parents.next()) {
            (Some(one), None) => parse_traceparent(one.as_bytes()),
            // None, or several: no trace to join.
            _ => None,
        };
        match parent {
            Some((trace_id, parent_id, flags)) => {
                let state = tracestate(headers);
                TraceContext {
                    trace_id,
                    span_id,
                    parent_id: Some(parent_id),
                    flags,
                    state,
                }
            }
            None => TraceContext {
                trace_id: pinpoint_core::hex::lower(&nonzero_u128().to_be_bytes()),
                span_id,
                parent_id: None,
                // Pinpoint records every request's decision: sampled.
                flags: 1,
                state: None,
            },
        }
    }

    /// The `traceparent` the upstream receives: this trace, Pinpoint's span as parent.
    /// Written into one buffer of its exact size that the header value takes over (built
    /// as a `String` and copied into the value, with the flags' digits allocated apart, it
    /// cost about 300 instructions a request more: bench/instructions.sh).
    pub fn traceparent(&self) -> HeaderValue {
        let mut text = Vec::with_capacity(55);
        text.extend_from_slice(b"00-");
        text.extend_from_slice(self.trace_id.as_bytes());
        text.push(b'-');
        text.extend_from_slice(self.span_id.as_bytes());
        text.push(b'-');
        pinpoint_core::hex::push_lower(&mut text, &[self.flags]);
        HeaderValue::from_maybe_shared(bytes::Bytes::from(text)).unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    /// Sets `traceparent` (and the caller's `tracestate`, if any) on an upstream request.
    pub fn propagate(&self, headers: &mut HeaderMap) {
        headers.insert(TRACEPARENT.clone(), self.traceparent());
        headers.remove(&TRACESTATE);
        if let Some(state) = &self.state {
            headers.insert(TRACESTATE.clone(), state.clone());
        }
    }
}

/// `version-traceid-parentid-flags` (W3C Trace Context §3.2): version `00` exactly as
/// specified; a later version is read by its first four fields. All-zero ids and version
/// `ff` are invalid.
fn parse_traceparent(value: &[u8]) -> Option<(String, String, u8)> {
    let text = std::str::from_utf8(value).ok()?.trim_matches([' ', '\t']);
    let mut fields = text.split('-');
    let (version, trace_id, parent_id, flags) = (fields.next()?, fields.next()?, fields.next()?, fields.next()?);
    let is_lower_hex =
        |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !is_lower_hex(version, 2) || version == "ff" || (version == "00" && fields.next().is_some()) {
        return None;
    }
    if !is_lower_hex(trace_id, 32) || !is_lower_hex(parent_id, 16) || !is_lower_hex(flags, 2) {
        return None;
    }
    if trace_id.bytes().all(|b| b == b'0') || parent_id.bytes().all(|b| b == b'0') {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some((trace_id.to_owned(), parent_id.to_owned(), flags))
}

/// The caller's `tracestate`, its lines joined, if it is printable and of sane size.
fn tracestate(headers: &HeaderMap) -> Option<HeaderValue> {
    let lines: Vec<&str> = headers
        .get_all(&TRACESTATE)
        .iter()
        .map(|v| v.to_str().ok().map(str::trim))
        .collect::<Option<_>>()?;
    let joined = lines
        .iter()
        .filter(|l| !l.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join(",");
    if joined.is_empty() || joined.len() > MAX_TRACESTATE {
        return None;
    }
    HeaderValue::from_str(&joined).ok()
}

fn nonzero_u64() -> u64 {
    rand::random::<u64>().max(1)
}

fn nonzero_u128() -> u128 {
    rand::random::<u128>().max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(n, v)| {
                (
                    HeaderName::from_bytes(n.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn a_valid_traceparent_is_joined_with_its_state() {
        let h = headers(&[
            ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            ("tracestate", "vendor=a"),
            ("tracestate", "other=b"),
        ]);
        let t = TraceContext::of(&h);
        assert_eq!(t.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.parent_id.as_deref(), Some("00f067aa0ba902b7"));
        assert_ne!(t.span_id, "00f067aa0ba902b7");
        let mut out = HeaderMap::new();
        t.propagate(&mut out);
        let sent = out["traceparent"].to_str().unwrap();
        assert!(sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"), "{sent}");
        assert!(sent.ends_with("-01"));
        assert_eq!(out["tracestate"], "vendor=a,other=b");
    }

    #[test]
    fn invalid_traceparents_start_a_new_trace_and_drop_the_state() {
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "garbage",
        ] {
            let t = TraceContext::of(&headers(&[("traceparent", bad), ("tracestate", "vendor=a")]));
            assert_ne!(t.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736", "{bad}");
            assert_eq!((t.parent_id.as_deref(), t.state.as_ref()), (None, None), "{bad}");
            assert_eq!(t.trace_id.len(), 32);
        }
        // A later version is read by its first four fields.
        let t = TraceContext::of(&headers(&[(
            "traceparent",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-more",
        )]));
        assert_eq!(t.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        // Two traceparent headers: no trace to join.
        let t = TraceContext::of(&headers(&[
            ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4737-00f067aa0ba902b7-01"),
        ]));
        assert_eq!(t.parent_id, None);
    }
}
