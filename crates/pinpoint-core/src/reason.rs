//! The reason catalogue: every response Pinpoint generates itself has exactly one
//! [`Reason`], defined once here with its status, public title, caller-safe hint and
//! operator description. `docs/reasons.md` is rendered from this table
//! ([`render_markdown`]) and a test keeps the two equal.

use serde::{Deserialize, Serialize};

/// Everything the catalogue says about one reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReasonInfo {
    /// Stable `layer.reason` code; never renamed once shipped.
    pub code: &'static str,
    /// The layer (the part before the dot).
    pub layer: &'static str,
    /// HTTP status sent to the caller.
    pub status: u16,
    /// Public, short title (RFC 9457 `title`).
    pub title: &'static str,
    /// Caller-safe hint: what the caller can do about it.
    pub hint: &'static str,
    /// Operator-side description: what happened and where to look.
    pub description: &'static str,
}

macro_rules! reasons {
    ($( $(#[$meta:meta])* $variant:ident => {
        code: $code:literal, status: $status:literal, title: $title:literal,
        hint: $hint:literal, description: $desc:literal $(,)?
    } ),* $(,)?) => {
        /// A stable reason code. Serialized as its `layer.reason` string.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Reason { $( $(#[$meta])* $variant ),* }

        impl Reason {
            /// Every reason, in catalogue order.
            pub const ALL: &'static [Reason] = &[ $( Reason::$variant ),* ];

            /// The catalogue entry of this reason.
            pub fn info(self) -> &'static ReasonInfo {
                match self { $( Reason::$variant => &const { ReasonInfo {
                    code: $code,
                    layer: layer_of($code),
                    status: $status,
                    title: $title,
                    hint: $hint,
                    description: $desc,
                } } ),* }
            }
        }
    };
}

const fn layer_of(code: &'static str) -> &'static str {
    let bytes = code.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'.' {
            let (layer, _) = bytes.split_at(i);
            return match std::str::from_utf8(layer) {
                Ok(layer) => layer,
                Err(_) => code,
            };
        }
        i += 1;
    }
    code
}

reasons! {
    /// No configured route matches the request's host and path.
    RouteNotFound => {
        code: "route.not_found", status: 404, title: "No route for this request",
        hint: "Check the path and host; this gateway serves only the routes it is configured for.",
        description: "No route's host and path prefix matched. Compare the request's host and path with the `[[routes]]` table of the config revision in the trace.",
    },
    /// A route matches the path, but not the method.
    RouteMethodNotAllowed => {
        code: "route.method_not_allowed", status: 405, title: "Method not allowed on this route",
        hint: "Use one of the methods listed in the Allow header.",
        description: "A route matched host and path, but its `methods` list does not contain the request's method. The response carries an `Allow` header.",
    },
    /// A policy rule explicitly denies the request.
    PolicyExplicitDeny => {
        code: "policy.explicit_deny", status: 403, title: "Denied by policy",
        hint: "This operation is not permitted through the gateway; ask the API's operators if you need it.",
        description: "A `[[policy.rules]]` entry matched route, method and path and denies the request. The trace names the rule id.",
    },
    /// Every target of the route's upstream is ejected or none is configured.
    UpstreamUnavailable => {
        code: "upstream.unavailable", status: 503, title: "Service temporarily unavailable",
        hint: "The service behind this route is down; retry later with backoff.",
        description: "Every target of the route's upstream is ejected by passive health checks (recent failures). Targets come back after `fail_timeout_ms`.",
    },
    /// Connecting to the chosen upstream target failed.
    UpstreamConnectFailed => {
        code: "upstream.connect_failed", status: 502, title: "Bad gateway",
        hint: "The service behind this route could not be reached; retry later.",
        description: "The TCP connection to the upstream target failed (refused, reset or unreachable). The target is ejected after `max_fails` consecutive failures.",
    },
    /// The upstream did not answer in time.
    UpstreamTimeout => {
        code: "upstream.timeout", status: 504, title: "Gateway timeout",
        hint: "The service behind this route did not answer in time; retry later or with a smaller request.",
        description: "Connecting took longer than `connect_timeout_ms` or the response head took longer than `request_timeout_ms`.",
    },
    /// The upstream answered with something that is not valid HTTP.
    UpstreamBadResponse => {
        code: "upstream.bad_response", status: 502, title: "Bad gateway",
        hint: "The service behind this route sent an invalid response; retry later.",
        description: "The upstream target closed the connection or sent a malformed HTTP response before a complete response head.",
    },
    /// No credentials were presented to an endpoint that needs them.
    AuthnCredentialsMissing => {
        code: "authn.credentials_missing", status: 401, title: "Credentials required",
        hint: "Send an API key as `Authorization: Bearer <key>` or `X-API-Key: <key>`.",
        description: "The request carried none of the accepted credential headers.",
    },
    /// The presented key is not known.
    AuthnKeyUnknown => {
        code: "authn.key_unknown", status: 401, title: "Unknown API key",
        hint: "Check that the key was copied whole and has not been deleted.",
        description: "The key's id is not in the store, or its secret does not match the stored hash.",
    },
    /// The presented key is not shaped like a Pinpoint key.
    AuthnKeyMalformed => {
        code: "authn.key_malformed", status: 401, title: "Malformed API key",
        hint: "Pinpoint keys look like `pp_<16 hex>_<43 characters>`; check for truncation or extra characters.",
        description: "The credential does not parse as a Pinpoint API key.",
    },
    /// The requested API resource does not exist.
    ApiNotFound => {
        code: "api.not_found", status: 404, title: "Not found",
        hint: "Check the identifier; decisions are kept for the store's retention period.",
        description: "The API path or the resource it names (for example a request id with no recorded decision) does not exist.",
    },
    /// The store could not answer.
    ApiStoreUnavailable => {
        code: "api.store_unavailable", status: 503, title: "Store unavailable",
        hint: "Retry shortly.",
        description: "A store query failed (database closed, locked or unreachable). The operator log has the underlying error.",
    },
}

impl Reason {
    /// The stable `layer.reason` code.
    pub fn code(self) -> &'static str {
        self.info().code
    }

    /// The layer part of the code.
    pub fn layer(self) -> &'static str {
        self.info().layer
    }

    /// HTTP status for this reason.
    pub fn status(self) -> u16 {
        self.info().status
    }

    /// Looks a reason up by its code.
    pub fn from_code(code: &str) -> Option<Reason> {
        Reason::ALL.iter().copied().find(|r| r.code() == code)
    }

    /// The fragment (`#...`) that names this reason's entry in docs/reasons.md.
    pub fn anchor(self) -> &'static str {
        self.code()
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

impl Serialize for Reason {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.code())
    }
}

impl<'de> Deserialize<'de> for Reason {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let code = String::deserialize(d)?;
        Reason::from_code(&code).ok_or_else(|| serde::de::Error::custom(format!("unknown reason code `{code}`")))
    }
}

/// Renders the catalogue as the Markdown page `docs/reasons.md`.
pub fn render_markdown() -> String {
    let mut out = String::from(
        "# Pinpoint reason codes\n\n\
         <!-- Generated from crates/pinpoint-core/src/reason.rs by `pinpoint reasons --markdown`. Do not edit. -->\n\n\
         Every response Pinpoint generates itself (a denial, a missing route, a dead upstream) carries one\n\
         of these codes in the `reason` field of its problem body and in the decision trace.\n\n\
         | code | status | title |\n|---|---|---|\n",
    );
    for reason in Reason::ALL {
        let i = reason.info();
        out.push_str(&format!(
            "| [`{}`](#{}) | {} | {} |\n",
            i.code, i.code, i.status, i.title
        ));
    }
    for reason in Reason::ALL {
        let i = reason.info();
        out.push_str(&format!(
            "\n<a id=\"{code}\"></a>\n\n## {code}\n\n- **Status:** {status}\n- **Layer:** `{layer}`\n- **Title:** {title}\n- **Hint (sent to the caller):** {hint}\n\n{desc}\n",
            code = i.code,
            status = i.status,
            layer = i.layer,
            title = i.title,
            hint = i.hint,
            desc = i.description,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docs_page_is_rendered_from_the_catalogue() {
        let on_disk = include_str!("../../../docs/reasons.md");
        assert_eq!(
            on_disk,
            render_markdown(),
            "docs/reasons.md is stale: run `cargo run -- reasons --markdown > docs/reasons.md`"
        );
    }

    #[test]
    fn codes_are_unique_well_formed_and_round_trip() {
        let mut seen = std::collections::HashSet::new();
        for r in Reason::ALL {
            assert!(seen.insert(r.code()), "duplicate code {}", r.code());
            let (layer, rest) = r.code().split_once('.').expect("layer.reason");
            assert_eq!(layer, r.layer());
            assert!(!rest.is_empty() && rest.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
            assert_eq!(Reason::from_code(r.code()), Some(*r));
            let json = serde_json::to_string(r).unwrap();
            assert_eq!(serde_json::from_str::<Reason>(&json).unwrap(), *r);
            assert!((400..600).contains(&r.status()));
        }
    }

    #[test]
    fn forbidden_is_only_for_policy_decisions() {
        for r in Reason::ALL {
            if r.status() == 403 {
                assert!(
                    matches!(r.layer(), "policy" | "authz" | "authn" | "net" | "cloudauth"),
                    "{r}"
                );
            }
        }
    }
}
