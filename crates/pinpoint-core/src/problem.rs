//! RFC 9457 problem details: the caller-facing body of every response Pinpoint generates
//! itself, with content negotiation (JSON, HTML or plain text carrying the same facts).

use serde::Serialize;

use crate::reason::Reason;

/// A caller-safe problem body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub type_url: String,
    pub title: &'static str,
    pub status: u16,
    pub detail: String,
    pub reason: &'static str,
    pub layer: &'static str,
    pub request_id: String,
    pub hint: &'static str,
}

/// The representation a client asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemFormat {
    Json,
    Html,
    Text,
    /// A gRPC request (`Content-Type: application/grpc...`): the facts go in `grpc-status`
    /// and `grpc-message` of a trailers-only response, beside `x-pinpoint-reason`.
    Grpc,
}

impl ProblemFormat {
    /// Picks the format from an `Accept` header. JSON unless the client accepts HTML or
    /// plain text but no JSON (nor `*/*`).
    pub fn negotiate(accept: Option<&str>) -> ProblemFormat {
        let Some(accept) = accept else {
            return ProblemFormat::Json;
        };
        let mut html = false;
        let mut text = false;
        for part in accept.split(',') {
            let mut pieces = part.split(';');
            let media = pieces.next().unwrap_or("").trim().to_ascii_lowercase();
            let refused = pieces.any(|p| {
                let p = p.trim();
                p.strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            if refused {
                continue;
            }
            match media.as_str() {
                "*/*" | "application/*" | "application/json" | "application/problem+json" => {
                    return ProblemFormat::Json
                }
                "text/html" | "application/xhtml+xml" => html = true,
                "text/plain" | "text/*" => text = true,
                _ => {}
            }
        }
        if html {
            ProblemFormat::Html
        } else if text {
            ProblemFormat::Text
        } else {
            ProblemFormat::Json
        }
    }

    /// The `Content-Type` for this format.
    pub fn content_type(self) -> &'static str {
        match self {
            ProblemFormat::Json => "application/problem+json",
            ProblemFormat::Html => "text/html; charset=utf-8",
            ProblemFormat::Text => "text/plain; charset=utf-8",
            ProblemFormat::Grpc => "application/grpc",
        }
    }

    /// Whether a request with this `Content-Type` is a gRPC call.
    pub fn is_grpc(content_type: Option<&str>) -> bool {
        content_type.is_some_and(|t| {
            let t = t.trim_start().as_bytes();
            t.len() >= 16
                && t[..16].eq_ignore_ascii_case(b"application/grpc")
                && matches!(t.get(16), None | Some(b'+' | b';' | b' '))
        })
    }
}

/// The gRPC status code (`grpc-status`) for a refusal's HTTP status: what each status
/// means, in gRPC's terms.
pub fn grpc_status(http_status: u16) -> u8 {
    match http_status {
        401 => 16,             // UNAUTHENTICATED
        403 => 7,              // PERMISSION_DENIED
        404 | 405 | 501 => 12, // UNIMPLEMENTED
        408 | 504 => 4,        // DEADLINE_EXCEEDED
        413 | 429 => 8,        // RESOURCE_EXHAUSTED
        502 | 503 => 14,       // UNAVAILABLE
        400..=499 => 3,        // INVALID_ARGUMENT
        _ => 13,               // INTERNAL
    }
}

/// `text` with every byte outside printable ASCII (and `%` itself) percent-encoded: safe
/// as a header value and readable back. It is how `grpc-message` is written (the gRPC
/// HTTP/2 protocol), and how Pinpoint writes other text into headers.
pub fn visible_ascii(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Problem {
    /// Builds the body for `reason`. `reasons_url` is where docs/reasons.md is published;
    /// the reason's anchor is appended.
    pub fn new(reason: Reason, detail: impl Into<String>, request_id: &str, reasons_url: &str) -> Self {
        let info = reason.info();
        Problem {
            type_url: format!("{reasons_url}#{}", reason.anchor()),
            title: info.title,
            status: info.status,
            detail: detail.into(),
            reason: info.code,
            layer: info.layer,
            request_id: request_id.to_owned(),
            hint: info.hint,
        }
    }

    /// Renders the body in the given format.
    pub fn render(&self, format: ProblemFormat) -> String {
        match format {
            ProblemFormat::Json => serde_json::to_string(self).unwrap_or_else(|_| String::from("{}")),
            ProblemFormat::Text => format!(
                "{status} {title}\n{detail}\nreason: {reason}\nrequest id: {rid}\nhint: {hint}\nmore: {ty}\n",
                status = self.status,
                title = self.title,
                detail = self.detail,
                reason = self.reason,
                rid = self.request_id,
                hint = self.hint,
                ty = self.type_url,
            ),
            // The facts travel in headers (see `grpc_status`); a gRPC body is framed.
            ProblemFormat::Grpc => String::new(),
            ProblemFormat::Html => format!(
                "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{status} {title}</title></head>\n<body>\n<h1>{status} {title}</h1>\n<p>{detail}</p>\n<dl>\n<dt>Reason</dt><dd><a href=\"{ty}\"><code>{reason}</code></a></dd>\n<dt>Request id</dt><dd><code>{rid}</code></dd>\n<dt>Hint</dt><dd>{hint}</dd>\n</dl>\n</body></html>\n",
                status = self.status,
                title = escape_html(self.title),
                detail = escape_html(&self.detail),
                reason = escape_html(self.reason),
                rid = escape_html(&self.request_id),
                hint = escape_html(self.hint),
                ty = escape_html(&self.type_url),
            ),
        }
    }
}

fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_prefers_json_and_honours_html_and_text() {
        use ProblemFormat::*;
        assert_eq!(ProblemFormat::negotiate(None), Json);
        assert_eq!(ProblemFormat::negotiate(Some("*/*")), Json);
        assert_eq!(ProblemFormat::negotiate(Some("application/json")), Json);
        assert_eq!(
            ProblemFormat::negotiate(Some("text/html,application/xhtml+xml;q=0.9,*/*;q=0.8")),
            Json
        );
        assert_eq!(ProblemFormat::negotiate(Some("text/html")), Html);
        assert_eq!(ProblemFormat::negotiate(Some("text/plain")), Text);
        assert_eq!(ProblemFormat::negotiate(Some("text/html, */*;q=0")), Html);
        assert_eq!(ProblemFormat::negotiate(Some("image/png")), Json);
    }

    #[test]
    fn html_escapes_detail() {
        let p = Problem::new(Reason::RouteNotFound, "<script>", "r1", "/_pinpoint/reasons");
        let html = p.render(ProblemFormat::Html);
        assert!(html.contains("&lt;script&gt;"));
        assert!(!html.contains("<script>"));
    }
}
