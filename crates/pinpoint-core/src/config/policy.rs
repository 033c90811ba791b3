//! `[policy]`: the static policy filter's mode and its explicit deny rules.

use std::collections::HashSet;

use serde::Deserialize;
use toml::Spanned;
use toml_edit::Item;

use super::diagnostics::{entry, Diagnostics};
use super::names::{is_identifier, read_methods, validate_prefix};
use crate::verdict::Mode;

/// `[policy]`: the static policy layer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PolicyConfig {
    pub mode: Mode,
    pub rules: Vec<PolicyRule>,
}

/// `[[policy.rules]]`: an explicit deny rule. Every given condition must match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyRule {
    pub id: String,
    /// Route ids; `None` means every route.
    pub routes: Option<Vec<String>>,
    pub methods: Option<Vec<http::Method>>,
    pub path_prefix: Option<String>,
    /// Operator-side description, shown by `pinpoint explain`.
    pub description: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    id: Spanned<String>,
    routes: Option<Vec<Spanned<String>>>,
    methods: Option<Vec<Spanned<String>>>,
    path_prefix: Option<Spanned<String>>,
    description: Option<String>,
}

pub(super) fn read(item: &Item, d: &mut Diagnostics, route_ids: &HashSet<String>) -> PolicyConfig {
    let mode = d.read_mode(item, "rules");
    let mut rules = Vec::new();
    let mut ids = HashSet::new();
    let list = item.get("rules");
    for rule_item in (0..).map_while(|i| list.and_then(|l| entry(l, i))) {
        let Some(r) = d.read::<RawRule>(rule_item) else {
            continue;
        };
        let id = r.id.get_ref().clone();
        if !is_identifier(&id) {
            d.error(
                Some(r.id.span()),
                format!("rule id `{id}` must use only letters, digits, `-` and `_`"),
            );
        }
        if !ids.insert(id.clone()) {
            d.error(Some(r.id.span()), format!("rule id `{id}` is used twice"));
        }
        for route_ref in r.routes.iter().flatten() {
            if !route_ids.contains(route_ref.get_ref()) {
                d.error(
                    Some(route_ref.span()),
                    format!(
                        "rule `{id}` names route `{}`, which is not defined",
                        route_ref.get_ref()
                    ),
                );
            }
        }
        let path_prefix = r.path_prefix.as_ref().and_then(|p| {
            validate_prefix(p.get_ref())
                .map_err(|m| d.error(Some(p.span()), m))
                .ok()
        });
        rules.push(PolicyRule {
            id,
            routes: r
                .routes
                .as_ref()
                .map(|v| v.iter().map(|s| s.get_ref().clone()).collect()),
            methods: read_methods(&r.methods, d),
            path_prefix,
            description: r.description,
        });
    }
    PolicyConfig { mode, rules }
}
