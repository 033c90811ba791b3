//! Webhook deliveries (of alerts): one bounded queue and one sending task per webhook, so a
//! slow or failing receiver never holds up evaluation or another receiver. Each alert is
//! POSTed with its id (`Pinpoint-Delivery`, also in the signed body; the same on every
//! attempt, for receivers to deduplicate), the attempt's timestamp and an HMAC-SHA256
//! signature of `TIMESTAMP.BODY` under the secret as its file holds it at that moment (a
//! rotated secret applies from the next delivery); it is retried with doubling waits (or
//! the receiver's `Retry-After`, at most a minute) on 408, 429, 5xx and connection
//! failures, up to `max_attempts`.

use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use pinpoint_core::config::{WebhookConfig, WebhookFormat};
use sha2::Sha256;
use tokio::sync::mpsc;

/// Metric: deliveries by webhook and result (`delivered`, `retried`, `failed`, `dropped`).
pub const DELIVERIES_METRIC: &str = "pinpoint_alert_deliveries_total";

/// The first wait before a retry; each next one doubles, up to [`LONGEST_WAIT`].
const FIRST_WAIT: Duration = Duration::from_secs(1);
const LONGEST_WAIT: Duration = Duration::from_secs(60);

/// A signing secret: never printed.
#[derive(Clone)]
pub struct Secret(Arc<[u8]>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    /// Reads a secret file (surrounding whitespace ignored); empty is an error.
    pub fn read(path: &std::path::Path) -> Result<Secret, String> {
        let text = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let trimmed = text.trim_ascii();
        if trimmed.is_empty() {
            return Err(format!("{} is empty", path.display()));
        }
        Ok(Secret(trimmed.into()))
    }

    /// `v1=` and the hex HMAC-SHA256 of `TIMESTAMP.BODY`.
    pub fn sign(&self, timestamp: u64, body: &[u8]) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1={}", pinpoint_core::hex::lower(&mac.finalize().into_bytes()))
    }
}

/// Checks what webhooks need from the machine: every secret file readable and not empty
/// (`load_file` refuses the config otherwise).
pub fn check(webhooks: &[WebhookConfig]) -> Result<(), String> {
    for hook in webhooks {
        if let Some(file) = &hook.secret_file {
            Secret::read(file).map_err(|e| format!("webhook `{}`: secret_file: {e}", hook.id))?;
        }
    }
    Ok(())
}

/// One alert, rendered for every format (its `json` holds its `id`).
pub struct Alert {
    /// Pinpoint's alert document.
    pub json: serde_json::Value,
    /// The Slack message.
    pub slack: serde_json::Value,
}

/// One webhook's queue.
pub struct Webhook {
    pub config: WebhookConfig,
    queue: mpsc::Sender<Arc<Alert>>,
}

impl Webhook {
    /// Starts the webhook's sending task (on the current runtime); it ends when the
    /// webhook is dropped and its queue is empty.
    pub fn start(config: WebhookConfig) -> Result<Webhook, String> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.timeout_ms))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .map_err(|e| format!("cannot build the webhook client: {e}"))?;
        let (queue, waiting) = mpsc::channel(config.queue_capacity.max(1));
        tokio::spawn(send_all(config.clone(), client, waiting));
        Ok(Webhook { config, queue })
    }

    /// Queues `alert`, or drops and counts it when the queue is full.
    pub fn enqueue(&self, alert: Arc<Alert>) {
        if self.queue.try_send(alert).is_err() {
            count(&self.config.id, "dropped");
            tracing::warn!(webhook = %self.config.id, "alert dropped: the webhook's queue is full");
        }
    }
}

fn count(webhook: &str, result: &'static str) {
    metrics::counter!(DELIVERIES_METRIC, "webhook" => webhook.to_owned(), "result" => result).increment(1);
}

async fn send_all(config: WebhookConfig, client: reqwest::Client, mut waiting: mpsc::Receiver<Arc<Alert>>) {
    while let Some(alert) = waiting.recv().await {
        let delivery = alert.json["id"].as_str().unwrap_or_default().to_owned();
        let body = match config.format {
            WebhookFormat::Json => &alert.json,
            WebhookFormat::Slack => &alert.slack,
        };
        let body = match serde_json::to_vec(body) {
            Ok(body) => body,
            Err(e) => {
                tracing::error!(webhook = %config.id, error = %e, "cannot encode an alert");
                continue;
            }
        };
        send_one(&config, &client, &delivery, body).await;
    }
}

/// What one attempt came to.
enum Attempt {
    Delivered,
    /// Worth trying again (408, 429, 5xx, no answer).
    Again(String),
    /// Not worth trying again (any other answer).
    Refused(String),
}

async fn send_one(config: &WebhookConfig, client: &reqwest::Client, delivery: &str, body: Vec<u8>) {
    let mut wait = FIRST_WAIT;
    for attempt in 1..=config.max_attempts {
        let secret = match config.secret_file.as_deref().map(Secret::read).transpose() {
            Ok(secret) => secret,
            Err(e) => {
                count(&config.id, "failed");
                tracing::error!(webhook = %config.id, delivery, error = %e, "alert not sent: its signing secret cannot be read");
                return;
            }
        };
        let timestamp = pinpoint_store::now_ms().max(0) as u64 / 1000;
        let mut request = client
            .post(&config.url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header("pinpoint-delivery", delivery)
            .header("pinpoint-timestamp", timestamp.to_string())
            .body(body.clone());
        if let Some(secret) = &secret {
            request = request.header("pinpoint-signature", secret.sign(timestamp, &body));
        }
        let mut asked_wait = None;
        let outcome = match request.send().await {
            Ok(answer) if answer.status().is_success() => Attempt::Delivered,
            Ok(answer) => {
                let status = answer.status();
                asked_wait = answer
                    .headers()
                    .get(http::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
                    .map(|seconds| Duration::from_secs(seconds).clamp(FIRST_WAIT, LONGEST_WAIT));
                let why = format!("answered {}", status.as_u16());
                if status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429 {
                    Attempt::Again(why)
                } else {
                    Attempt::Refused(why)
                }
            }
            // Without the URL: it may carry a token.
            Err(e) => Attempt::Again(describe(&e)),
        };
        match outcome {
            Attempt::Delivered => {
                count(&config.id, "delivered");
                tracing::info!(webhook = %config.id, delivery, attempt, "alert delivered");
                return;
            }
            Attempt::Refused(why) => {
                count(&config.id, "failed");
                tracing::warn!(webhook = %config.id, delivery, attempt, why, "alert refused by the webhook; not retried");
                return;
            }
            Attempt::Again(why) if attempt < config.max_attempts => {
                let this_wait = asked_wait.unwrap_or(wait);
                count(&config.id, "retried");
                tracing::warn!(webhook = %config.id, delivery, attempt, why, wait_ms = this_wait.as_millis() as u64, "alert not delivered; retrying");
                tokio::time::sleep(this_wait).await;
                wait = (wait * 2).min(LONGEST_WAIT);
            }
            Attempt::Again(why) => {
                count(&config.id, "failed");
                tracing::warn!(webhook = %config.id, delivery, attempt, why, "alert not delivered; attempts used up");
                return;
            }
        }
    }
}

/// A send error without its URL.
fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "could not connect".into()
    } else {
        "the request failed".into()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn signatures_are_hmac_sha256_of_timestamp_dot_body() {
        let secret = super::Secret(b"key".as_slice().into());
        // RFC 4231-style check computed independently: HMAC-SHA256("key", "1.{}").
        let signed = secret.sign(1, b"{}");
        assert!(signed.starts_with("v1=") && signed.len() == 3 + 64, "{signed}");
        assert_eq!(signed, secret.sign(1, b"{}"));
        assert_ne!(signed, secret.sign(2, b"{}"));
        assert_eq!(format!("{secret:?}"), "Secret(..)");
    }
}
