//! `[authz]`: the authorization filter's mode and its explicit deny rules (which win over
//! every grant).

use std::collections::HashSet;

use serde::Deserialize;
use toml_edit::Item;

use super::diagnostics::{entry, place, Diagnostics};
use super::names::{de_methods, is_identifier, validate_prefix};
use crate::verdict::Mode;

/// `[authz]`: the mode and the explicit deny rules.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuthzConfig {
    pub mode: Mode,
    pub deny: Vec<DenyRule>,
}

/// `[[authz.deny]]`: refuses matching callers even when a role grants the permission.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DenyRule {
    pub id: String,
    /// Role names; the rule applies to callers holding any of them.
    pub roles: Option<Vec<String>>,
    /// Principal ids.
    pub principals: Option<Vec<String>>,
    /// Organization ids.
    pub orgs: Option<Vec<String>>,
    pub routes: Option<Vec<String>>,
    #[serde(default, deserialize_with = "de_methods")]
    pub methods: Option<Vec<http::Method>>,
    pub path_prefix: Option<String>,
    pub description: Option<String>,
}

pub(super) fn read(item: &Item, d: &mut Diagnostics, route_ids: &HashSet<String>) -> AuthzConfig {
    let mode = d.read_mode(item, "deny");
    let mut deny = Vec::new();
    let mut ids = HashSet::new();
    let list = item.get("deny");
    for rule_item in (0..).map_while(|i| list.and_then(|l| entry(l, i))) {
        let Some(mut rule) = d.read::<DenyRule>(rule_item) else {
            continue;
        };
        let at = |field: &str| place(&[rule_item.get(field), Some(rule_item)]);
        if !is_identifier(&rule.id) || !ids.insert(rule.id.clone()) {
            d.error(
                at("id"),
                format!("authz deny rule id `{}` must be a unique identifier", rule.id),
            );
        }
        let refs = rule_item.get("routes");
        for (i, route_ref) in rule.routes.iter().flatten().enumerate() {
            if !route_ids.contains(route_ref) {
                d.error(
                    place(&[refs.and_then(|r| entry(r, i)), refs, Some(rule_item)]),
                    format!(
                        "authz deny rule `{}` names route `{route_ref}`, which is not defined",
                        rule.id
                    ),
                );
            }
        }
        if let Some(p) = &rule.path_prefix {
            match validate_prefix(p) {
                Ok(p) => rule.path_prefix = Some(p),
                Err(m) => d.error(at("path_prefix"), format!("authz deny rule `{}`: {m}", rule.id)),
            }
        }
        deny.push(rule);
    }
    AuthzConfig { mode, deny }
}
