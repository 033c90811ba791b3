//! The client side of Pinpoint's cloud authentication, for tools and agents:
//! [`proof::sign`] signs (but does not send) an STS GetCallerIdentity with `aws-sigv4` in
//! Datadog's wire format; [`Exchanger`] trades it for a token or an intake key; and
//! [`refresher::Schedule`] decides when an agent refreshes its intake key (before rotation
//! with jitter, exponential backoff on failure, the previous key kept meanwhile, a static
//! fallback only after an exchange failed).
#![forbid(unsafe_code)]

pub mod proof;
pub mod refresher;

use std::time::Duration;

pub use aws_credential_types::Credentials;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot sign the proof: {0}")]
    Sign(String),
    #[error("cannot reach Pinpoint: {0}")]
    Http(#[from] reqwest::Error),
    #[error("{status} {reason}: {detail}")]
    Refused {
        status: u16,
        reason: String,
        detail: String,
    },
}

impl ClientError {
    /// Whether the server refused the credentials or the proof (as opposed to a transport problem).
    pub fn is_refusal(&self) -> bool {
        matches!(self, ClientError::Refused { status: 401 | 403, .. })
    }
}

/// A short-lived token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub access_token: String,
    /// Unix seconds.
    pub expires: i64,
}

/// A managed intake key.
#[derive(Clone, PartialEq, Eq)]
pub struct IntakeKey {
    pub api_key: String,
    /// Unix seconds after which the key stops working.
    pub expires: i64,
    /// Unix seconds at which the server starts handing out the next key.
    pub rotates_at: i64,
}

impl std::fmt::Debug for IntakeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "IntakeKey {{ expires: {}, rotates_at: {}, api_key: <redacted> }}",
            self.expires, self.rotates_at
        )
    }
}

/// Exchanges proofs with one Pinpoint server for one organization.
pub struct Exchanger {
    http: reqwest::Client,
    server: String,
    org_id: String,
    region: Option<String>,
}

impl Exchanger {
    pub fn new(server: &str, org_id: &str, region: Option<&str>) -> Result<Exchanger, ClientError> {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?;
        Ok(Exchanger {
            http,
            server: server.trim_end_matches('/').to_owned(),
            org_id: org_id.to_owned(),
            region: region.map(str::to_owned),
        })
    }

    /// Signs a proof and posts it. Agents sharing one role's credentials (one instance
    /// profile) can sign identical proofs within the same second, and the server takes each
    /// proof once: a replay refusal is a collision, not a failure, so it is signed again
    /// after a random delay that moves into another second (at most 3 times).
    async fn post(&self, path: &str, credentials: &Credentials) -> Result<serde_json::Value, ClientError> {
        let mut collisions = 0;
        loop {
            match self.post_once(path, credentials).await {
                Err(ClientError::Refused { reason, .. }) if reason == "cloudauth.proof_replayed" && collisions < 3 => {
                    collisions += 1;
                    let wait_ms = 1_000 + rand::random::<u64>() % 1_000;
                    tokio::time::sleep(std::time::Duration::from_millis(wait_ms)).await;
                }
                other => return other,
            }
        }
    }

    async fn post_once(&self, path: &str, credentials: &Credentials) -> Result<serde_json::Value, ClientError> {
        let proof = proof::sign(
            credentials,
            &self.org_id,
            self.region.as_deref(),
            std::time::SystemTime::now(),
        )?;
        let response = self
            .http
            .post(format!("{}{path}", self.server))
            .header(reqwest::header::AUTHORIZATION, proof)
            .send()
            .await?;
        let status = response.status().as_u16();
        let body: serde_json::Value = response.json().await.unwrap_or(serde_json::Value::Null);
        if status != 200 {
            return Err(ClientError::Refused {
                status,
                reason: body["reason"].as_str().unwrap_or("unknown").to_owned(),
                detail: body["detail"].as_str().unwrap_or("").to_owned(),
            });
        }
        Ok(body)
    }

    /// `POST /api/v2/delegated-token`.
    pub async fn delegated_token(&self, credentials: &Credentials) -> Result<Token, ClientError> {
        let body = self.post("/api/v2/delegated-token", credentials).await?;
        let attributes = &body["data"]["attributes"];
        match (attributes["access_token"].as_str(), attributes["expires"].as_i64()) {
            (Some(token), Some(expires)) => Ok(Token {
                access_token: token.to_owned(),
                expires,
            }),
            _ => Err(ClientError::Refused {
                status: 200,
                reason: String::from("bad_response"),
                detail: String::from("the response has no access_token/expires"),
            }),
        }
    }

    /// `POST /api/v2/intake-key`.
    pub async fn intake_key(&self, credentials: &Credentials) -> Result<IntakeKey, ClientError> {
        let body = self.post("/api/v2/intake-key", credentials).await?;
        let a = &body["data"]["attributes"];
        match (a["api_key"].as_str(), a["expires"].as_i64(), a["rotates_at"].as_i64()) {
            (Some(key), Some(expires), Some(rotates_at)) => Ok(IntakeKey {
                api_key: key.to_owned(),
                expires,
                rotates_at,
            }),
            _ => Err(ClientError::Refused {
                status: 200,
                reason: String::from("bad_response"),
                detail: String::from("the response has no api_key/expires/rotates_at"),
            }),
        }
    }
}
