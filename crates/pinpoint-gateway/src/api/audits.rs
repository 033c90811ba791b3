//! `GET /api/v2/audits` (and `pinpoint audit`): what in the directory and the config is
//! likely to cause, or to hide, the wrong answer. Each finding names its kind, its subject
//! and what to do:
//!
//! - `key_unused`: a live key not used for `unused_days` (default 90; never used counts
//!   from its creation);
//! - `key_without_expiry`: a live key that never expires;
//! - `key_holds_everything`, `role_holds_everything`: a key scoped to, or a role granting,
//!   `*`;
//! - `permission_unused`: a permission a principal holds through its roles and has not
//!   used in the last `unused_days`, as far back as the decision rollups reach for its
//!   organization (they count every request, sampled or not, with the permission
//!   authorization granted it); only principals older than that span, only when it is at
//!   least a day, and never `platform:admin` (checked outside authorization);
//! - `suspended_principal_with_live_keys`: a suspended principal (or organization) whose
//!   keys are not revoked (they are refused, and would work again on reinstatement);
//! - `unauthenticated_write_route`: a route that accepts POST, PUT, PATCH or DELETE from
//!   anonymous callers (config);
//! - `layer_in_report_mode`: a layer, or a route's WAF, that only reports (config);
//! - `mapping_for_unregistered_account`: a cloud-auth mapping whose AWS account is not
//!   registered for its organization (the API refuses to make one and removing an account
//!   removes its mappings, so this finds what came another way: an older version, the
//!   store written directly).
//!
//! Tenant-scoped: a caller sees the findings of its own organization's keys, roles and
//! principals; the config's findings, which span every tenant, are for platform
//! administrators.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::{Extension, Json};
use pinpoint_core::config::{AuthRequirement, Config, RouteWaf};
use pinpoint_core::identity::{grants, ApiKey, ALL_PERMISSIONS, PLATFORM_ADMIN};
use pinpoint_core::{Mode, Reason};
use pinpoint_store::prelude::*;
use pinpoint_store::rollups;

use super::{deny, envelope, ApiResult, Caller};
use crate::runtime::Shared;

/// One finding.
#[derive(Debug, serde::Serialize)]
pub struct Finding {
    pub kind: &'static str,
    /// What it is about: `key`, `role`, `principal`, `organization`, `route`, `layer`.
    pub subject: &'static str,
    pub id: String,
    pub name: String,
    /// The organization it belongs to (none for the config's findings).
    pub org_id: Option<String>,
    pub detail: String,
}

pub async fn audits(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Json<serde_json::Value>> {
    if let Some(unknown) = query.keys().find(|k| k.as_str() != "unused_days") {
        return Err(deny(
            Reason::ApiBadRequest,
            format!("Unknown query parameter `{unknown}`; it takes `unused_days`."),
        ));
    }
    let unused_days = match query.get("unused_days") {
        None => 90,
        Some(days) => days
            .parse::<i64>()
            .ok()
            .filter(|d| (0..=3650).contains(d))
            .ok_or_else(|| {
                deny(
                    Reason::ApiBadRequest,
                    format!("`unused_days` is a whole number of days, 0 to 3650, not `{days}`."),
                )
            })?,
    };
    let now = pinpoint_store::now_ms();
    let store = &shared.store;
    let orgs = store.orgs().await?;
    let mut findings = directory_findings(
        &store.all_keys().await?.into_iter().map(|k| k.info).collect::<Vec<_>>(),
        &store.all_principals().await?,
        &store.roles(None).await?,
        &orgs,
        now,
        unused_days,
    );
    for org in &orgs {
        let accounts = store.aws_accounts(&org.id).await?;
        for kind in ["persona", "intake"] {
            for mapping in store.mappings(&org.id, kind).await? {
                let account = pinpoint_cloudauth::arn::Pattern::parse(&mapping.arn_pattern).map(|p| p.account);
                if account.as_ref().is_ok_and(|a| !accounts.contains(a)) {
                    findings.push(Finding {
                        kind: "mapping_for_unregistered_account",
                        subject: "mapping",
                        id: mapping.id.clone(),
                        name: mapping.arn_pattern.clone(),
                        org_id: Some(org.id.clone()),
                        detail: format!(
                            "a {kind} mapping for AWS account {}, which is not registered: it matches no login; delete it or register the account",
                            account.unwrap_or_default()
                        ),
                    });
                }
            }
        }
    }
    let (covered_from, used) = rollups::permissions_used(store, now - unused_days * DAY_MS).await?;
    findings.extend(unused_permission_findings(
        &store.all_principals().await?,
        &store.all_assignments().await?,
        &used,
        &covered_from,
        now,
    ));
    let platform = caller.0.is_platform_admin();
    if platform {
        findings.extend(config_findings(&shared.runtime.load().config));
    } else {
        findings.retain(|f| f.org_id.as_deref() == Some(caller.0.org_id()));
    }
    Ok(envelope(serde_json::json!({
        "type": "audit",
        "attributes": { "unused_days": unused_days, "findings": findings },
    })))
}

/// The directory's findings.
pub fn directory_findings(
    keys: &[ApiKey],
    principals: &[pinpoint_core::identity::Principal],
    roles: &[pinpoint_core::identity::Role],
    orgs: &[pinpoint_core::identity::Organization],
    now_ms: i64,
    unused_days: i64,
) -> Vec<Finding> {
    let mut findings = Vec::new();
    let live = |k: &&ApiKey| !k.revoked && k.expires_at_ms.is_none_or(|at| at > now_ms);
    let key_finding = |key: &ApiKey, kind: &'static str, detail: String| Finding {
        kind,
        subject: "key",
        id: key.id.clone(),
        name: key.name.clone(),
        org_id: Some(key.org_id.clone()),
        detail,
    };
    let horizon = now_ms - unused_days * 86_400_000;
    for key in keys.iter().filter(live) {
        let last = key.last_used_at_ms.unwrap_or(key.created_at_ms);
        if last <= horizon {
            let since = if key.last_used_at_ms.is_some() {
                "last used"
            } else {
                "created, never used,"
            };
            findings.push(key_finding(
                key,
                "key_unused",
                format!(
                    "{since} {} days ago; revoke it if nothing needs it",
                    (now_ms - last) / 86_400_000
                ),
            ));
        }
        if key.expires_at_ms.is_none() {
            findings.push(key_finding(
                key,
                "key_without_expiry",
                "never expires; give it an expiry or rotate it on a schedule".into(),
            ));
        }
        if key
            .scopes
            .as_ref()
            .is_some_and(|s| s.iter().any(|p| p == ALL_PERMISSIONS))
        {
            findings.push(key_finding(
                key,
                "key_holds_everything",
                "scoped to `*`: it may do whatever its owner may; scope it to what it is for".into(),
            ));
        }
    }
    for role in roles {
        if role.permissions.iter().any(|p| p == ALL_PERMISSIONS) {
            findings.push(Finding {
                kind: "role_holds_everything",
                subject: "role",
                id: role.id.clone(),
                name: role.name.clone(),
                org_id: Some(role.org_id.clone()),
                detail: "grants `*`: every permission, present and future".into(),
            });
        }
    }
    let live_keys_of = |owner: &dyn Fn(&ApiKey) -> bool| keys.iter().filter(live).filter(|k| owner(k)).count();
    for principal in principals.iter().filter(|p| p.suspended) {
        let count = live_keys_of(&|k| k.principal_id.as_deref() == Some(principal.id.as_str()));
        if count > 0 {
            findings.push(Finding {
                kind: "suspended_principal_with_live_keys",
                subject: "principal",
                id: principal.id.clone(),
                name: principal.name.clone(),
                org_id: Some(principal.org_id.clone()),
                detail: format!("suspended, with {count} keys not revoked: they work again if it is reinstated"),
            });
        }
    }
    for org in orgs.iter().filter(|o| o.suspended) {
        let count = live_keys_of(&|k| k.org_id == org.id);
        if count > 0 {
            findings.push(Finding {
                kind: "suspended_principal_with_live_keys",
                subject: "organization",
                id: org.id.clone(),
                name: org.name.clone(),
                org_id: Some(org.id.clone()),
                detail: format!("suspended, with {count} keys not revoked: they work again if it is reinstated"),
            });
        }
    }
    findings
}

const DAY_MS: i64 = 86_400_000;

/// Permissions held through roles and not used (`used`: the (principal, permission) pairs
/// authorization granted) since their organization's counts began (`covered_from`), when
/// that is at least a day back and the principal is older. A grant is used when it
/// covers a permission used (`orders:*` is used by `orders:read`). `platform:admin` is
/// checked by the API handlers, not by authorization, so its use is not counted: never
/// reported.
pub fn unused_permission_findings(
    principals: &[pinpoint_core::identity::Principal],
    assignments: &[(String, pinpoint_core::identity::Role)],
    used: &[(String, String)],
    covered_from: &HashMap<String, i64>,
    now_ms: i64,
) -> Vec<Finding> {
    let mut used_by: HashMap<&str, Vec<&str>> = HashMap::new();
    for (principal, permission) in used {
        used_by.entry(principal).or_default().push(permission);
    }
    let mut findings = Vec::new();
    for principal in principals.iter().filter(|p| !p.suspended) {
        let Some(&from_ms) = covered_from
            .get(&principal.org_id)
            .filter(|from| now_ms - **from >= DAY_MS && principal.created_at_ms <= **from)
        else {
            continue;
        };
        let days = (now_ms - from_ms) / DAY_MS;
        // Each permission held, with the roles that grant it, in a stable order.
        let mut held: std::collections::BTreeMap<&str, Vec<&str>> = std::collections::BTreeMap::new();
        for (_, role) in assignments.iter().filter(|(holder, _)| *holder == principal.id) {
            for permission in role.permissions.iter().filter(|p| *p != PLATFORM_ADMIN) {
                held.entry(permission).or_default().push(&role.name);
            }
        }
        let used = used_by.get(principal.id.as_str()).map_or(&[][..], Vec::as_slice);
        for (grant, roles) in held {
            let granted = std::collections::HashSet::from([grant.to_owned()]);
            if used.iter().any(|permission| grants(&granted, permission)) {
                continue;
            }
            findings.push(Finding {
                kind: "permission_unused",
                subject: "principal",
                id: principal.id.clone(),
                name: principal.name.clone(),
                org_id: Some(principal.org_id.clone()),
                detail: format!(
                    "holds `{grant}` (role {}) and has not used it in the {days} days the decision log covers; remove the role or grant a narrower one",
                    roles.iter().map(|r| format!("`{r}`")).collect::<Vec<_>>().join(", ")
                ),
            });
        }
    }
    findings
}

/// The config's findings.
pub fn config_findings(config: &Config) -> Vec<Finding> {
    let mut findings = Vec::new();
    let writes = [
        http::Method::POST,
        http::Method::PUT,
        http::Method::PATCH,
        http::Method::DELETE,
    ];
    for route in &config.routes {
        let anonymous = route.auth != AuthRequirement::Required && route.permissions.is_empty();
        let accepted: Vec<&str> = writes
            .iter()
            .filter(|m| route.methods.as_ref().is_none_or(|list| list.contains(m)))
            .map(http::Method::as_str)
            .collect();
        if anonymous && !accepted.is_empty() {
            findings.push(Finding {
                kind: "unauthenticated_write_route",
                subject: "route",
                id: route.id.clone(),
                name: route.path_prefix.clone(),
                org_id: None,
                detail: format!(
                    "accepts {} from anonymous callers; set `auth = \"required\"` or `permissions`, or limit `methods`",
                    accepted.join(", ")
                ),
            });
        }
        if route.waf == RouteWaf::Report {
            findings.push(Finding {
                kind: "layer_in_report_mode",
                subject: "route",
                id: route.id.clone(),
                name: route.path_prefix.clone(),
                org_id: None,
                detail: "the WAF only reports on this route (`waf = \"report\"`): nothing is refused".into(),
            });
        }
    }
    let layers = [
        ("cors", config.cors.mode),
        ("net", config.net.mode),
        ("authn", config.authn.mode),
        ("authz", config.authz.mode),
        ("csrf", config.csrf.mode),
        ("waf", config.waf.mode),
        ("policy", config.policy.mode),
        ("rate", config.rate.mode),
    ];
    for (layer, mode) in layers {
        if mode == Mode::Report {
            findings.push(Finding {
                kind: "layer_in_report_mode",
                subject: "layer",
                id: layer.to_owned(),
                name: format!("[{layer}]"),
                org_id: None,
                detail: format!("[{layer}] mode = \"report\": its denials are traced, never enforced"),
            });
        }
    }
    findings
}

/// The most keys one `who-can` evaluates (each is a pipeline run on the api thread).
const WHO_CAN_MOST_KEYS: usize = 10_000;

/// `GET /api/v2/who-can?method=POST&path=/orders[&host=..][&from=IP]`: every live key (of
/// the caller's organization; every organization's for platform administrators) with
/// what the proxy would decide if it were presented for that request, evaluated by the
/// same edge and pipeline over the current config and directory; and whether an anonymous
/// caller would pass. Allowed keys come first.
pub async fn who_can(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Json<serde_json::Value>> {
    const KNOWN: [&str; 4] = ["method", "path", "host", "from"];
    let bad = |detail: String| deny(Reason::ApiBadRequest, detail);
    if let Some(unknown) = query.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(bad(format!(
            "Unknown query parameter `{unknown}`; it takes {}.",
            KNOWN.join(", ")
        )));
    }
    let method = query
        .get("method")
        .and_then(|m| http::Method::from_bytes(m.as_bytes()).ok())
        .ok_or_else(|| bad("`method` names the request's method, e.g. `POST`.".into()))?;
    let uri: http::Uri = query
        .get("path")
        .filter(|p| p.starts_with('/'))
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| bad("`path` is the request's path, starting with `/`.".into()))?;
    let host = query.get("host").map_or("localhost", String::as_str);
    let peer_ip: std::net::IpAddr = match query.get("from") {
        None => std::net::IpAddr::from([127, 0, 0, 1]),
        Some(ip) => ip
            .parse()
            .map_err(|_| bad(format!("`from` is an IP address, not `{ip}`.")))?,
    };
    let request = crate::evaluate::WhoCanRequest {
        method: &method,
        uri: &uri,
        host,
        peer: std::net::SocketAddr::new(peer_ip, 40_000),
    };
    let now = pinpoint_store::now_ms();
    let platform = caller.0.is_platform_admin();
    let keys: Vec<ApiKey> = shared
        .store
        .all_keys()
        .await?
        .into_iter()
        .map(|k| k.info)
        .filter(|k| !k.revoked && k.expires_at_ms.is_none_or(|at| at > now))
        .filter(|k| platform || k.org_id == caller.0.org_id())
        .take(WHO_CAN_MOST_KEYS + 1)
        .collect();
    let truncated = keys.len() > WHO_CAN_MOST_KEYS;
    let keys = &keys[..keys.len().min(WHO_CAN_MOST_KEYS)];
    let names: HashMap<String, String> = shared
        .store
        .all_principals()
        .await?
        .into_iter()
        .map(|p| (p.id, p.name))
        .collect();
    let config = shared.runtime.load().config.clone();
    let identities = shared.services.identities();
    let ids: Vec<String> = keys.iter().map(|k| k.id.clone()).collect();
    let answer = crate::evaluate::who_can(config, identities, now, &request, &ids);
    let mut answers: Vec<serde_json::Value> = keys
        .iter()
        .zip(&answer.keys)
        .map(|(key, evaluation)| {
            serde_json::json!({
                "key_id": key.id,
                "key_name": key.name,
                "kind": key.kind,
                "org_id": key.org_id,
                "principal_id": key.principal_id,
                "principal": key.principal_id.as_ref().and_then(|id| names.get(id)),
                "allowed": evaluation.reason.is_none(),
                "reason": evaluation.reason.map(|r| r.code()),
            })
        })
        .collect();
    answers.sort_by_key(|a| (a["allowed"] != true, a["key_id"].as_str().unwrap_or("").to_owned()));
    Ok(envelope(serde_json::json!({
        "type": "who_can",
        "attributes": {
            "method": method.as_str(),
            "path": uri.to_string(),
            "anonymous_allowed": answer.anonymous.reason.is_none(),
            "anonymous_reason": answer.anonymous.reason.map(|r| r.code()),
            "keys": answers,
            "truncated": truncated,
        },
    })))
}
