//! `pinpoint waf exclude <request-id>`: the narrowest `[[waf.exclusions]]` entries that
//! would have let a request the WAF refused (or would refuse, in report mode) through:
//! one per rule and part that matched, on the request's route, ready to paste.

use anyhow::{bail, Result};
use pinpoint_core::Mark;

use crate::client::ClientArgs;

pub async fn exclude(request_id: &str, client: &ClientArgs) -> Result<()> {
    let decisions = crate::explain::fetch(request_id, client).await?;
    let Some(decision) = decisions.first() else {
        bail!("no decision is recorded under {request_id}");
    };
    let mut pairs = Vec::new();
    for entry in &decision.trace {
        let waf = entry.reason.is_some_and(|r| r.layer() == "waf");
        if waf && matches!(entry.mark, Mark::Deny | Mark::WouldDeny) {
            if let Some(note) = &entry.note {
                pairs.extend(pinpoint_policy::filters::waf::hits_in_note(note));
            }
        }
    }
    if pairs.is_empty() {
        bail!("the WAF did not refuse request {request_id} (explain shows what did)");
    }
    let route = decision.route.as_deref().unwrap_or("-");
    println!(
        "# Lets requests like {} through on route `{route}`: one entry per rule and part.",
        decision.request_id
    );
    for (rule, part) in pairs {
        let id: String = format!("{route}-{rule}-{part}")
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        // A part whose name ends in `*` is written `\*`: a bare trailing `*` would match
        // every part that starts the same way. A part the trace withheld (its name held a
        // credential) becomes the prefix before that, with a trailing `*`. Strings in
        // TOML's own escaping.
        let withheld_at = part.find(pinpoint_policy::credential_text::WITHHELD);
        let part = match (withheld_at, part.strip_suffix('*')) {
            (Some(at), _) => {
                println!("\n# The part's name held a credential, which is never written down: this entry");
                println!(
                    "# covers every part under `{}`. Narrow it by hand if you can.",
                    &part[..at]
                );
                format!("{}*", &part[..at])
            }
            (None, Some(prefix)) => format!("{prefix}\\*"),
            (None, None) => part,
        };
        let [id, route, rule, part] = [id.as_str(), route, rule.as_str(), part.as_str()].map(toml_string);
        println!("\n[[waf.exclusions]]\nid = {id}\nroutes = [{route}]\nrules = [{rule}]\nparts = [{part}]");
    }
    Ok(())
}

/// `text` as a TOML string, escaped as TOML reads it back.
fn toml_string(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}

/// How many recent decisions that name WAF exclusions `config check` reads.
const EXCLUSION_SCAN_LIMIT: u32 = 100_000;

/// `config check`'s warnings about `[[waf.exclusions]]` that never applied to a request
/// in the decision log of the config's data directory (none when it has no log yet).
pub async fn unused_exclusions(config: &pinpoint_core::config::Config) -> Result<Vec<String>> {
    use pinpoint_store::DecisionStore;
    let exclusions = &config.waf.exclusions;
    let data_dir = &config.server.data_dir;
    let embedded_without_log = config.store.url.is_none() && !data_dir.join(pinpoint_store::DB_FILE).exists();
    if exclusions.is_empty() || embedded_without_log {
        return Ok(Vec::new());
    }
    let store = pinpoint_store::Store::open_configured(&config.store, data_dir).await?;
    let marker = pinpoint_policy::filters::waf::EXCLUDED_BY;
    let decisions = store.decisions_containing(marker, EXCLUSION_SCAN_LIMIT).await?;
    let mut applied = std::collections::HashSet::new();
    for entry in decisions
        .iter()
        .flat_map(|d| &d.trace)
        .filter(|e| e.layer.as_ref() == "waf")
    {
        for text in [entry.rule_id.as_deref(), entry.note.as_deref()].into_iter().flatten() {
            applied.extend(
                pinpoint_policy::filters::waf::exclusions_in_trace(text)
                    .into_iter()
                    .map(str::to_owned),
            );
        }
    }
    Ok(exclusions
        .iter()
        .filter(|e| !applied.contains(&e.id))
        .map(|e| {
            format!(
                "waf exclusion `{}` never applied to a request in the decision log ({} decisions with exclusions read)",
                e.id,
                decisions.len()
            )
        })
        .collect())
}
