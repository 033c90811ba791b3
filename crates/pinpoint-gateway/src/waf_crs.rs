//! The CRS WAF engine: the OWASP Core Rule Set run by libmodsecurity3, behind the policy
//! crate's [`WafEngine`] trait, so its matches are scored, excluded, reported and traced
//! exactly like the built-in engine's. Built only with the `modsecurity` cargo feature
//! (it links the C++ library: Debian's `libmodsecurity-dev`, with `modsecurity-crs` for the
//! rules); without it, `[waf] engine = "crs"` is a config error.
//!
//! ModSecurity runs in `DetectionOnly`: it never intervenes. Each rule message it logs is
//! read back into a [`Hit`]: the CRS rule id, its family (from the rule file: 942 SQL
//! injection, 941 XSS, ...), its paranoia level (its `paranoia-level/N` tag), its score
//! (from its severity, as the CRS scores: critical 5, error 4, warning 3, notice 2), and
//! the matched variable named the way the built-in engine names parts (`ARGS:q` as
//! `query:q` or `form:q`, `REQUEST_HEADERS:User-Agent` as `header:user-agent`,
//! `json.a.b` as `body:/a/b`). The CRS's own evaluation and correlation rules (949, 980),
//! which only add up scores, are left out: the filter adds them up.
//!
//! The whole request is inspected at once, in the body phase when the request has a body
//! (most CRS rules, those on arguments too, run in ModSecurity's phase 2).

use std::borrow::Cow;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::sync::{Arc, Mutex};

use pinpoint_core::config::WafConfig;
use pinpoint_core::{Denial, Reason};
use pinpoint_policy::filters::waf::{masked, Hit, WafEngine};
use pinpoint_policy::pipeline::RequestCtx;

#[repr(C)]
struct ModSecurity {
    _private: [u8; 0],
}
#[repr(C)]
struct RulesSet {
    _private: [u8; 0],
}
#[repr(C)]
struct Transaction {
    _private: [u8; 0],
}

type LogCallback = extern "C" fn(*mut c_void, *const c_void);

#[link(name = "modsecurity")]
extern "C" {
    fn msc_init() -> *mut ModSecurity;
    fn msc_set_connector_info(msc: *mut ModSecurity, connector: *const c_char);
    fn msc_set_log_cb(msc: *mut ModSecurity, cb: LogCallback);
    fn msc_cleanup(msc: *mut ModSecurity);
    fn msc_create_rules_set() -> *mut RulesSet;
    fn msc_rules_add(rules: *mut RulesSet, plain_rules: *const c_char, error: *mut *const c_char) -> c_int;
    fn msc_rules_cleanup(rules: *mut RulesSet) -> c_int;
    fn msc_new_transaction(msc: *mut ModSecurity, rules: *mut RulesSet, log_data: *mut c_void) -> *mut Transaction;
    fn msc_process_connection(
        t: *mut Transaction,
        client: *const c_char,
        client_port: c_int,
        server: *const c_char,
        server_port: c_int,
    ) -> c_int;
    fn msc_process_uri(
        t: *mut Transaction,
        uri: *const c_char,
        method: *const c_char,
        http_version: *const c_char,
    ) -> c_int;
    fn msc_add_n_request_header(
        t: *mut Transaction,
        key: *const u8,
        key_len: usize,
        value: *const u8,
        value_len: usize,
    ) -> c_int;
    fn msc_process_request_headers(t: *mut Transaction) -> c_int;
    fn msc_append_request_body(t: *mut Transaction, body: *const u8, size: usize) -> c_int;
    fn msc_process_request_body(t: *mut Transaction) -> c_int;
    fn msc_transaction_cleanup(t: *mut Transaction);
    fn free(ptr: *mut c_void);
}

/// Why the CRS engine could not start.
#[derive(Debug, thiserror::Error)]
#[error("[waf] engine = \"crs\": {0}")]
pub struct CrsError(String);

/// The loaded rule set. ModSecurity's rule set is read-only once loaded and its
/// transactions are independent, as nginx and Envoy connectors use them.
pub struct CrsEngine {
    modsec: *mut ModSecurity,
    rules: *mut RulesSet,
    paranoia: u8,
}

// The pointers are only read after loading (each transaction is owned by one call).
unsafe impl Send for CrsEngine {}
unsafe impl Sync for CrsEngine {}

impl Drop for CrsEngine {
    fn drop(&mut self) {
        // SAFETY: both were created by `load` and are freed once, here.
        unsafe {
            msc_rules_cleanup(self.rules);
            msc_cleanup(self.modsec);
        }
    }
}

/// The messages ModSecurity logs during one transaction.
extern "C" fn collect(data: *mut c_void, message: *const c_void) {
    if data.is_null() || message.is_null() {
        return;
    }
    // SAFETY: `data` is the `Vec<String>` `inspect` passed for this transaction, and
    // `message` is a NUL-terminated string (the text log property, which `msc_set_log_cb`
    // selects).
    unsafe {
        let messages = &mut *(data as *mut Vec<String>);
        messages.push(CStr::from_ptr(message as *const c_char).to_string_lossy().into_owned());
    }
}

/// The engine for a config, loaded once per distinct setting (rule files, paranoia, body
/// limit) and shared by every config revision that keeps them: loading the CRS takes a
/// noticeable fraction of a second.
pub fn engine(config: &WafConfig, max_body_bytes: u64) -> Result<Arc<CrsEngine>, CrsError> {
    type Loaded = Vec<((String, String, u8, u64), Arc<CrsEngine>)>;
    static LOADED: Mutex<Loaded> = Mutex::new(Vec::new());
    let key = (
        config.crs_setup.clone(),
        config.crs_rules.clone(),
        config.paranoia,
        max_body_bytes,
    );
    let mut loaded = LOADED.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some((_, engine)) = loaded.iter().find(|(k, _)| *k == key) {
        return Ok(engine.clone());
    }
    let engine = Arc::new(CrsEngine::load(config, max_body_bytes)?);
    loaded.push((key, engine.clone()));
    Ok(engine)
}

impl CrsEngine {
    fn load(config: &WafConfig, max_body_bytes: u64) -> Result<CrsEngine, CrsError> {
        for path in [&config.crs_setup, &config.crs_rules] {
            if !std::path::Path::new(path).exists() {
                return Err(CrsError(format!(
                    "{path} does not exist (install Debian's modsecurity-crs, or set crs_setup and crs_rules)"
                )));
            }
        }
        let rules_text = format!(
            r#"SecRuleEngine DetectionOnly
SecRequestBodyAccess On
SecRequestBodyLimit {limit}
SecRequestBodyNoFilesLimit {limit}
SecRequestBodyLimitAction ProcessPartial
SecRequestBodyJsonDepthLimit 512
SecArgumentSeparator &
SecAuditEngine Off
SecRule REQUEST_HEADERS:Content-Type "@rx (?:application(?:/soap\+|/)|text/)xml" "id:200000,phase:1,t:none,t:lowercase,pass,nolog,ctl:requestBodyProcessor=XML"
SecRule REQUEST_HEADERS:Content-Type "@rx ^application/(?:[a-z0-9.+-]+\+)?json" "id:200001,phase:1,t:none,t:lowercase,pass,nolog,ctl:requestBodyProcessor=JSON"
Include {setup}
SecAction "id:8990001,phase:1,nolog,pass,t:none,setvar:tx.paranoia_level={paranoia}"
Include {rules}/REQUEST-*.conf
"#,
            limit = max_body_bytes.max(1),
            setup = config.crs_setup,
            paranoia = config.paranoia,
            rules = config.crs_rules.trim_end_matches('/'),
        );
        let text = CString::new(rules_text).map_err(|_| CrsError(String::from("a path holds a NUL byte")))?;
        // SAFETY: plain C calls on objects created here; the error string ModSecurity
        // allocates is copied and freed.
        unsafe {
            let modsec = msc_init();
            let connector = CString::new("pinpoint").unwrap_or_default();
            msc_set_connector_info(modsec, connector.as_ptr());
            msc_set_log_cb(modsec, collect);
            let rules = msc_create_rules_set();
            let mut error: *const c_char = std::ptr::null();
            let added = msc_rules_add(rules, text.as_ptr(), &mut error);
            if added < 0 {
                let message = match error.is_null() {
                    true => String::from("the rules did not load"),
                    false => CStr::from_ptr(error).to_string_lossy().trim().to_owned(),
                };
                if !error.is_null() {
                    free(error as *mut c_void);
                }
                msc_rules_cleanup(rules);
                msc_cleanup(modsec);
                return Err(CrsError(message));
            }
            Ok(CrsEngine {
                modsec,
                rules,
                paranoia: config.paranoia,
            })
        }
    }

    /// Runs one transaction over the request (and body) and returns its rule messages.
    fn messages(&self, ctx: &RequestCtx<'_>, body: Option<&[u8]>) -> Vec<String> {
        let mut messages: Vec<String> = Vec::new();
        let uri = match ctx.query {
            Some(q) => format!("{}?{q}", ctx.path),
            None => ctx.path.to_owned(),
        };
        let (Ok(uri), Ok(method), Ok(client)) = (
            CString::new(uri),
            CString::new(ctx.method.as_str()),
            CString::new(ctx.client_ip.to_string()),
        ) else {
            return messages;
        };
        let server = c"127.0.0.1";
        // SAFETY: the transaction is created, used and freed within this call; every
        // pointer passed outlives it; `messages` outlives the transaction, whose log
        // callback writes to it.
        unsafe {
            let t = msc_new_transaction(
                self.modsec,
                self.rules,
                &mut messages as *mut Vec<String> as *mut c_void,
            );
            if t.is_null() {
                return messages;
            }
            msc_process_connection(
                t,
                client.as_ptr(),
                c_int::from(ctx.client_addr.port()),
                server.as_ptr(),
                80,
            );
            msc_process_uri(t, uri.as_ptr(), method.as_ptr(), c"1.1".as_ptr());
            for (name, value) in ctx.headers {
                let name = name.as_str().as_bytes();
                let value = value.as_bytes();
                msc_add_n_request_header(t, name.as_ptr(), name.len(), value.as_ptr(), value.len());
            }
            if !ctx.headers.contains_key(http::header::HOST) {
                if let Some(host) = ctx.host {
                    msc_add_n_request_header(t, b"host".as_ptr(), 4, host.as_ptr(), host.len());
                }
            }
            msc_process_request_headers(t);
            if let Some(body) = body.filter(|b| !b.is_empty()) {
                msc_append_request_body(t, body.as_ptr(), body.len());
            }
            msc_process_request_body(t);
            msc_transaction_cleanup(t);
        }
        messages
    }

    fn hits(&self, ctx: &RequestCtx<'_>, body: Option<&[u8]>) -> Vec<Hit> {
        let messages = self.messages(ctx, body);
        let mut hits: Vec<Hit> = Vec::new();
        for message in &messages {
            tracing::trace!(rule_message = %message, "crs rule message");
            let Some(hit) = hit_of(message, ctx) else { continue };
            if hit.paranoia > self.paranoia {
                continue;
            }
            // A rule that matched several variables logs once per variable; a rule counts
            // once per part.
            if !hits.iter().any(|h| h.rule == hit.rule && h.part == hit.part) {
                hits.push(hit);
            }
        }
        hits
    }
}

impl WafEngine for CrsEngine {
    fn name(&self) -> &'static str {
        "crs"
    }

    fn head(&self, ctx: &RequestCtx<'_>, body_follows: bool) -> Result<Vec<Hit>, Denial> {
        Ok(match body_follows {
            // Inspected with the body, in one transaction.
            true => Vec::new(),
            false => self.hits(ctx, None),
        })
    }

    fn body(&self, ctx: &RequestCtx<'_>, body: &[u8]) -> Result<Vec<Hit>, Denial> {
        Ok(self.hits(ctx, Some(body)))
    }
}

/// A `[name "value"]` field of a ModSecurity rule message (every one, for tags).
fn fields<'m>(message: &'m str, name: &str) -> Vec<&'m str> {
    let open = format!("[{name} \"");
    message
        .match_indices(&open)
        .filter_map(|(at, _)| {
            let rest = &message[at + open.len()..];
            rest.find("\"]").map(|end| &rest[..end])
        })
        .collect()
}

/// The hit a rule message describes; `None` for messages that are not a scoring rule's
/// match (the CRS's own evaluation and correlation, rules without a severity).
fn hit_of(message: &str, ctx: &RequestCtx<'_>) -> Option<Hit> {
    let id = *fields(message, "id").first()?;
    let number: u32 = id.parse().ok()?;
    let reason = family(number)?;
    let score = match fields(message, "severity").first().copied()? {
        "0" | "1" | "2" | "CRITICAL" | "EMERGENCY" | "ALERT" => 5,
        "3" | "ERROR" => 4,
        "4" | "WARNING" => 3,
        "5" | "NOTICE" => 2,
        _ => return None,
    };
    let paranoia = fields(message, "tag")
        .iter()
        .find_map(|t| t.strip_prefix("paranoia-level/"))
        .and_then(|p| p.parse().ok())
        .unwrap_or(1);
    // Operator matches say `against variable `ARGS:q' (Value: `...' )`; libinjection's
    // say `[data "Matched Data: <fingerprint> found within ARGS:q: <value>"]`.
    let (variable, value) = match between(message, "against variable `", "' (Value: `") {
        Some(variable) => (variable, between(message, "(Value: `", "' )").unwrap_or("")),
        None => {
            let data = fields(message, "data").first().copied().unwrap_or("");
            let within = data.split_once(" found within ").map_or("", |(_, w)| w);
            within.split_once(": ").unwrap_or((within, ""))
        }
    };
    let variable = if variable.is_empty() { "REQUEST" } else { variable };
    Some(Hit {
        rule: Cow::Owned(id.to_owned()),
        reason,
        paranoia,
        score,
        part: part_of(variable, ctx),
        fragment: masked(value),
    })
}

fn between<'m>(text: &'m str, open: &str, close: &str) -> Option<&'m str> {
    let start = text.find(open)? + open.len();
    let end = text[start..].find(close)?;
    Some(&text[start..start + end])
}

/// The family of a CRS rule, by its file (the hundreds of its id).
fn family(id: u32) -> Option<Reason> {
    Some(match id / 1000 {
        911 | 913 | 920 | 921 | 922 | 943 => Reason::WafProtocol,
        930 | 931 => Reason::WafTraversal,
        932..=934 => Reason::WafRce,
        941 => Reason::WafXss,
        942 => Reason::WafSqli,
        944 => Reason::WafJndi,
        _ => return None,
    })
}

/// A ModSecurity variable named as the built-in engine names parts.
fn part_of(variable: &str, ctx: &RequestCtx<'_>) -> String {
    let (collection, name) = variable.split_once(':').unwrap_or((variable, ""));
    let in_query = |name: &str| {
        ctx.query.is_some_and(|q| {
            q.split('&')
                .any(|pair| pair.split('=').next().is_some_and(|n| n == name))
        })
    };
    match collection {
        "ARGS" | "ARGS_NAMES" | "ARGS_GET" | "ARGS_GET_NAMES" | "ARGS_POST" | "ARGS_POST_NAMES" => {
            if let Some(path) = name.strip_prefix("json.") {
                let pointer: String = path
                    .split('.')
                    .map(|key| format!("/{}", key.strip_prefix("array_").unwrap_or(key)))
                    .collect();
                format!("body:{pointer}")
            } else if name == "json" {
                String::from("body:")
            } else if collection.starts_with("ARGS_GET") || (!collection.starts_with("ARGS_POST") && in_query(name)) {
                format!("query:{name}")
            } else {
                format!("form:{name}")
            }
        }
        "REQUEST_HEADERS" | "REQUEST_HEADERS_NAMES" => format!("header:{}", name.to_ascii_lowercase()),
        "REQUEST_COOKIES" | "REQUEST_COOKIES_NAMES" => format!("cookie:{name}"),
        "FILES" | "FILES_NAMES" => format!("file:{name}"),
        "XML" => String::from("xml:/"),
        "REQUEST_BODY" => String::from("body"),
        "REQUEST_FILENAME" | "REQUEST_BASENAME" | "REQUEST_URI" | "REQUEST_URI_RAW" => String::from("path"),
        other => format!("request:{}", other.to_ascii_lowercase()),
    }
}
