//! `pinpoint audit`: the API's audit of keys, roles, principals and the config
//! (`GET /api/v2/audits`), as a table or JSON; and `pinpoint cluster status`, the replicas
//! `/healthz` lists, with their config revisions.

use anyhow::Result;

use crate::client::{ApiClient, ClientArgs};

pub async fn run(unused_days: u32, json: bool, client: &ClientArgs) -> Result<()> {
    let api = ApiClient::new(client)?;
    let body = api
        .call(
            reqwest::Method::GET,
            &format!("/api/v2/audits?unused_days={unused_days}"),
            None,
        )
        .await?;
    let findings = body["data"]["attributes"]["findings"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if json {
        println!("{}", serde_json::to_string_pretty(&findings)?);
        return Ok(());
    }
    if findings.is_empty() {
        println!("No findings.");
        return Ok(());
    }
    let text = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_owned();
    println!("{:<36} {:<12} {:<36} {:<20} what", "finding", "subject", "id", "name");
    for finding in &findings {
        println!(
            "{:<36} {:<12} {:<36} {:<20} {}",
            text(&finding["kind"]),
            text(&finding["subject"]),
            text(&finding["id"]),
            text(&finding["name"]),
            text(&finding["detail"])
        );
    }
    println!("\n{} findings.", findings.len());
    Ok(())
}

/// `pinpoint who-can METHOD PATH`: the keys the proxy would let through
/// (`GET /api/v2/who-can`), and whether an anonymous caller would pass.
pub async fn who_can(args: &WhoCanArgs) -> Result<()> {
    let api = ApiClient::new(&args.client)?;
    let mut path = format!(
        "/api/v2/who-can?method={}&path={}",
        crate::client::encode(&args.method),
        crate::client::encode(&args.path)
    );
    if let Some(host) = &args.host {
        path.push_str(&format!("&host={}", crate::client::encode(host)));
    }
    if let Some(from) = &args.from {
        path.push_str(&format!("&from={}", crate::client::encode(from)));
    }
    let body = api.call(reqwest::Method::GET, &path, None).await?;
    let attributes = &body["data"]["attributes"];
    if args.json {
        println!("{}", serde_json::to_string_pretty(attributes)?);
        return Ok(());
    }
    let text = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_owned();
    println!(
        "{} {}: anonymous callers {}",
        args.method,
        args.path,
        if attributes["anonymous_allowed"] == true {
            "pass".to_owned()
        } else {
            format!("are refused ({})", text(&attributes["anonymous_reason"]))
        }
    );
    let keys = attributes["keys"].as_array().cloned().unwrap_or_default();
    let shown: Vec<&serde_json::Value> = keys.iter().filter(|k| args.all || k["allowed"] == true).collect();
    println!(
        "{:<18} {:<12} {:<20} {:<38} {:<8} reason",
        "key", "kind", "name", "org", "allowed"
    );
    for key in &shown {
        println!(
            "{:<18} {:<12} {:<20} {:<38} {:<8} {}",
            text(&key["key_id"]),
            text(&key["kind"]),
            format!(
                "{} {}",
                text(&key["key_name"]),
                key["principal"].as_str().map(|p| format!("({p})")).unwrap_or_default()
            ),
            text(&key["org_id"]),
            if key["allowed"] == true { "yes" } else { "no" },
            text(&key["reason"])
        );
    }
    let allowed = keys.iter().filter(|k| k["allowed"] == true).count();
    println!("\n{allowed} of {} live keys would pass.", keys.len());
    if attributes["truncated"] == true {
        println!("(only the first 10,000 keys were evaluated)");
    }
    Ok(())
}

/// `pinpoint who-can`'s arguments.
#[derive(clap::Args)]
pub struct WhoCanArgs {
    /// The request's method (`POST`).
    pub method: String,
    /// The request's path (`/orders`).
    pub path: String,
    /// The `Host` it is sent with (default `localhost`).
    #[arg(long)]
    pub host: Option<String>,
    /// The client address it comes from (default 127.0.0.1).
    #[arg(long)]
    pub from: Option<String>,
    /// List the keys that would be refused too, with the reason.
    #[arg(long)]
    pub all: bool,
    /// Print the answer as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(clap::Subcommand)]
pub enum ClusterCommand {
    /// Each live replica (heartbeats in `[cluster] redis`) with its config revision; says
    /// when revisions differ.
    Status {
        #[command(flatten)]
        client: ClientArgs,
    },
}

pub async fn cluster_status(client: &ClientArgs) -> Result<()> {
    let api = ApiClient::new(client)?;
    let health = api.call(reqwest::Method::GET, "/healthz", None).await?;
    let cluster = &health["cluster"];
    let text = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_owned();
    if cluster["redis"] == "not configured" {
        println!(
            "No [cluster] redis: this process runs alone (revision {}).",
            text(&health["config_revision"])
        );
        return Ok(());
    }
    println!(
        "redis: {}   this replica: {}",
        text(&cluster["redis"]),
        text(&cluster["replica"])
    );
    let Some(replicas) = cluster["replicas"].as_array() else {
        anyhow::bail!("the replicas could not be listed: {}", cluster["replicas"]["error"]);
    };
    let now = pinpoint_core::time::rfc3339(0).len(); // width of a timestamp
    println!(
        "{:<32} {:<16} {:<now$} last heartbeat",
        "replica", "revision", "started"
    );
    for replica in replicas {
        let at = |field: &str| replica[field].as_i64().map_or("-".into(), pinpoint_core::time::rfc3339);
        println!(
            "{:<32} {:<16} {:<now$} {}",
            text(&replica["replica"]),
            text(&replica["revision"]),
            at("started_at_ms"),
            at("at_ms")
        );
    }
    let mut revisions: Vec<String> = replicas.iter().map(|r| text(&r["revision"])).collect();
    revisions.sort();
    revisions.dedup();
    match revisions.len() {
        0 | 1 => println!("\n{} replicas, one config revision.", replicas.len()),
        n => println!(
            "\n{} replicas on {n} different config revisions: {}.",
            replicas.len(),
            revisions.join(", ")
        ),
    }
    Ok(())
}
