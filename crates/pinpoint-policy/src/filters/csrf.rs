//! The CSRF filter: refuses state-changing requests that a browser sent on another site's
//! behalf, the protection modern frameworks use. On a guarded route (`csrf = "origin"`, or
//! the default `"auto"` when the request carries a credential a browser attaches on its
//! own, a cookie or Basic/Negotiate-style `Authorization`, and Pinpoint did not
//! authenticate it with a key or token it verified): safe methods pass;
//! `Sec-Fetch-Site: same-origin` or `none` passes; otherwise `Origin` must be the request's
//! own origin (scheme and host as the client addressed them, from trusted proxies only) or
//! a trusted one (`[csrf] trusted_origins`, `[cors] allowed_origins`); a request with
//! neither header is not from a browser and passes unless `refuse_without_origin`. With
//! `csrf = "token"`, the token header must repeat the token cookie. The trace shows the
//! headers and the origin they were compared with.
//! Codes: `csrf.cross_site`, `csrf.origin_mismatch`, `csrf.origin_missing`,
//! `csrf.token_mismatch` (403).

use std::collections::HashSet;

use http::{HeaderMap, Method};
use ipnet::IpNet;
use pinpoint_core::config::{CsrfConfig, CsrfGuard};
use pinpoint_core::{Denial, Outcome, Reason};
use subtle::ConstantTimeEq;

use crate::forwarded::{normalise_origin, request_origin};
use crate::pipeline::{Check, Filter, RequestCtx};

pub struct CsrfFilter {
    config: CsrfConfig,
    /// `[csrf] trusted_origins` and `[cors] allowed_origins`, normalised.
    trusted: HashSet<String>,
    trusted_proxies: Vec<IpNet>,
}

impl CsrfFilter {
    pub fn new(config: &CsrfConfig, cors_origins: &[String], trusted_proxies: &[IpNet]) -> Self {
        CsrfFilter {
            trusted: config
                .trusted_origins
                .iter()
                .chain(cors_origins)
                .filter_map(|o| normalise_origin(o))
                .collect(),
            config: config.clone(),
            trusted_proxies: trusted_proxies.to_vec(),
        }
    }

    fn token_check(&self, headers: &HeaderMap) -> Outcome {
        let header = headers
            .get(self.config.token_header.as_str())
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        let cookie = cookie(headers, &self.config.token_cookie).unwrap_or_default();
        if !header.is_empty() && bool::from(header.ct_eq(cookie)) {
            return Outcome::Allow {
                rule_id: Some("token".into()),
            };
        }
        Outcome::Deny(
            Denial::new(
                Reason::CsrfTokenMismatch,
                format!(
                    "The `{}` header must repeat the `{}` cookie.",
                    self.config.token_header, self.config.token_cookie
                ),
            )
            .note(format!(
                "token header {}; token cookie {}",
                if header.is_empty() { "missing" } else { "present" },
                if cookie.is_empty() { "missing" } else { "present" },
            )),
        )
    }

    fn origin_check(&self, ctx: &RequestCtx<'_>) -> Outcome {
        // A header that is present but not text still counts as present (and matches
        // nothing): only a missing header means "not a browser".
        let header = |name: &str| {
            ctx.headers
                .get(name)
                .map(|v| v.to_str().map(str::trim).unwrap_or("\u{fffd}"))
        };
        let (fetch_site, origin) = (header("sec-fetch-site"), header("origin"));
        let host = header("host");
        let own = request_origin(ctx.client_addr.ip(), ctx.headers, host, &self.trusted_proxies);
        let compared = match &own {
            Some(own) => format!("{} (from {})", own.origin, own.source),
            None => String::from("no origin (no usable Host)"),
        };
        let seen = format!(
            "Origin {}; Sec-Fetch-Site {}; compared with {compared}",
            shown(origin),
            shown(fetch_site)
        );
        let allow = |rule: &str| Outcome::Allow {
            rule_id: Some(rule.into()),
        };
        let origin = origin.and_then(normalise_origin);
        let trusted = origin.as_ref().is_some_and(|o| self.trusted.contains(o));
        if let Some(site) = fetch_site {
            if site.eq_ignore_ascii_case("same-origin") || site.eq_ignore_ascii_case("none") {
                return allow("sec-fetch-site");
            }
            if trusted {
                return allow("trusted origin");
            }
            return Outcome::Deny(
                Denial::new(Reason::CsrfCrossSite, "This request came from another site.").note(seen),
            );
        }
        match (&origin, header("origin")) {
            (_, None) if self.config.refuse_without_origin => Outcome::Deny(
                Denial::new(
                    Reason::CsrfOriginMissing,
                    "This request says neither where it came from (Origin) nor how (Sec-Fetch-Site).",
                )
                .note(seen),
            ),
            (_, None) => allow("no Origin: not a browser"),
            (Some(o), _) if own.as_ref().is_some_and(|own| own.origin == *o) => allow("same origin"),
            _ if trusted => allow("trusted origin"),
            _ => Outcome::Deny(
                Denial::new(
                    Reason::CsrfOriginMismatch,
                    "This request's Origin is not this site's origin.",
                )
                .note(seen),
            ),
        }
    }
}

/// A header value as the trace shows it: quoted and cut short, or `absent`.
fn shown(value: Option<&str>) -> String {
    match value {
        Some(v) => format!("{:?}", v.chars().take(200).collect::<String>()),
        None => String::from("absent"),
    }
}

/// The value of cookie `name` in the request's `Cookie` headers, as bytes (other cookies
/// may hold any bytes a site set).
fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h [u8]> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b';'))
        .filter_map(|pair| {
            let pair = pair.trim_ascii();
            let at = pair.iter().position(|b| *b == b'=')?;
            Some((&pair[..at], pair[at + 1..].trim_ascii()))
        })
        .find(|(k, _)| *k == name.as_bytes())
        .map(|(_, v)| v)
}

/// Whether the request carries a credential a browser attaches on its own (a cookie, or
/// `Authorization` of a scheme browsers remember: Basic, Digest, Negotiate, NTLM).
fn ambient_credential(headers: &HeaderMap) -> bool {
    headers.contains_key(http::header::COOKIE)
        || headers.get_all(http::header::AUTHORIZATION).iter().any(|v| {
            let scheme = v.as_bytes().split(|b| *b == b' ').next().unwrap_or_default();
            ["basic", "digest", "negotiate", "ntlm"]
                .iter()
                .any(|s| scheme.eq_ignore_ascii_case(s.as_bytes()))
        })
}

impl Filter for CsrfFilter {
    fn name(&self) -> &'static str {
        "csrf"
    }

    fn check<'a>(&'a self, ctx: &'a mut RequestCtx<'_>) -> Check<'a> {
        let guard = ctx.route.as_ref().map_or(CsrfGuard::Off, |r| r.csrf);
        // A WebSocket handshake is a GET that opens a two-way channel, and browsers apply no
        // CORS to it: it is checked like a state-changing request, by its `Origin` (a page
        // cannot add a token header to it).
        let websocket = super::route::is_websocket_upgrade(ctx.method, ctx.headers);
        let safe = !websocket
            && matches!(
                *ctx.method,
                Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
            );
        let outcome = match guard {
            _ if safe => Outcome::NotApplicable,
            CsrfGuard::Off => Outcome::NotApplicable,
            // Auto: what a browser could send on its own, and Pinpoint did not authenticate
            // with a credential a page must set itself (a key or a token it verified).
            CsrfGuard::Auto if ctx.identity.is_some() || !ambient_credential(ctx.headers) => Outcome::NotApplicable,
            CsrfGuard::Token if websocket => self.origin_check(ctx),
            CsrfGuard::Token => self.token_check(ctx.headers),
            CsrfGuard::Auto | CsrfGuard::Origin => self.origin_check(ctx),
        };
        Check::Ready(outcome)
    }
}
