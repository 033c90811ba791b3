//! `pinpoint login aws` and `pinpoint agent-key`: AWS credentials from the standard chain
//! (aws-config: environment, profile, SSO, web identity, ECS, IMDS), proofs signed by
//! pinpoint-client, exchanged with the server.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use aws_config::BehaviorVersion;
use aws_credential_types::provider::ProvideCredentials;
use pinpoint_client::{Credentials, Exchanger};

/// Where to log in.
#[derive(clap::Args)]
pub struct Target {
    /// The organization id to log into.
    #[arg(long)]
    pub org: String,
    /// Pinpoint's API URL.
    #[arg(long, env = "PINPOINT_SERVER", default_value = "http://127.0.0.1:8081")]
    pub server: String,
    /// Sign for this region's STS endpoint (default: the global endpoint).
    #[arg(long)]
    pub region: Option<String>,
}

async fn provider() -> aws_credential_types::provider::SharedCredentialsProvider {
    let config = aws_config::defaults(BehaviorVersion::latest()).load().await;
    match config.credentials_provider() {
        Some(p) => p,
        None => {
            aws_credential_types::provider::SharedCredentialsProvider::new(Credentials::new("", "", None, None, "none"))
        }
    }
}

async fn credentials(p: &aws_credential_types::provider::SharedCredentialsProvider) -> Result<Credentials, String> {
    p.provide_credentials()
        .await
        .map_err(|e| format!("no AWS credentials: {e}"))
}

/// `pinpoint login aws`: prints a token (or JSON with its expiry).
pub async fn login(target: &Target, json: bool) -> Result<()> {
    let exchanger = Exchanger::new(&target.server, &target.org, target.region.as_deref())?;
    let creds = credentials(&provider().await).await.map_err(anyhow::Error::msg)?;
    let token = exchanger.delegated_token(&creds).await.context("login failed")?;
    if json {
        println!(
            "{}",
            serde_json::json!({ "access_token": token.access_token, "expires": token.expires })
        );
    } else {
        println!("{}", token.access_token);
    }
    Ok(())
}

/// `pinpoint agent-key`: obtains a managed intake key and keeps it fresh, writing it to a
/// file (mode 0600) until SIGTERM; `--once` prints it and exits.
pub async fn agent_key(target: &Target, fallback_key: Option<String>, out: Option<PathBuf>, once: bool) -> Result<()> {
    let exchanger = Exchanger::new(&target.server, &target.org, target.region.as_deref())?;
    let provider = provider().await;
    if once {
        let creds = credentials(&provider).await.map_err(anyhow::Error::msg)?;
        let key = exchanger
            .intake_key(&creds)
            .await
            .context("intake key exchange failed")?;
        match &out {
            Some(path) => write_private(path, &key.api_key)
                .with_context(|| format!("cannot write the intake key to {}", path.display()))?,
            None => println!("{}", key.api_key),
        }
        return Ok(());
    }
    let rejected = Arc::new(tokio::sync::Notify::new());
    let publish = |key: &str| match &out {
        Some(path) => {
            if let Err(e) = write_private(path, key) {
                tracing::error!(error = %e, path = %path.display(), "cannot write the intake key");
            } else {
                tracing::info!(path = %path.display(), "intake key written");
            }
        }
        None => println!("{key}"),
    };
    pinpoint_client::refresher::run(
        &exchanger,
        || credentials(&provider),
        fallback_key,
        publish,
        &rejected,
        crate::shutdown_signal(),
    )
    .await;
    Ok(())
}

/// Writes the key where readers only ever see a whole one: a new temp file beside `path`,
/// created exclusively (never through an existing file or link planted there), mode 0600
/// from creation, synced, then renamed over `path`, and the directory synced.
fn write_private(path: &std::path::Path, key: &str) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{name}.{}.{:016x}.tmp",
        std::process::id(),
        rand::random::<u64>()
    ));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp)?;
    let written = file
        .write_all(format!("{key}\n").as_bytes())
        .and_then(|()| file.sync_all())
        .and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    std::fs::File::open(dir)?.sync_all()
}
