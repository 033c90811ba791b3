//! The decision record's stored JSON, written by hand: exactly what
//! `serde_json::to_string(&decision)` writes (field order, omitted fields, escaping; the
//! tests compare the two), read back with serde.
//!
//! Why by hand: every proxied request writes one record, and serde_json spent about 200
//! instructions on each of a record's ~70 strings (an `io::Write` call per piece): 16,300
//! instructions a bare request, 14% of it (`bench/instructions.sh`, 2026-12-06). Written
//! into one `String` with `pinpoint_core::json` it is about 3,000.
//!
//! A field added to `Decision`, `CallerRecord` or `LayerTrace` must be added here too: the
//! test `every_field_is_written_as_serde_writes_it` builds a record with every field set,
//! so it stops compiling, then fails, until it is.

use pinpoint_core::json;
use pinpoint_core::verdict::{CallerRecord, CredentialKind, LayerTrace};
use pinpoint_core::{Decision, Mode};

/// The record of `decision`, as stored.
pub fn encode(decision: &Decision) -> String {
    let mut out = String::with_capacity(384 + 48 * decision.trace.len());
    let mut record = Object::open(&mut out);
    record.str("request_id", &decision.request_id);
    record.opt_str("client_request_id", decision.client_request_id.as_deref());
    record.int("at_ms", decision.at_ms);
    record.opt_str("trace_id", decision.trace_id.as_deref());
    record.opt_str("client_cert", decision.client_cert.as_deref());
    record.str("method", &decision.method);
    record.str("path", &decision.path);
    record.opt_str("raw_path", decision.raw_path.as_deref());
    record.opt_str("host", decision.host.as_deref());
    record.str("client_addr", &decision.client_addr);
    record.opt_str("route", decision.route.as_deref());
    record.opt_str("principal", decision.principal.as_deref());
    if let Some(caller) = &decision.caller {
        record.key("caller");
        write_caller(record.out, caller);
    }
    record.uint("status", u64::from(decision.status));
    record.opt_str("reason", decision.reason.map(|r| r.code()));
    record.opt_str("upstream_target", decision.upstream_target.as_deref());
    record.str("config_revision", &decision.config_revision);
    record.uint("duration_micros", decision.duration_micros);
    record.key("trace");
    record.out.push('[');
    for (i, entry) in decision.trace.iter().enumerate() {
        if i > 0 {
            record.out.push(',');
        }
        write_trace_entry(record.out, entry);
    }
    record.out.push(']');
    record.close();
    out
}

fn write_caller(out: &mut String, caller: &CallerRecord) {
    let mut object = Object::open(out);
    object.opt_str("principal_id", caller.principal_id.as_deref());
    object.str("org_id", &caller.org_id);
    object.str(
        "credential",
        match caller.credential {
            CredentialKind::ApiKey => "api_key",
            CredentialKind::OrgKey => "org_key",
            CredentialKind::Token => "token",
            CredentialKind::ClientCert => "client_cert",
        },
    );
    object.opt_str("key_id", caller.key_id.as_deref());
    object.opt_str("token_id", caller.token_id.as_deref());
    object.close();
}

fn write_trace_entry(out: &mut String, entry: &LayerTrace) {
    let mut object = Object::open(out);
    object.str("layer", &entry.layer);
    object.str("mark", entry.mark.as_str());
    if entry.mode != Mode::Enforce {
        object.str("mode", entry.mode.as_str());
    }
    object.opt_str("reason", entry.reason.map(|r| r.code()));
    object.opt_str("rule_id", entry.rule_id.as_deref());
    object.opt_str("detail", entry.detail.as_deref());
    object.opt_str("note", entry.note.as_deref());
    object.opt_str("platform_note", entry.platform_note.as_deref());
    if entry.micros != 0 {
        object.uint("micros", entry.micros);
    }
    object.close();
}

/// A JSON object being written: `{`, then `"key":value` pairs separated by commas.
struct Object<'a> {
    out: &'a mut String,
    empty: bool,
}

impl<'a> Object<'a> {
    fn open(out: &'a mut String) -> Object<'a> {
        out.push('{');
        Object { out, empty: true }
    }

    /// Writes `"name":`, after a comma unless it is the first field. Names are plain
    /// identifiers, so they need no escaping.
    fn key(&mut self, name: &str) {
        if !self.empty {
            self.out.push(',');
        }
        self.empty = false;
        self.out.push('"');
        self.out.push_str(name);
        self.out.push_str("\":");
    }

    fn str(&mut self, name: &str, value: &str) {
        self.key(name);
        json::push_str(self.out, value);
    }

    fn opt_str(&mut self, name: &str, value: Option<&str>) {
        if let Some(value) = value {
            self.str(name, value);
        }
    }

    fn int(&mut self, name: &str, value: i64) {
        self.key(name);
        self.out.push_str(itoa::Buffer::new().format(value));
    }

    fn uint(&mut self, name: &str, value: u64) {
        self.key(name);
        self.out.push_str(itoa::Buffer::new().format(value));
    }

    fn close(self) {
        self.out.push('}');
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use pinpoint_core::verdict::Mark;
    use pinpoint_core::Reason;

    use super::*;

    fn entry(layer: &'static str, mark: Mark) -> LayerTrace {
        LayerTrace::new(layer, mark, Mode::Enforce)
    }

    #[test]
    fn every_field_is_written_as_serde_writes_it() {
        let full = Decision {
            request_id: "01a2493d8d34dc5320fc291b978c2af5".into(),
            client_request_id: Some("client \"id\"".into()),
            at_ms: 1_796_525_100_340,
            trace_id: Some("8c47cce5a581eff3c829acb8829a571b".into()),
            client_cert: Some("CN=client\\, one,O=Example".into()),
            method: "POST".into(),
            path: "/orders/ünï\u{1}".into(),
            raw_path: Some("/orders/./x".into()),
            host: Some("api.example.com".into()),
            client_addr: "203.0.113.9 (via 127.0.0.1:53666)".into(),
            route: Some("orders".into()),
            principal: Some(Arc::from("user:alice (u1)")),
            caller: Some(CallerRecord {
                principal_id: Some(Arc::from("u1")),
                org_id: Arc::from("org-1"),
                credential: CredentialKind::ApiKey,
                key_id: Some(Arc::from("k1")),
                token_id: Some(Arc::from("t1")),
            }),
            status: 403,
            reason: Some(Reason::AuthzPermissionMissing),
            upstream_target: Some("127.0.0.1:19000".into()),
            config_revision: "r899854116645".into(),
            duration_micros: 2949,
            trace: vec![
                LayerTrace {
                    layer: "authz".into(),
                    mark: Mark::WouldDeny,
                    mode: Mode::Report,
                    reason: Some(Reason::AuthzPermissionMissing),
                    rule_id: Some(Arc::from("orders:write")),
                    detail: Some("needs \"orders:write\"\n".into()),
                    note: Some("note".into()),
                    platform_note: Some("platform\tnote".into()),
                    micros: 17,
                },
                entry("cors", Mark::Skip),
                entry("route", Mark::Pass),
                entry("waf", Mark::Deny),
            ],
        };
        assert_eq!(encode(&full), serde_json::to_string(&full).unwrap());
    }

    #[test]
    fn omitted_fields_are_omitted_as_serde_omits_them() {
        let credentials = [
            CredentialKind::ApiKey,
            CredentialKind::OrgKey,
            CredentialKind::Token,
            CredentialKind::ClientCert,
        ];
        for (i, credential) in credentials.into_iter().enumerate() {
            let bare = Decision {
                request_id: "r".into(),
                client_request_id: None,
                at_ms: -5,
                trace_id: None,
                client_cert: None,
                method: "GET".into(),
                path: "/".into(),
                raw_path: None,
                host: None,
                client_addr: "127.0.0.1:1".into(),
                route: None,
                principal: None,
                caller: (i > 0).then(|| CallerRecord {
                    principal_id: None,
                    org_id: Arc::from("org"),
                    credential,
                    key_id: None,
                    token_id: None,
                }),
                status: 200,
                reason: None,
                upstream_target: None,
                config_revision: String::new(),
                duration_micros: 0,
                trace: if i % 2 == 0 {
                    Vec::new()
                } else {
                    vec![entry("net", Mark::Skip)]
                },
            };
            assert_eq!(encode(&bare), serde_json::to_string(&bare).unwrap());
        }
    }
}
