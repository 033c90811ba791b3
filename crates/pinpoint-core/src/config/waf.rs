//! `[waf]`: the built-in web application firewall: its mode, the paranoia level (1 = few
//! false positives, 2 = stricter), the anomaly score at which a request is refused, the
//! headers it inspects besides the path, query and cookies, and its bounds on bodies.
//! Which routes it guards is each route's `waf`.

use serde::{Deserialize, Serialize};
use toml_edit::Item;

use super::diagnostics::{place, Diagnostics};
use crate::verdict::Mode;

/// `[waf]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WafConfig {
    pub mode: Mode,
    /// Rules up to this level run: 1 (few false positives) or 2 (stricter).
    pub paranoia: u8,
    /// A request whose matches score this much is refused (each rule scores 5).
    pub threshold: u32,
    /// Headers inspected (lower-case names) besides the path, the query and cookies.
    pub headers: Vec<String>,
    /// JSON bodies nested deeper are refused (`waf.body_too_deep`).
    pub max_json_depth: usize,
    /// Bodies with more values are refused (`waf.too_many_values`).
    pub max_values: usize,
}

impl Default for WafConfig {
    fn default() -> Self {
        WafConfig {
            mode: Mode::Enforce,
            paranoia: 1,
            threshold: 5,
            headers: vec![String::from("user-agent"), String::from("referer")],
            max_json_depth: 32,
            max_values: 1_000,
        }
    }
}

pub(super) fn read(item: &Item, d: &mut Diagnostics) -> Option<WafConfig> {
    let mut waf: WafConfig = d.read_or_default(item)?;
    let at = |field: &str| place(&[item.get(field), Some(item)]);
    if !(1..=2).contains(&waf.paranoia) {
        d.error(at("paranoia"), "waf.paranoia must be 1 or 2");
    }
    for (value, field) in [
        (waf.threshold as usize, "threshold"),
        (waf.max_json_depth, "max_json_depth"),
        (waf.max_values, "max_values"),
    ] {
        if value == 0 {
            d.error(at(field), format!("waf.{field} must be at least 1"));
        }
    }
    for header in &mut waf.headers {
        *header = header.to_ascii_lowercase();
    }
    Some(waf)
}
