//! The CORS layer: answers preflights (`OPTIONS` with `Origin` and
//! `Access-Control-Request-Method`) before authentication, and marks allowed origins so
//! every response, denials included, carries `Access-Control-Allow-Origin` and a browser
//! can read the problem body. Code: `cors.origin_not_allowed` (403, preflight only).

use http::{HeaderValue, Method};
use pinpoint_core::config::CorsConfig;
use pinpoint_core::{Denial, Outcome, Reason};
use std::sync::Arc;

use crate::pipeline::{Check, Filter, RequestCtx};

pub struct CorsFilter {
    config: CorsConfig,
    allow_methods: HeaderValue,
    allow_headers: HeaderValue,
    max_age: HeaderValue,
}

/// Response headers a browser may read on any Pinpoint response.
pub const EXPOSED_HEADERS: &str = "x-request-id, x-pinpoint-reason, retry-after, ratelimit, ratelimit-policy, x-ratelimit-limit, x-ratelimit-remaining, x-ratelimit-reset, www-authenticate";

impl CorsFilter {
    pub fn new(config: CorsConfig) -> Self {
        let value = |s: String| HeaderValue::from_str(&s).unwrap_or_else(|_| HeaderValue::from_static(""));
        CorsFilter {
            allow_methods: value(config.allowed_methods.join(", ")),
            allow_headers: value(config.allowed_headers.join(", ")),
            max_age: value(config.max_age_seconds.to_string()),
            config,
        }
    }

    fn allows(&self, origin: &str) -> bool {
        self.config
            .allowed_origins
            .iter()
            .any(|o| o == "*" || o.eq_ignore_ascii_case(origin))
    }
}

impl Filter for CorsFilter {
    fn name(&self) -> &'static str {
        "cors"
    }

    fn check<'a>(&'a self, ctx: &'a mut RequestCtx<'_>) -> Check<'a> {
        if self.config.allowed_origins.is_empty() {
            return Check::Ready(Outcome::NotApplicable);
        }
        let Some(origin) = ctx.headers.get(http::header::ORIGIN).cloned() else {
            return Check::Ready(Outcome::NotApplicable);
        };
        let preflight =
            ctx.method == Method::OPTIONS && ctx.headers.contains_key(http::header::ACCESS_CONTROL_REQUEST_METHOD);
        let allowed = origin.to_str().is_ok_and(|o| self.allows(o));
        if !allowed {
            return Check::Ready(if preflight {
                Outcome::Deny(
                    Denial::new(
                        Reason::CorsOriginNotAllowed,
                        "Cross-origin requests from this origin are not accepted.",
                    )
                    // The operator sees exactly which origin was refused.
                    .note(format!(
                        "Origin {:?}",
                        String::from_utf8_lossy(origin.as_bytes())
                            .chars()
                            .take(200)
                            .collect::<String>()
                    )),
                )
            } else {
                // The browser enforces the missing Allow-Origin header; the request itself is not refused.
                Outcome::NotApplicable
            });
        }
        let headers = &mut ctx.response_headers;
        headers.push((http::header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone()));
        headers.push((http::header::VARY, HeaderValue::from_static("origin")));
        headers.push((
            http::header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(EXPOSED_HEADERS),
        ));
        if self.config.allow_credentials {
            headers.push((
                http::header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            ));
        }
        ctx.cors_origin = Some(origin);
        if preflight {
            ctx.response_headers.extend([
                (http::header::ACCESS_CONTROL_ALLOW_METHODS, self.allow_methods.clone()),
                (http::header::ACCESS_CONTROL_ALLOW_HEADERS, self.allow_headers.clone()),
                (http::header::ACCESS_CONTROL_MAX_AGE, self.max_age.clone()),
            ]);
            ctx.answered = true;
            return Check::Ready(Outcome::Allow {
                rule_id: Some(Arc::<str>::from("preflight")),
            });
        }
        Check::Ready(Outcome::allow())
    }
}
