//! The authorization layer: explicit deny rules first, then tenant isolation, then the
//! permission the route needs for the method (implicit deny when no role grants it; a
//! method the route's permission map leaves out is refused outright), the
//! key's scopes, and resource ownership. Effective permissions are precomputed per
//! principal in the directory, so each check is a hash-set lookup.
//! Codes: `authz.method_not_permitted`, `.explicit_deny`, `.tenant_mismatch`, `.permission_missing`,
//! `.scope_missing`, `.not_owner` (403).

use pinpoint_core::config::{method_listed, DenyRule};
use pinpoint_core::{Denial, Outcome, Reason};

use crate::identity::{Identity, PermissionCheck};
use crate::pipeline::{Check, Filter, RequestCtx};
use crate::routes::{MethodRequirement, RouteAccess};

pub struct AuthzFilter {
    deny: Vec<DenyRule>,
}

impl AuthzFilter {
    pub fn new(deny: Vec<DenyRule>) -> Self {
        AuthzFilter { deny }
    }

    fn explicit_deny(&self, ctx: &RequestCtx<'_>, identity: &Identity) -> Option<&DenyRule> {
        let principal_id = identity.principal_id();
        let roles = identity.principal.as_ref().map(|p| &p.roles[..]).unwrap_or(&[]);
        let route_id = ctx.route_id.as_deref();
        self.deny.iter().find(|rule| {
            rule.principals
                .as_ref()
                .is_none_or(|ids| principal_id.is_some_and(|p| ids.iter().any(|i| i == p)))
                && rule
                    .roles
                    .as_ref()
                    .is_none_or(|names| roles.iter().any(|r| names.contains(r)))
                && rule
                    .orgs
                    .as_ref()
                    .is_none_or(|orgs| orgs.iter().any(|o| *o == identity.org_id()))
                && rule
                    .routes
                    .as_ref()
                    .is_none_or(|ids| route_id.is_some_and(|r| ids.iter().any(|i| i == r)))
                && rule.methods.as_ref().is_none_or(|m| method_listed(m, ctx.method))
                && rule.path_prefix.as_ref().is_none_or(|p| ctx.path_under(p))
        })
    }

    fn decide(&self, ctx: &RequestCtx<'_>) -> Outcome {
        let Some(access) = &ctx.access else {
            return Outcome::NotApplicable;
        };
        let requirement = access.requirement_for(ctx.method);
        let Some(identity) = ctx.identity.as_ref() else {
            // Anonymous (auth optional, or authn in report mode): only rules without
            // requirements pass.
            return match requirement {
                MethodRequirement::Nothing => Outcome::NotApplicable,
                MethodRequirement::NotPermitted => method_not_permitted(ctx, access),
                MethodRequirement::Permission(p) => Outcome::Deny(
                    Denial::new(
                        Reason::AuthzPermissionMissing,
                        format!("This operation needs the permission `{p}`."),
                    )
                    .rule(p.to_string())
                    .note("anonymous caller"),
                ),
            };
        };
        if let Some(rule) = self.explicit_deny(ctx, identity) {
            let mut denial =
                Denial::new(Reason::AuthzExplicitDeny, "An access rule denies this operation.").rule(rule.id.clone());
            if let Some(d) = &rule.description {
                denial = denial.note(d.clone());
            }
            return Outcome::Deny(denial);
        }
        if let Some(org) = &access.org {
            if *org != identity.org_id() && !identity.is_platform_admin() {
                return Outcome::Deny(
                    Denial::new(
                        Reason::AuthzTenantMismatch,
                        "This route is not available to your organization.",
                    )
                    // The decision is readable by the caller's organization: its note
                    // names nothing of the route's; platform admins also read whose it is.
                    .note(format!(
                        "the route belongs to another organization than the caller's ({})",
                        identity.org_id()
                    ))
                    .platform_note(format!("the route belongs to organization {org}")),
                );
            }
        }
        let permission = match requirement {
            MethodRequirement::Nothing => None,
            MethodRequirement::Permission(p) => Some(p),
            MethodRequirement::NotPermitted => return method_not_permitted(ctx, access),
        };
        if let Some(p) = permission {
            match identity.check(p) {
                PermissionCheck::Granted => {}
                PermissionCheck::Missing => {
                    return Outcome::Deny(
                        Denial::new(
                            Reason::AuthzPermissionMissing,
                            format!("This operation needs the permission `{p}`."),
                        )
                        .rule(p.to_string())
                        .note(format!(
                            "roles held: {}",
                            identity
                                .principal
                                .as_ref()
                                .map(|e| e.roles.join(", "))
                                .unwrap_or_else(|| "none (organization key)".into())
                        )),
                    )
                }
                PermissionCheck::OutOfScope => {
                    return Outcome::Deny(
                        Denial::new(
                            Reason::AuthzScopeMissing,
                            format!("The API key's scopes do not include `{p}`."),
                        )
                        .rule(p.to_string()),
                    )
                }
            }
        }
        if let Some(owner) = access.owner_in(ctx.path) {
            let is_caller = match (owner, identity.principal_id()) {
                (Some(owner), Some(me)) if ctx.fold_case => owner.eq_ignore_ascii_case(me),
                (Some(owner), Some(me)) => owner == me,
                _ => false,
            };
            if !is_caller {
                return Outcome::Deny(
                    Denial::new(Reason::AuthzNotOwner, "You can act only on your own resources here.")
                        .rule(format!("owner_segment {}", access.owner_segment.unwrap_or(0)))
                        .note(format!(
                            "path names {:?}, caller is {:?}",
                            owner,
                            identity.principal_id()
                        )),
                );
            }
        }
        Outcome::Allow {
            rule_id: permission.cloned(),
        }
    }
}

/// The refusal of a method the route's permission map leaves out.
fn method_not_permitted(ctx: &RequestCtx<'_>, access: &RouteAccess) -> Outcome {
    let named: Vec<&str> = access
        .permissions
        .iter()
        .filter_map(|(m, _)| m.as_ref().map(|m| m.as_str()))
        .collect();
    Outcome::Deny(
        Denial::new(
            Reason::AuthzMethodNotPermitted,
            format!("{} is not permitted on this route.", ctx.method),
        )
        .rule(format!("method {}", ctx.method))
        .note(format!("the route's permissions name only {}", named.join(", "))),
    )
}

impl Filter for AuthzFilter {
    fn name(&self) -> &'static str {
        "authz"
    }

    fn check<'a>(&'a self, ctx: &'a mut RequestCtx<'_>) -> Check<'a> {
        Check::Ready(self.decide(ctx))
    }
}
