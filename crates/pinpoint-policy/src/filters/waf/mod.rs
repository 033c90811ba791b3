//! The WAF filter, on routes with `waf = true` (or `"report"`). It owns what every WAF
//! engine shares: anomaly scoring against `[waf] threshold`, exclusions, report mode (per
//! route and per rule family), the caller-facing detail (parts named, never their values)
//! and the operator's trace note (every contributing rule with its id, family, paranoia
//! level, score, part and a masked fragment).
//!
//! Engines find the matches ([`Hit`]s) behind one trait, [`WafEngine`]: the built-in
//! engine ([`builtin`]: libinjection plus Pinpoint's own rule families) by default, or the
//! OWASP Core Rule Set on libmodsecurity, which the gateway provides when built with the
//! `modsecurity` feature (`[waf] engine = "crs"`). Both name parts the same way:
//! `path`, `query:q`, `header:user-agent`, `cookie:session`, `form:comment`,
//! `file:upload`, `xml:/order/note`, `body:/items/0/note` (a JSON pointer).
//!
//! Codes: `waf.sqli`, `waf.xss`, `waf.traversal`, `waf.jndi`, `waf.rce`, `waf.nosql`,
//! `waf.xxe`, `waf.template`, `waf.protocol` (403, scored); `waf.body_unparsable`,
//! `waf.body_too_deep`, `waf.too_many_values` (400), `waf.body_too_large` (413: more to
//! inspect than `[waf] max_inspected_bytes`), `waf.content_type` (415) and
//! `waf.engine_unavailable` (503), refused at once.

pub mod builtin;
pub mod json;

use std::borrow::Cow;
use std::sync::Arc;

use pinpoint_core::config::{RouteWaf, WafConfig};
use pinpoint_core::{Denial, Outcome, Reason};

use crate::pipeline::{Check, Filter, RequestCtx};

/// One rule's match in one part of a request.
#[derive(Debug, Clone)]
pub struct Hit {
    /// The rule's stable id (`sqli-libinjection`; a CRS rule's number, `942100`).
    pub rule: Cow<'static, str>,
    /// The family's reason (`waf.sqli`).
    pub reason: Reason,
    /// 1 (few false positives) or higher (stricter).
    pub paranoia: u8,
    pub score: u32,
    /// Where it matched (`query:q`, `body:/a/0`).
    pub part: String,
    /// The matched value masked by [`masked`].
    pub fragment: String,
}

impl Hit {
    /// The family: the part of the reason code after `waf.`.
    pub fn family(&self) -> &'static str {
        let code = self.reason.code();
        code.strip_prefix("waf.").unwrap_or(code)
    }
}

/// What finds matches in a request. Engines only find; the filter scores, excludes and
/// decides, so every engine's matches are refused, reported and traced alike.
pub trait WafEngine: Send + Sync {
    /// The engine's name in traces (`builtin`, `crs`).
    fn name(&self) -> &'static str;
    /// Matches in the request head (path, query, headers, cookies). `body_follows`: the
    /// body phase will run too, so an engine that inspects everything at once may wait.
    fn head(&self, ctx: &RequestCtx<'_>, body_follows: bool) -> Result<Vec<Hit>, Denial>;
    /// Matches in the body (and, for an engine that waited, the head), or a refusal when
    /// the body cannot be inspected.
    fn body(&self, ctx: &RequestCtx<'_>, body: &[u8]) -> Result<Vec<Hit>, Denial>;
}

/// The engine of a WAF whose configured engine could not start: every request it should
/// inspect is refused, as one it could not decide on.
pub struct Unavailable;

impl WafEngine for Unavailable {
    fn name(&self) -> &'static str {
        "unavailable"
    }
    fn head(&self, _: &RequestCtx<'_>, _: bool) -> Result<Vec<Hit>, Denial> {
        Err(Denial::new(
            Reason::WafEngineUnavailable,
            "The request cannot be inspected right now.",
        ))
    }
    fn body(&self, ctx: &RequestCtx<'_>, _: &[u8]) -> Result<Vec<Hit>, Denial> {
        self.head(ctx, false)
    }
}

pub struct WafFilter {
    config: WafConfig,
    engine: Arc<dyn WafEngine>,
}

impl WafFilter {
    /// The filter with the built-in engine.
    pub fn new(config: &WafConfig) -> Self {
        Self::with_engine(config, Arc::new(builtin::BuiltinEngine::new(config)))
    }

    /// The filter with another engine (the CRS one).
    pub fn with_engine(config: &WafConfig, engine: Arc<dyn WafEngine>) -> Self {
        WafFilter {
            config: config.clone(),
            engine,
        }
    }

    /// The hits no exclusion covers on `route`, and the ids of the exclusions that applied.
    fn unexcluded(&self, route: Option<&str>, hits: Vec<Hit>) -> (Vec<Hit>, Vec<&str>) {
        let mut used = Vec::new();
        let kept = hits
            .into_iter()
            .filter(|h| {
                match self
                    .config
                    .exclusions
                    .iter()
                    .find(|e| e.covers(route, &h.rule, h.family(), &h.part))
                {
                    Some(exclusion) => {
                        if !used.contains(&exclusion.id.as_str()) {
                            used.push(exclusion.id.as_str());
                        }
                        false
                    }
                    None => true,
                }
            })
            .collect();
        (kept, used)
    }

    /// The verdict on a phase's hits: refused when what no exclusion covers scores the
    /// threshold; only reported (a would-deny) when it reaches the threshold only with the
    /// matches of families in report mode, or on a route in report mode.
    fn verdict(&self, ctx: &RequestCtx<'_>, hits: Vec<Hit>) -> Outcome {
        let route = ctx.route_id.as_deref();
        let route_reports = ctx.route.as_ref().is_some_and(|r| r.waf == RouteWaf::Report);
        let (hits, excluded_by) = self.unexcluded(route, hits);
        let excluded = match excluded_by.is_empty() {
            true => String::new(),
            false => format!("; {}{}", EXCLUDED_BY, excluded_by.join(", ")),
        };
        if hits.is_empty() {
            return match excluded.is_empty() {
                true => Outcome::allow(),
                false => Outcome::Allow {
                    rule_id: Some(format!("{EXCLUDED_BY}{}", excluded_by.join(", ")).into()),
                },
            };
        }
        let reported = |h: &Hit| route_reports || self.config.report_families.iter().any(|f| f == h.family());
        let score: u32 = hits.iter().map(|h| h.score).sum();
        let enforced_score: u32 = hits.iter().filter(|h| !reported(h)).map(|h| h.score).sum();
        let summary = hits
            .iter()
            .map(|h| {
                format!(
                    "{} ({}, pl{}, +{}{}) at {}: {}",
                    h.rule,
                    h.reason.code(),
                    h.paranoia,
                    h.score,
                    if reported(h) { ", report" } else { "" },
                    traced_part(&h.part),
                    h.fragment
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        let threshold = self.config.threshold;
        let engine = self.engine.name();
        if score < threshold {
            return Outcome::Allow {
                rule_id: Some(format!("{engine}: score {score} below {threshold}: {summary}{excluded}").into()),
            };
        }
        let enforced = enforced_score >= threshold;
        // The family named is that of the highest-scoring match that counts (the first of
        // equals).
        let lead = hits
            .iter()
            .filter(|h| !enforced || !reported(h))
            .fold(None::<&Hit>, |best, h| match best {
                Some(b) if b.score >= h.score => Some(b),
                _ => Some(h),
            })
            .unwrap_or(&hits[0]);
        let mut parts: Vec<String> = hits.iter().map(|h| shown_part(&h.part)).collect();
        parts.dedup();
        let named = parts
            .iter()
            .take(3)
            .map(|p| format!("`{p}`"))
            .collect::<Vec<_>>()
            .join(", ");
        let denial = Denial::new(lead.reason, format!("The content of {named} was refused."))
            .rule(lead.rule.to_string())
            .note(format!(
                "{engine}: score {score} (threshold {threshold}{}): {summary}{excluded}",
                match enforced {
                    true => String::new(),
                    false => format!(", {enforced_score} from enforced rules: report only"),
                }
            ));
        Outcome::Deny(match enforced {
            true => denial,
            false => denial.report_only(),
        })
    }
}

/// How a trace names the exclusions that applied (`pinpoint config check` reads it back).
pub const EXCLUDED_BY: &str = "excluded by ";

/// A part as the caller is told it: names the caller chose are shown only when they are
/// plain (letters, digits, `_-.:/@$[]`, at most 64 bytes), else as a hash, so a refusal never
/// echoes attack text back.
pub fn shown_part(part: &str) -> String {
    let plain = part.len() <= 64
        && part
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.:/@$[]".contains(&b));
    match (plain, part.split_once(':')) {
        (true, _) => part.to_owned(),
        (false, Some((kind, name))) => format!("{kind}:#{:08x}", fingerprint(name)),
        (false, None) => String::from("#"),
    }
}

/// A part as the trace names it: whole, but for a name that holds anything
/// credential-shaped (a JSON object keyed by API key, say), whose segments that do are
/// replaced by [`credential_text::WITHHELD`] (all of the name, if the credential spans
/// segments). `pinpoint waf exclude` turns such a part into a prefix pattern.
pub fn traced_part(part: &str) -> std::borrow::Cow<'_, str> {
    use crate::credential_text::{carries_pinpoint_credential, ANY_CREDENTIAL, WITHHELD};
    let carries = |text: &str| carries_pinpoint_credential(text.as_bytes(), ANY_CREDENTIAL);
    let Some((kind, name)) = part.split_once(':').filter(|(_, name)| carries(name)) else {
        return std::borrow::Cow::Borrowed(part);
    };
    let segments: Vec<&str> = name
        .split('/')
        .map(|segment| if carries(segment) { WITHHELD } else { segment })
        .collect();
    let name = segments.join("/");
    std::borrow::Cow::Owned(match carries(&name) {
        true => format!("{kind}:{WITHHELD}"),
        false => format!("{kind}:{name}"),
    })
}

/// A value as the trace shows it: its first characters and a hash, never the whole.
pub fn masked(value: &str) -> String {
    let prefix: String = value.chars().take(8).collect();
    format!("{prefix:?}… #{:08x}", fingerprint(value))
}

/// A short hash (FNV-1a) that names a value without showing it.
fn fingerprint(value: &str) -> u32 {
    value
        .bytes()
        .fold(0x811c_9dc5u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193))
}

/// The (rule id, part) pairs a WAF trace note lists, as `pinpoint waf exclude` reads them
/// back (each entry's form is `<rule> (waf.<family>, pl<n>, +<score>[, report]) at
/// <part>: <fragment>`; rule ids hold no spaces).
pub fn hits_in_note(note: &str) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for (at, _) in note.match_indices(" (waf.") {
        let rule = note[..at].rsplit([' ', ':']).next().unwrap_or("");
        let rest = &note[at..];
        let Some(part_at) = rest.find(") at ") else { continue };
        let part = &rest[part_at + 5..];
        // The fragment is quoted (`masked`): the part ends at the first `: "`.
        let part = part.split(": \"").next().unwrap_or(part);
        if !rule.is_empty() {
            found.push((rule.to_owned(), part.to_owned()));
        }
    }
    found
}

/// The exclusion ids a WAF trace entry (its rule id or note) says applied.
pub fn exclusions_in_trace(text: &str) -> Vec<&str> {
    text.match_indices(EXCLUDED_BY)
        .flat_map(|(at, _)| {
            text[at + EXCLUDED_BY.len()..]
                .split(';')
                .next()
                .unwrap_or("")
                .split(", ")
                .map(str::trim)
        })
        .filter(|id| !id.is_empty())
        .collect()
}

/// A body sent with a `Content-Encoding` (gzip, deflate, ...): the engines read bytes as
/// sent, so what an upstream that decodes it reads would go uninspected (and a small
/// compressed body past the size limit). Refused, as a body that cannot be inspected.
fn encoded_body(ctx: &RequestCtx<'_>) -> Option<Denial> {
    let encoding = ctx.headers.get(http::header::CONTENT_ENCODING)?;
    let encoding = String::from_utf8_lossy(encoding.as_bytes());
    if encoding.trim().eq_ignore_ascii_case("identity") {
        return None;
    }
    Some(
        Denial::new(
            Reason::WafBodyUnparsable,
            "A body with a Content-Encoding cannot be inspected on this route; send it unencoded.",
        )
        .note(format!("Content-Encoding {}", shown_part(encoding.trim()))),
    )
}

/// The refusal of more text to inspect than `[waf] max_inspected_bytes` (`limit`):
/// `length` bytes of `what` (the body, a multipart body's fields). The rules cost up to
/// about half a second of CPU per MiB of text built to be slow, so this bounds what one
/// request can cost.
pub fn too_large_to_inspect(limit: u64, length: u64, what: &str) -> Denial {
    Denial::new(
        Reason::WafBodyTooLarge,
        format!("A body with more than {limit} bytes to inspect is not accepted on this route."),
    )
    .note(format!("{length} bytes in {what}; [waf] max_inspected_bytes = {limit}"))
}

/// The declared body type without parameters, lower case (`application/json`); empty when
/// none is declared. The filter's type check and the engines read the same one. Borrowed
/// from the header when it is already lower case, as it almost always is (allocating and
/// lower-casing it on every body cost 700 instructions, twice a request).
pub fn media_type(headers: &http::HeaderMap) -> Cow<'_, str> {
    let Some(value) = headers.get(http::header::CONTENT_TYPE) else {
        return Cow::Borrowed("");
    };
    let bytes = value.as_bytes();
    let essence = bytes.split(|&b| b == b';').next().unwrap_or_default().trim_ascii();
    match std::str::from_utf8(essence) {
        Ok(text) if !text.bytes().any(|b| b.is_ascii_uppercase()) => Cow::Borrowed(text),
        _ => Cow::Owned(String::from_utf8_lossy(essence).to_ascii_lowercase()),
    }
}

/// Whether a request to this route declares a body (`Some`), and its declared length when
/// `Content-Length` gives one (read once for both).
fn declared_body(ctx: &RequestCtx<'_>) -> Option<Option<u64>> {
    let length = ctx.headers.get(http::header::CONTENT_LENGTH);
    let has_body =
        ctx.headers.contains_key(http::header::TRANSFER_ENCODING) || length.is_some_and(|v| v.as_bytes() != b"0");
    has_body.then(|| length.and_then(|v| v.to_str().ok()?.trim().parse().ok()))
}

impl Filter for WafFilter {
    fn name(&self) -> &'static str {
        "waf"
    }

    fn check<'a>(&'a self, ctx: &'a mut RequestCtx<'_>) -> Check<'a> {
        if !ctx.route.as_ref().is_some_and(|r| r.waf != RouteWaf::Off) {
            return Check::Ready(Outcome::NotApplicable);
        }
        let body = declared_body(ctx);
        if let Some(length) = body {
            let refusal = encoded_body(ctx)
                .or_else(|| self.content_type_refused(ctx))
                .or_else(|| length.and_then(|length| self.too_large_to_inspect(ctx, length)));
            if let Some(refusal) = refusal {
                return Check::Ready(Outcome::Deny(refusal));
            }
        }
        Check::Ready(match self.engine.head(ctx, body.is_some()) {
            Ok(hits) => self.verdict(ctx, hits),
            Err(denial) => Outcome::Deny(denial),
        })
    }

    fn needs_body(&self, ctx: &RequestCtx<'_>) -> Option<u64> {
        let route = ctx.route.as_ref().filter(|r| r.waf != RouteWaf::Off)?;
        declared_body(ctx).map(|_| route.max_body_bytes)
    }

    fn check_body(&self, ctx: &mut RequestCtx<'_>, body: &[u8]) -> Outcome {
        // A body sent without a declared length is measured once read.
        if let Some(refusal) = self.too_large_to_inspect(ctx, body.len() as u64) {
            return Outcome::Deny(refusal);
        }
        match self.engine.body(ctx, body) {
            Ok(hits) => self.verdict(ctx, hits),
            Err(denial) => Outcome::Deny(denial),
        }
    }
}

impl WafFilter {
    /// A body of `length` bytes larger than `[waf] max_inspected_bytes`, refused rather
    /// than inspected; a multipart body is measured by its fields instead, as the engine
    /// reads them (its file contents are not inspected).
    fn too_large_to_inspect(&self, ctx: &RequestCtx<'_>, length: u64) -> Option<Denial> {
        let limit = self.config.max_inspected_bytes;
        if length <= limit || media_type(ctx.headers).starts_with("multipart/") {
            return None;
        }
        Some(too_large_to_inspect(limit, length, "the body"))
    }

    /// A request with a body (the caller checked) whose declared type is not in `[waf]
    /// content_types` (compared without parameters, ignoring case; `+json` and `+xml`
    /// suffixes count as their base type). A body with no declared type is inspected whole
    /// instead.
    fn content_type_refused(&self, ctx: &RequestCtx<'_>) -> Option<Denial> {
        if self.config.content_types.is_empty() {
            return None;
        }
        let essence = media_type(ctx.headers);
        // `+json` and `+xml` count as their base type: `kind/json`, `kind/xml`.
        let (kind, suffix) = match essence.split_once('/') {
            Some((kind, sub)) if sub.ends_with("+json") => (kind, "json"),
            Some((kind, sub)) if sub.ends_with("+xml") => (kind, "xml"),
            _ => ("", ""),
        };
        let is_base = |t: &str| {
            !kind.is_empty()
                && t.len() == kind.len() + 1 + suffix.len()
                && t.get(..kind.len()).is_some_and(|k| k.eq_ignore_ascii_case(kind))
                && t.as_bytes().get(kind.len()) == Some(&b'/')
                && t.get(kind.len() + 1..)
                    .is_some_and(|sub| sub.eq_ignore_ascii_case(suffix))
        };
        let allowed = self
            .config
            .content_types
            .iter()
            .any(|t| t.eq_ignore_ascii_case(&essence) || is_base(t));
        // No declared type: the body is inspected whole, as a server might read it.
        if allowed || essence.is_empty() {
            return None;
        }
        let shown = match shown_part(&essence) == essence {
            true => format!("Content-Type `{essence}`"),
            false => String::from("this Content-Type"),
        };
        Some(
            Denial::new(
                Reason::WafContentType,
                format!("A body with {shown} is not accepted on this route."),
            )
            .note(format!("allowed: {}", self.config.content_types.join(", "))),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_part_named_by_a_credential_is_traced_without_it() {
        let key = "pp_0123456789abcdef_secretsecretsecretsecretsecretsecretsecr";
        assert_eq!(traced_part("body:/items/0/note"), "body:/items/0/note");
        let withheld = crate::credential_text::WITHHELD;
        assert_eq!(
            traced_part(&format!("body:/{key}/note")),
            format!("body:/{withheld}/note")
        );
        assert_eq!(traced_part(&format!("cookie:{key}")), format!("cookie:{withheld}"));
        let hex = pinpoint_core::hex::lower(key.as_bytes());
        assert_eq!(traced_part(&format!("header:x-{hex}")), format!("header:{withheld}"));
        // Read back for `waf exclude` as the trace wrote it.
        let note = format!(
            "builtin: score 5 (threshold 5): xss-tag (waf.xss, pl1, +5) at body:/{withheld}: \"<scr\"… #0a0b0c0d"
        );
        assert_eq!(
            hits_in_note(&note),
            [("xss-tag".to_owned(), format!("body:/{withheld}"))]
        );
    }

    #[test]
    fn notes_name_their_rules_and_parts_for_exclusions() {
        let note = "builtin: score 10 (threshold 5): sqli-libinjection (waf.sqli, pl1, +5) at body:/a/0: \"1' OR 1\"… #0a0b0c0d; 942100 (waf.sqli, pl1, +5, report) at query:q: \"<b>\"… #01020304; excluded by cms, wiki";
        assert_eq!(
            hits_in_note(note),
            [
                ("sqli-libinjection".to_owned(), "body:/a/0".to_owned()),
                ("942100".to_owned(), "query:q".to_owned())
            ]
        );
        assert_eq!(exclusions_in_trace(note), ["cms", "wiki"]);
        assert_eq!(exclusions_in_trace("excluded by cms"), ["cms"]);
    }

    #[test]
    fn parts_are_shown_only_when_plain() {
        assert_eq!(shown_part("query:q"), "query:q");
        assert!(shown_part("query:<script>").starts_with("query:#"));
        assert!(!masked("1' OR '1'='1 and more").contains("more"));
    }
}
