//! The static policy layer: explicit deny rules from `[[policy.rules]]`, matched on
//! route, method (a rule naming GET covers HEAD) and path prefix, on the canonical request. Code: `policy.explicit_deny` (403). The rule id and
//! its description go to the operator's trace only.

use pinpoint_core::config::PolicyRule;
use pinpoint_core::{Denial, Outcome, Reason};

use pinpoint_core::config::method_listed;

use crate::pipeline::{Check, Filter, RequestCtx};

pub struct PolicyFilter {
    rules: Vec<PolicyRule>,
}

impl PolicyFilter {
    pub fn new(rules: Vec<PolicyRule>) -> Self {
        PolicyFilter { rules }
    }

    fn matching_rule(&self, ctx: &RequestCtx<'_>) -> Option<&PolicyRule> {
        let route_id = ctx.route_id.as_deref();
        self.rules.iter().find(|rule| {
            rule.routes
                .as_ref()
                .is_none_or(|ids| route_id.is_some_and(|id| ids.iter().any(|r| r == id)))
                && rule.methods.as_ref().is_none_or(|m| method_listed(m, ctx.method))
                && rule.path_prefix.as_ref().is_none_or(|p| ctx.path_under(p))
        })
    }
}

impl Filter for PolicyFilter {
    fn name(&self) -> &'static str {
        "policy"
    }

    fn check<'a>(&'a self, ctx: &'a mut RequestCtx<'_>) -> Check<'a> {
        Check::Ready(match self.matching_rule(ctx) {
            Some(rule) => {
                let mut denial = Denial::new(
                    Reason::PolicyExplicitDeny,
                    format!("Policy does not permit {} on {}.", ctx.method, ctx.path),
                )
                .rule(rule.id.clone());
                if let Some(description) = &rule.description {
                    denial = denial.note(description.clone());
                }
                Outcome::Deny(denial)
            }
            None => Outcome::NotApplicable,
        })
    }
}
