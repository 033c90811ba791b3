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
        println!(
            "\n[[waf.exclusions]]\nid = \"{id}\"\nroutes = [\"{route}\"]\nrules = [\"{rule}\"]\nparts = [{part:?}]"
        );
    }
    Ok(())
}
