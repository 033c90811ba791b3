//! `pinpoint explain`: fetches the stored decisions for a request id (Pinpoint's own, or
//! a client's `X-Request-Id`, which may name several, newest first) from the api
//! listener and prints, for each, the chain of layers, the deciding rule, the config
//! revision and the hint.

use anyhow::{bail, Context, Result};
use pinpoint_core::{Decision, Mark};

use crate::client::{ApiClient, ApiRefusal, ClientArgs};

pub async fn run(request_id: &str, client: &ClientArgs, json: bool) -> Result<()> {
    let resources = fetch_resources(request_id, client).await?;
    if json {
        let attributes: Vec<&serde_json::Value> = resources.iter().map(|r| &r["attributes"]).collect();
        match attributes.as_slice() {
            [one] => println!("{}", serde_json::to_string_pretty(one)?),
            several => println!("{}", serde_json::to_string_pretty(several)?),
        }
        return Ok(());
    }
    if resources.len() > 1 {
        println!(
            "{} requests were sent with the client request id {request_id}, newest first:\n",
            resources.len()
        );
    }
    for (i, resource) in resources.iter().enumerate() {
        let decision: Decision = serde_json::from_value(resource["attributes"].clone())
            .context("the API returned a decision this CLI cannot read")?;
        if i > 0 {
            println!();
        }
        print!("{}", render(&decision));
    }
    Ok(())
}

/// The decision resources stored under `request_id`, newest first, waiting for a decision
/// not written yet.
async fn fetch_resources(request_id: &str, client: &ClientArgs) -> Result<Vec<serde_json::Value>> {
    if !pinpoint_core::request_id::is_well_formed(request_id) {
        bail!("`{request_id}` is not a request id (1 to 128 of A-Z a-z 0-9 - _ . : @)");
    }
    let api = ApiClient::new(client)?;
    let path = format!("/api/v2/decisions/{request_id}");
    // A request made a moment ago may not be written yet: the API says so; ask again.
    let mut attempts = 0;
    let body = loop {
        match api.call(reqwest::Method::GET, &path, None).await {
            Err(e)
                if attempts < 5
                    && e.downcast_ref::<ApiRefusal>()
                        .is_some_and(|r| r.reason == "api.decision_pending") =>
            {
                attempts += 1;
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            other => break other?,
        }
    };
    // One decision, or several when a client's id named more than one request.
    Ok(match &body["data"] {
        serde_json::Value::Array(list) => list.clone(),
        one => vec![one.clone()],
    })
}

/// The decisions stored under `request_id`, newest first.
pub async fn fetch(request_id: &str, client: &ClientArgs) -> Result<Vec<Decision>> {
    fetch_resources(request_id, client)
        .await?
        .into_iter()
        .map(|r| {
            serde_json::from_value(r["attributes"].clone()).context("the API returned a decision this CLI cannot read")
        })
        .collect()
}

/// The human-readable explanation of a decision.
pub fn render(d: &Decision) -> String {
    let mut out = String::new();
    let outcome = match d.reason {
        Some(r) => format!("{} {}", d.status, r.code()),
        None => format!("{} (proxied)", d.status),
    };
    out.push_str(&format!("request  {}\n", d.request_id));
    out.push_str(&format!("         {} {} -> {}\n", d.method, d.path, outcome));
    if let Some(raw) = &d.raw_path {
        out.push_str(&format!("         path as sent: {raw}\n"));
    }
    if let Some(client_id) = &d.client_request_id {
        out.push_str(&format!("         client request id: {client_id}\n"));
    }
    out.push_str(&format!(
        "at {}  client {}  route {}  config {}\n",
        pinpoint_core::time::rfc3339(d.at_ms),
        d.client_addr,
        d.route.as_deref().unwrap_or("-"),
        d.config_revision
    ));
    if let Some(p) = &d.principal {
        // The credential is what the authn entry names (`key <id>`, `token <jti>`).
        let credential = d
            .trace
            .iter()
            .find(|t| t.layer == "authn")
            .and_then(|t| t.rule_id.as_deref());
        match credential {
            Some(c) => out.push_str(&format!("principal {p} via {c}\n")),
            None => out.push_str(&format!("principal {p}\n")),
        }
    }
    out.push_str("\nlayers:\n");
    for t in &d.trace {
        let mark = match t.mark {
            Mark::Pass => "[pass]      ",
            Mark::Deny => "[DENY]      ",
            Mark::Skip => "[skip]      ",
            Mark::WouldDeny => "[would deny]",
        };
        let mut line = format!("  {mark} {:<9} {:>7}us  {}", t.layer, t.micros, t.mode.as_str());
        if let Some(r) = t.reason {
            line.push_str(&format!("  {}", r.code()));
        }
        if let Some(rule) = &t.rule_id {
            line.push_str(&format!("  rule={rule}"));
        }
        if let Some(note) = &t.note {
            line.push_str(&format!("  ({note})"));
        }
        if let Some(note) = &t.platform_note {
            line.push_str(&format!("  (platform admins only: {note})"));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out.push('\n');
    match (d.deciding_layer(), d.reason) {
        (Some(t), Some(r)) => {
            out.push_str(&format!(
                "decided by: {} layer{}\n",
                t.layer,
                t.rule_id
                    .as_ref()
                    .map(|id| format!(", rule `{id}`"))
                    .unwrap_or_default()
            ));
            if let Some(detail) = &t.detail {
                out.push_str(&format!("told the caller: {detail}\n"));
            }
            out.push_str(&format!("hint: {}\n", r.info().hint));
            out.push_str(&format!("operator: {}\n", r.info().description));
        }
        _ => {
            let shadow: Vec<_> = d.trace.iter().filter(|t| t.mark == Mark::WouldDeny).collect();
            out.push_str("decided: allowed\n");
            for t in shadow {
                out.push_str(&format!(
                    "note: {} layer would deny ({}) in enforce mode\n",
                    t.layer,
                    t.reason.map(|r| r.code()).unwrap_or("?")
                ));
            }
        }
    }
    out
}
