//! `pinpoint audit`: the API's audit of keys, roles, principals and the config
//! (`GET /api/v2/audits`), as a table or JSON.

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
