//! Verdicts and decision traces: what a layer answers ([`Outcome`]), how a layer runs
//! ([`Mode`]), and the record of a whole request's decision ([`Decision`]) that is stored
//! and printed by `pinpoint explain`.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::reason::Reason;

/// Whether a layer's denials are enforced or only recorded (shadow mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// A deny stops the request.
    #[default]
    Enforce,
    /// A deny is recorded and counted as `would_deny`, and the request passes.
    Report,
}

impl Mode {
    /// Whether this is [`Mode::Enforce`].
    pub fn is_enforce(&self) -> bool {
        *self == Mode::Enforce
    }

    /// Lower-case name, as used in config, metrics and traces.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Report => "report",
        }
    }
}

/// A layer's refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// The catalogued reason.
    pub reason: Reason,
    /// Caller-safe detail (RFC 9457 `detail`). Must never hold a secret, another tenant's
    /// name or an internal address.
    pub detail: String,
    /// The rule that decided, for the operator (trace only). Boxed, as `platform_note`.
    pub rule_id: Option<Box<str>>,
    /// Operator-only context (trace only), readable by the caller's organization.
    pub note: Option<String>,
    /// Context for platform admins only: what names another tenant (the route's
    /// organization when a caller used another's route). Removed from the decision before
    /// anyone else reads it. (Boxed, as `rule_id`: a `Denial` is an error type, and a
    /// small one keeps every `Result` that carries it small.)
    pub platform_note: Option<Box<str>>,
    /// Extra response headers (e.g. `Allow` on a 405).
    pub headers: Vec<(&'static str, String)>,
    /// The filter itself says this denial is only reported (a rule family or route in
    /// report mode), whatever the filter's mode: traced as would-deny, not enforced.
    pub report_only: bool,
}

impl Denial {
    /// A denial with a caller-safe detail.
    pub fn new(reason: Reason, detail: impl Into<String>) -> Self {
        Denial {
            reason,
            detail: detail.into(),
            rule_id: None,
            note: None,
            platform_note: None,
            headers: Vec::new(),
            report_only: false,
        }
    }

    /// Marks the denial as only reported (see [`Denial::report_only`]).
    pub fn report_only(mut self) -> Self {
        self.report_only = true;
        self
    }

    /// Names the deciding rule (operator side).
    pub fn rule(mut self, rule_id: impl Into<String>) -> Self {
        self.rule_id = Some(rule_id.into().into_boxed_str());
        self
    }

    /// Adds an operator-only note.
    pub fn note(mut self, note: impl Into<String>) -> Self {
        self.note = Some(note.into());
        self
    }

    /// Adds a note only platform admins read (see [`Denial::platform_note`]).
    pub fn platform_note(mut self, note: impl Into<String>) -> Self {
        self.platform_note = Some(note.into().into_boxed_str());
        self
    }

    /// Adds a response header.
    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
}

/// What one layer says about one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The layer let the request through, optionally naming the rule that allowed it
    /// (shared, so naming a rule costs no allocation on the hot path).
    Allow { rule_id: Option<Arc<str>> },
    /// The layer refuses the request.
    Deny(Denial),
    /// "Not mine": the layer has nothing to say about this request (distinct from failing).
    NotApplicable,
}

impl Outcome {
    /// An allow with no rule named.
    pub fn allow() -> Self {
        Outcome::Allow { rule_id: None }
    }
}

/// How a layer's outcome shows in the trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mark {
    /// Allowed.
    Pass,
    /// Denied, and the deny was enforced.
    Deny,
    /// Not applicable, or not reached because an earlier layer denied.
    Skip,
    /// Denied in report mode: recorded, but the request went on.
    WouldDeny,
}

impl Mark {
    /// Short name for printing.
    pub fn as_str(self) -> &'static str {
        match self {
            Mark::Pass => "pass",
            Mark::Deny => "deny",
            Mark::Skip => "skip",
            Mark::WouldDeny => "would_deny",
        }
    }
}

/// One layer's entry in a decision trace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerTrace {
    /// The layer's name; borrowed from the layer itself on the hot path.
    pub layer: std::borrow::Cow<'static, str>,
    pub mark: Mark,
    /// Omitted from the stored JSON when `enforce` (most entries), to keep records small.
    #[serde(default, skip_serializing_if = "Mode::is_enforce")]
    pub mode: Mode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule_id: Option<Arc<str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// For platform admins only; the API removes it for everyone else.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform_note: Option<String>,
    /// Time spent in the layer, microseconds (omitted when 0).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub micros: u64,
}

impl LayerTrace {
    /// An entry for `layer` with `mark` and `mode`, and nothing else said yet.
    pub fn new(layer: impl Into<std::borrow::Cow<'static, str>>, mark: Mark, mode: Mode) -> LayerTrace {
        LayerTrace {
            layer: layer.into(),
            mark,
            mode,
            reason: None,
            rule_id: None,
            detail: None,
            note: None,
            platform_note: None,
            micros: 0,
        }
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// How a caller authenticated, as a decision records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialKind {
    /// An application key of a principal.
    ApiKey,
    /// An organization key (`DD-API-KEY` alone).
    OrgKey,
    /// A bearer token Pinpoint signed.
    Token,
    /// A client certificate (mTLS) mapped to a principal by `[[authn.client_certs]]`.
    ClientCert,
}

/// Who made a request, as fields: what tools filter and join on (the decision's
/// `principal` label says the same for people).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallerRecord {
    /// The user or service account; absent for an organization key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal_id: Option<Arc<str>>,
    pub org_id: Arc<str>,
    pub credential: CredentialKind,
    /// The key's id, when a key was presented.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<Arc<str>>,
    /// The token's `jti`, when a token was presented.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_id: Option<Arc<str>>,
}

/// The stored record of one request's decision. Never holds a request body or a secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// Pinpoint's own id for the request: every request gets a fresh one, and it keys the
    /// decision (a client cannot make its request overwrite or hide another's).
    pub request_id: String,
    /// The client's `X-Request-Id`, if it sent a well-formed one: kept, echoed back, and a
    /// second way to find the decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_request_id: Option<String>,
    /// Unix time in milliseconds when the request arrived.
    pub at_ms: i64,
    /// The W3C trace the request belongs to (the caller's `traceparent`, or one Pinpoint
    /// started), as the upstream saw it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// The subject of the client certificate the TLS handshake verified (mTLS), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<String>,
    pub method: String,
    /// The canonical path, the one routed, decided on and forwarded (before
    /// `strip_prefix`). Path only; the query string is not stored (it may carry secrets).
    pub path: String,
    /// The path as the client wrote it, when it differs from `path` (or could not be
    /// canonicalised).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    pub client_addr: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// Who the caller was, for people (`kind:name (id)`): never stored (a record names
    /// its caller by id, in `caller`), but filled in when a decision is read, from the
    /// directory as it is then. The credential used is the authn entry's `rule_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<Arc<str>>,
    /// The caller as ids, when known (authenticated, or the owner of a refused key); its
    /// organization's admins can read the decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller: Option<CallerRecord>,
    /// Final status sent to the caller.
    pub status: u16,
    /// Set when Pinpoint itself answered (a denial or an upstream failure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    /// The upstream target that served the request, if any (operator side only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_target: Option<String>,
    pub config_revision: String,
    /// Total time in Pinpoint and upstream until the response head, microseconds.
    pub duration_micros: u64,
    pub trace: Vec<LayerTrace>,
}

impl Decision {
    /// The caller's organization, when known: whose admins can read this decision.
    pub fn org_id(&self) -> Option<&str> {
        self.caller.as_ref().map(|c| c.org_id.as_ref())
    }

    /// The entry of the layer that decided the outcome (an enforced deny), if any.
    pub fn deciding_layer(&self) -> Option<&LayerTrace> {
        self.trace.iter().find(|t| t.mark == Mark::Deny)
    }
}
