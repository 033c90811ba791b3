//! `pinpoint decisions list` (the most recent stored decisions, filtered) and `pinpoint top`
//! (a live view of refusals by reason, route, caller and organization, from the exact
//! rollups),
//! both through the API, so they show what the key may see.

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use pinpoint_core::Decision;

use crate::client::{ApiClient, ClientArgs};

#[derive(Subcommand)]
pub enum DecisionsCommand {
    /// The most recent stored decisions, newest first (refusals are all stored; allowed
    /// requests as far as the decision log's sample kept them).
    List {
        #[command(flatten)]
        filter: ListFilter,
        /// Print the decisions as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Args)]
pub struct ListFilter {
    /// Only this route's.
    #[arg(long)]
    route: Option<String>,
    /// Only this reason's (`-`: allowed requests).
    #[arg(long)]
    reason: Option<String>,
    /// Only refusals by this layer (`authz`, `waf`, ...).
    #[arg(long)]
    layer: Option<String>,
    /// Only this status.
    #[arg(long)]
    status: Option<u16>,
    /// Only this organization's (platform administrators; others see their own anyway).
    #[arg(long)]
    org: Option<String>,
    /// Only the last this many minutes.
    #[arg(long)]
    minutes: Option<i64>,
    /// At most this many (up to 500).
    #[arg(long, default_value_t = 20)]
    limit: u32,
}

pub async fn run(command: DecisionsCommand) -> Result<()> {
    let DecisionsCommand::List { filter, json, client } = command;
    let api = ApiClient::new(&client)?;
    let mut query = vec![format!("limit={}", filter.limit)];
    for (name, value) in [
        ("route", &filter.route),
        ("reason", &filter.reason),
        ("layer", &filter.layer),
        ("org", &filter.org),
    ] {
        if let Some(value) = value {
            query.push(format!("{name}={}", crate::client::encode(value)));
        }
    }
    if let Some(status) = filter.status {
        query.push(format!("status={status}"));
    }
    if let Some(minutes) = filter.minutes {
        query.push(format!("since={}", pinpoint_store::now_ms() - minutes.max(0) * 60_000));
    }
    let body = api
        .call(
            reqwest::Method::GET,
            &format!("/api/v2/decisions?{}", query.join("&")),
            None,
        )
        .await?;
    let resources = body["data"].as_array().cloned().unwrap_or_default();
    if json {
        let attributes: Vec<&serde_json::Value> = resources.iter().map(|r| &r["attributes"]).collect();
        println!("{}", serde_json::to_string_pretty(&attributes)?);
        return Ok(());
    }
    if resources.is_empty() {
        println!("No stored decision matches.");
        return Ok(());
    }
    println!(
        "{:<24} {:<32} {:>6} {:<30} {:<12} request",
        "at", "request id", "status", "reason", "route"
    );
    for resource in resources {
        let d: Decision = serde_json::from_value(resource["attributes"].clone())
            .context("the API returned a decision this CLI cannot read")?;
        println!(
            "{:<24} {:<32} {:>6} {:<30} {:<12} {} {}",
            pinpoint_core::time::rfc3339(d.at_ms),
            d.request_id,
            d.status,
            d.reason.map_or("-", |r| r.code()),
            d.route.as_deref().unwrap_or("-"),
            d.method,
            d.path
        );
    }
    Ok(())
}

/// `pinpoint top`: refusals over the last `minutes` by reason, route, caller (principal)
/// and organization, redrawn every `every` seconds until interrupted (or once with `--once`).
#[derive(Args)]
pub struct TopArgs {
    /// The window counted, in minutes.
    #[arg(long, default_value_t = 5)]
    minutes: i64,
    /// Seconds between redraws.
    #[arg(long, default_value_t = 2)]
    every: u64,
    /// Print once and exit.
    #[arg(long)]
    once: bool,
    /// Rows per table.
    #[arg(long, default_value_t = 10)]
    rows: usize,
    #[command(flatten)]
    client: ClientArgs,
}

pub async fn top(args: TopArgs) -> Result<()> {
    let api = ApiClient::new(&args.client)?;
    loop {
        let to = pinpoint_store::now_ms();
        let from = to - args.minutes.clamp(1, 31 * 1440) * 60_000;
        let mut screen = String::new();
        let all = groups(&api, from, to, "mode=enforce", "", 1).await?;
        let refused = groups(&api, from, to, "mode=enforce", "reason", 1000).await?;
        let allowed: u64 = refused.iter().filter(|(k, _)| k == "-").map(|(_, n)| n).sum();
        let total: u64 = all.iter().map(|(_, n)| n).sum();
        screen.push_str(&format!(
            "pinpoint top: the last {} min, {} requests, {} refused ({}), at {}\n",
            args.minutes,
            total,
            total - allowed,
            if total > 0 {
                format!("{:.1}%", (total - allowed) as f64 * 100.0 / total as f64)
            } else {
                "-".to_owned()
            },
            pinpoint_core::time::rfc3339(to)
        ));
        for (title, group_by) in [
            ("reason", "reason"),
            ("route", "route"),
            ("caller", "principal"),
            ("organization", "org"),
        ] {
            let rows = groups(&api, from, to, "mode=enforce", group_by, args.rows + 1).await?;
            screen.push_str(&format!("\nrefused, by {title}\n"));
            let mut shown = 0;
            for (key, count) in rows.iter().filter(|(k, _)| group_by != "reason" || k != "-") {
                if shown == args.rows {
                    break;
                }
                screen.push_str(&format!("  {count:>8}  {key}\n"));
                shown += 1;
            }
            if shown == 0 {
                screen.push_str("  (none)\n");
            }
        }
        if args.once {
            print!("{screen}");
            return Ok(());
        }
        // Clear the terminal and redraw.
        print!("\x1b[2J\x1b[H{screen}");
        use std::io::Write;
        let _ = std::io::stdout().flush();
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(args.every.max(1))) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

/// The analytics groups of one dimension (`""`: none, the total), largest first, each as
/// its key's text (`-` for none) and count. For route and organization, only refusals
/// count (`reason` set).
async fn groups(
    api: &ApiClient,
    from: i64,
    to: i64,
    filter: &str,
    group_by: &str,
    top: usize,
) -> Result<Vec<(String, u64)>> {
    // Every group (up to the API's 1,000), merged here: grouped by route or organization
    // and reason, so that allowed requests can be left out.
    let mut path = format!("/api/v2/analytics/decisions?from={from}&to={to}&interval=1d&top=1000&{filter}");
    match group_by {
        "" => {}
        "reason" => path.push_str("&group_by=reason"),
        other => path.push_str(&format!("&group_by={other},reason")),
    }
    let body = api.call(reqwest::Method::GET, &path, None).await?;
    let attributes = &body["data"]["attributes"];
    if group_by.is_empty() {
        return Ok(vec![("all".to_owned(), attributes["total"].as_u64().unwrap_or(0))]);
    }
    let mut out: Vec<(String, u64)> = Vec::new();
    for group in attributes["groups"].as_array().into_iter().flatten() {
        let key = &group["key"];
        let count = group["total"].as_u64().unwrap_or(0);
        if group_by != "reason" && key["reason"].is_null() {
            continue;
        }
        let name = match &key[group_by] {
            serde_json::Value::Null => "-".to_owned(),
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        match out.iter_mut().find(|(k, _)| *k == name) {
            Some((_, n)) => *n += count,
            None => out.push((name, count)),
        }
    }
    out.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    out.truncate(top);
    Ok(out)
}
