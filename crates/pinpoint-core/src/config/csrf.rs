//! `[csrf]`: the cross-site request forgery filter: its mode, the origins trusted besides
//! a request's own (`[cors] allowed_origins` count too), whether a state-changing cookie
//! request with neither `Origin` nor `Sec-Fetch-Site` is refused, and the double-submit
//! token's cookie and header names. Which routes it guards is each route's `csrf`.

use serde::{Deserialize, Serialize};
use toml_edit::Item;

use super::diagnostics::{entry, place, Diagnostics};
use super::names::is_origin;
use crate::verdict::Mode;

/// `[csrf]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CsrfConfig {
    pub mode: Mode,
    /// Origins (`https://app.example.com`) whose requests pass besides the request's own.
    pub trusted_origins: Vec<String>,
    /// Refuse a state-changing cookie request that carries neither `Origin` nor
    /// `Sec-Fetch-Site` (by default such a client is not a browser, and passes).
    pub refuse_without_origin: bool,
    /// The double-submit token's cookie (routes with `csrf = "token"`).
    pub token_cookie: String,
    /// ... and the header that must repeat it.
    pub token_header: String,
}

impl Default for CsrfConfig {
    fn default() -> Self {
        CsrfConfig {
            mode: Mode::Enforce,
            trusted_origins: Vec::new(),
            refuse_without_origin: false,
            token_cookie: String::from("csrf_token"),
            token_header: String::from("x-csrf-token"),
        }
    }
}

/// How a route guards against cross-site requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CsrfGuard {
    /// Checked when the request carries a credential a browser attaches on its own (a
    /// cookie, or Basic/Digest/Negotiate/NTLM `Authorization`) and Pinpoint did not
    /// authenticate the caller with a key or token (the default).
    #[default]
    Auto,
    /// Always checked: `Sec-Fetch-Site`, then `Origin` against the request's own origin.
    Origin,
    /// A double-submit token: the token header must repeat the token cookie.
    Token,
    /// Never checked.
    Off,
}

pub(super) fn read(item: &Item, d: &mut Diagnostics) -> Option<CsrfConfig> {
    let csrf: CsrfConfig = d.read_or_default(item)?;
    let origins = item.get("trusted_origins");
    for (i, origin) in csrf.trusted_origins.iter().enumerate() {
        if !is_origin(origin) {
            d.error(
                place(&[origins.and_then(|o| entry(o, i)), origins, Some(item)]),
                format!("csrf trusted origin `{origin}` must be an origin as browsers send it: http:// or https://, a host and an optional port, no path"),
            );
        }
    }
    for (value, field) in [
        (&csrf.token_cookie, "token_cookie"),
        (&csrf.token_header, "token_header"),
    ] {
        let token = !value.is_empty()
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !token {
            d.error(
                place(&[item.get(field), Some(item)]),
                format!("csrf.{field} must be a name of letters, digits, `-` and `_`"),
            );
        }
    }
    Some(csrf)
}
