//! `[waf]`: the web application firewall: its engine (built-in, or the OWASP Core Rule Set
//! on libmodsecurity), its mode (and families in report mode), the paranoia level (1 =
//! few false positives, 2 = stricter), the anomaly score at which a request is refused, the
//! headers it inspects besides the path, query and cookies, the body types it accepts and
//! its bounds on bodies. Which routes it guards is each route's `waf` ([`RouteWaf`]).

use serde::{Deserialize, Serialize};
use toml_edit::Item;

use super::diagnostics::{place, Diagnostics};
use crate::verdict::Mode;

/// `[waf]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WafConfig {
    /// What finds matches: `builtin`, or `crs` (the OWASP Core Rule Set on libmodsecurity;
    /// needs a build with the `modsecurity` feature).
    pub engine: WafEngineKind,
    pub mode: Mode,
    /// Rule families whose matches are only reported (traced as would-deny, never
    /// refused), to watch a family before enforcing it: `sqli`, `xss`, `traversal`,
    /// `jndi`, `rce`, `nosql`, `xxe`, `template`, `protocol`.
    pub report_families: Vec<String>,
    /// Rules up to this level run: 1 (few false positives) or 2 (stricter).
    pub paranoia: u8,
    /// A request whose matches score this much is refused (each rule scores 5).
    pub threshold: u32,
    /// Headers inspected (lower-case names) besides the path, the query and cookies. `*`
    /// (the default) stands for every header but those with a fixed structure, which
    /// [`STRUCTURED_HEADERS`] lists (credentials, content negotiation, caching, framing,
    /// tracing). JNDI lookups are looked for in every header whatever this says.
    pub headers: Vec<String>,
    /// Body types accepted (without parameters; `+json`/`+xml` types count as
    /// `application/json`/`application/xml`): another declared type is refused
    /// (`waf.content_type`). Empty: any type.
    pub content_types: Vec<String>,
    /// The CRS engine's setup file (`crs-setup.conf`).
    pub crs_setup: String,
    /// The CRS engine's rules directory (its `REQUEST-*.conf` files are loaded).
    pub crs_rules: String,
    /// JSON bodies nested deeper are refused (`waf.body_too_deep`).
    pub max_json_depth: usize,
    /// Bodies with more values are refused (`waf.too_many_values`).
    pub max_values: usize,
    /// Bodies with more to inspect than this are refused (`waf.body_too_large`, 413):
    /// the whole body, or a multipart body's fields (its file contents are not inspected).
    /// The rules cost up to about half a second of CPU per MiB of text built to be slow
    /// (runs of operators), so this bounds what one request can cost.
    pub max_inspected_bytes: u64,
    /// `[[waf.exclusions]]`: matches these rules may make in these parts are ignored.
    pub exclusions: Vec<WafExclusion>,
}

/// `[[waf.exclusions]]`: rules (by id or family) that do not count in some parts of some
/// routes' requests, such as the HTML field of a CMS. `pinpoint waf exclude <request-id>`
/// prints the narrowest one that lets a refused request through.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WafExclusion {
    pub id: String,
    /// Route ids; every route when absent.
    pub routes: Option<Vec<String>>,
    /// Rule ids (`sqli-libinjection`) or families (`sqli`); every rule when absent.
    pub rules: Option<Vec<String>>,
    /// Parts (`body:/article/html`, `query:q`); a trailing `*` matches any ending, and a
    /// trailing `\*` is a literal `*` (a part whose name ends in one).
    pub parts: Vec<String>,
}

impl WafExclusion {
    /// Whether this exclusion covers a match of `rule` (of `family`) in `part` on `route`.
    pub fn covers(&self, route: Option<&str>, rule: &str, family: &str, part: &str) -> bool {
        self.routes
            .as_ref()
            .is_none_or(|routes| route.is_some_and(|r| routes.iter().any(|x| x == r)))
            && self
                .rules
                .as_ref()
                .is_none_or(|rules| rules.iter().any(|x| x == rule || x == family))
            && self.parts.iter().any(|p| match p.strip_suffix('*') {
                Some(escaped) if escaped.ends_with('\\') => part.strip_suffix('*') == escaped.strip_suffix('\\'),
                Some(prefix) => part.starts_with(prefix),
                None => p == part,
            })
    }
}

/// The headers `headers = ["*"]` leaves out: their values have a fixed structure that the
/// HTTP stack or Pinpoint itself reads (a stray quote in an `Accept` is no injection), or
/// they carry credentials and tokens that look like noise.
pub const STRUCTURED_HEADERS: [&str; 37] = [
    "accept",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "authorization",
    "cache-control",
    "connection",
    "content-encoding",
    "content-length",
    "content-type",
    "cookie",
    "date",
    "dnt",
    "forwarded",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "keep-alive",
    "origin",
    "pragma",
    "priority",
    "proxy-authorization",
    "range",
    "te",
    "traceparent",
    "tracestate",
    "transfer-encoding",
    "upgrade",
    "upgrade-insecure-requests",
    "x-api-key",
    "x-csrf-token",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-request-id",
];

/// The rule families, as `report_families` and reason codes (`waf.<family>`) name them.
pub const WAF_FAMILIES: [&str; 9] = [
    "sqli",
    "xss",
    "traversal",
    "jndi",
    "rce",
    "nosql",
    "xxe",
    "template",
    "protocol",
];

/// `[waf] engine`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WafEngineKind {
    /// libinjection and Pinpoint's own rule families.
    #[default]
    Builtin,
    /// The OWASP Core Rule Set on libmodsecurity.
    Crs,
}

/// A route's `waf`: `false` (the default), `true`, or `"report"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RouteWaf {
    #[default]
    Off,
    On,
    /// Inspected, and what would be refused is traced as would-deny.
    Report,
}

impl<'de> Deserialize<'de> for RouteWaf {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Flag(bool),
            Word(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Flag(true) => Ok(RouteWaf::On),
            Raw::Flag(false) => Ok(RouteWaf::Off),
            Raw::Word(word) if word == "report" => Ok(RouteWaf::Report),
            Raw::Word(word) => Err(serde::de::Error::custom(format!(
                "waf must be true, false or \"report\", not `{word}`"
            ))),
        }
    }
}

impl Serialize for RouteWaf {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            RouteWaf::Off => serializer.serialize_bool(false),
            RouteWaf::On => serializer.serialize_bool(true),
            RouteWaf::Report => serializer.serialize_str("report"),
        }
    }
}

impl Default for WafConfig {
    fn default() -> Self {
        WafConfig {
            engine: WafEngineKind::Builtin,
            mode: Mode::Enforce,
            report_families: Vec::new(),
            content_types: [
                "application/json",
                "application/x-www-form-urlencoded",
                "multipart/form-data",
                "multipart/related",
                "application/xml",
                "text/xml",
                "application/soap+xml",
                "text/plain",
                "application/octet-stream",
            ]
            .map(String::from)
            .to_vec(),
            crs_setup: String::from("/etc/modsecurity/crs/crs-setup.conf"),
            crs_rules: String::from("/usr/share/modsecurity-crs/rules"),
            paranoia: 1,
            threshold: 5,
            headers: vec![String::from("*")],
            max_json_depth: 64,
            max_values: 10_000,
            max_inspected_bytes: 1024 * 1024,
            exclusions: Vec::new(),
        }
    }
}

pub(super) fn read(
    item: &Item,
    d: &mut Diagnostics,
    route_ids: &std::collections::HashSet<String>,
) -> Option<WafConfig> {
    let mut waf: WafConfig = d.read_or_default(item)?;
    let at = |field: &str| place(&[item.get(field), Some(item)]);
    if !(1..=2).contains(&waf.paranoia) {
        d.error(at("paranoia"), "waf.paranoia must be 1 or 2");
    }
    for (value, field) in [
        (waf.threshold as usize, "threshold"),
        (waf.max_json_depth, "max_json_depth"),
        (waf.max_values, "max_values"),
        (
            usize::try_from(waf.max_inspected_bytes).unwrap_or(usize::MAX),
            "max_inspected_bytes",
        ),
    ] {
        if value == 0 {
            d.error(at(field), format!("waf.{field} must be at least 1"));
        }
    }
    let list = item.get("exclusions");
    let mut ids = std::collections::HashSet::new();
    for (i, exclusion) in waf.exclusions.iter().enumerate() {
        let entry = list.and_then(|l| super::diagnostics::entry(l, i));
        let at = |field: &str| place(&[entry.and_then(|e| e.get(field)), entry, Some(item)]);
        if !super::names::is_identifier(&exclusion.id) || !ids.insert(exclusion.id.clone()) {
            d.error(
                at("id"),
                format!("waf exclusion id `{}` must be a unique identifier", exclusion.id),
            );
        }
        for route in exclusion.routes.iter().flatten() {
            if !route_ids.contains(route) {
                d.error(
                    at("routes"),
                    format!(
                        "waf exclusion `{}` names route `{route}`, which is not defined",
                        exclusion.id
                    ),
                );
            }
        }
        if exclusion.parts.is_empty() || exclusion.parts.iter().any(|p| p.is_empty()) {
            d.error(
                at("parts"),
                format!(
                    "waf exclusion `{}` needs parts (`query:q`, `body:/a/b`, a trailing `*` for any ending)",
                    exclusion.id
                ),
            );
        }
    }
    for family in &waf.report_families {
        if !WAF_FAMILIES.contains(&family.as_str()) {
            d.error(
                at("report_families"),
                format!(
                    "waf.report_families: `{family}` is not a family (one of {})",
                    WAF_FAMILIES.join(", ")
                ),
            );
        }
    }
    for content_type in &mut waf.content_types {
        *content_type = content_type.trim().to_ascii_lowercase();
        if content_type
            .split_once('/')
            .is_none_or(|(k, s)| k.is_empty() || s.is_empty() || s.contains(';'))
        {
            d.error(
                at("content_types"),
                format!(
                    "waf.content_types: `{content_type}` must be a media type without parameters (`application/json`)"
                ),
            );
        }
    }
    for header in &mut waf.headers {
        *header = header.to_ascii_lowercase();
    }
    Some(waf)
}
