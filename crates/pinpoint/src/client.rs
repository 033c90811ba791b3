//! How the CLI talks to a running Pinpoint: the API URL and key (flags, environment, or
//! the config and the bootstrap key file), and JSON calls whose problem bodies become
//! clear errors.

use std::path::PathBuf;

use anyhow::{Context, Result};

/// How the CLI reaches the API.
#[derive(clap::Args)]
pub struct ClientArgs {
    /// API base URL; default from the config's `api_listen`.
    #[arg(long, env = "PINPOINT_API")]
    pub api: Option<String>,
    /// Admin API key; default the bootstrap key file in the data dir.
    #[arg(long, env = "PINPOINT_KEY", hide_env_values = true)]
    pub key: Option<String>,
    /// Config file to read `api_listen` and `data_dir` from (same default as `serve`).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
}

impl ClientArgs {
    /// The API base URL and the key to use.
    fn resolve(&self) -> Result<(String, String)> {
        let api = match &self.api {
            Some(api) => api.trim_end_matches('/').to_owned(),
            None => format!(
                "http://{}",
                crate::resolve_config(self.config.as_deref())?.0.server.api_listen
            ),
        };
        let key = match &self.key {
            Some(key) => key.trim().to_owned(),
            None => {
                let config = crate::resolve_config(self.config.as_deref())?.0;
                let file = config.server.data_dir.join(pinpoint_store::keys::BOOTSTRAP_KEY_FILE);
                std::fs::read_to_string(&file)
                    .with_context(|| format!("no --key given and cannot read {}", file.display()))?
                    .trim()
                    .to_owned()
            }
        };
        Ok((api, key))
    }
}

/// A configured API client.
pub struct ApiClient {
    base: String,
    key: String,
    http: reqwest::Client,
}

impl ApiClient {
    pub fn new(args: &ClientArgs) -> Result<ApiClient> {
        let (base, key) = args.resolve()?;
        Ok(ApiClient {
            base,
            key,
            http: reqwest::Client::new(),
        })
    }

    /// Sends a request; a non-2xx answer becomes an error naming status, reason, detail and hint.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value> {
        let url = format!("{}{path}", self.base);
        let mut request = self
            .http
            .request(method, &url)
            .bearer_auth(&self.key)
            .header("accept", "application/json");
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("cannot reach the Pinpoint API at {}", self.base))?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        if status == reqwest::StatusCode::NO_CONTENT || (status.is_success() && text.is_empty()) {
            return Ok(serde_json::Value::Null);
        }
        let body: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{url} answered {status} with a body that is not JSON"))?;
        if !status.is_success() {
            let field = |name: &str| body[name].as_str().unwrap_or("").to_owned();
            return Err(ApiRefusal {
                reason: field("reason"),
                message: format!(
                    "{status} {}: {} {} (request id {})",
                    field("reason"),
                    field("detail"),
                    field("hint"),
                    field("request_id")
                ),
            }
            .into());
        }
        Ok(body)
    }
}

/// A refusal from the API, with its reason code for callers that act on it.
#[derive(Debug)]
pub struct ApiRefusal {
    pub reason: String,
    message: String,
}

impl std::fmt::Display for ApiRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ApiRefusal {}

/// Percent-encodes a query value (`/` kept).
pub fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => char::from(b).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
