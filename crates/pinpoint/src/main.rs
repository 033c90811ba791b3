//! The `pinpoint` binary: `serve` runs the gateway; `explain`, `reasons`, `config check`
//! and `echo` are the operator's tools.
#![forbid(unsafe_code)]

mod admin;
mod audit;
mod client;
mod cloud;
mod decisions;
mod explain;
mod log_format;
mod log_sink;
mod waf;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use pinpoint_core::config::Config;
use pinpoint_gateway::{Gateway, ListenOverride, Listeners};
use pinpoint_store::prelude::*;
use pinpoint_store::Store;
use tokio::net::TcpListener;

#[derive(Parser)]
#[command(
    name = "pinpoint",
    version,
    about = "An API gateway whose every denial says exactly why."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (proxy and api listeners).
    Serve {
        /// Config file; default ./pinpoint.toml if present, else the built-in demo config.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Log format.
        #[arg(long, default_value = "json", value_parser = ["json", "text"])]
        log_format: String,
        /// Proxy listen address; wins over `server.proxy_listen` in every config revision.
        #[arg(long, value_name = "ADDR")]
        proxy_listen: Option<SocketAddr>,
        /// API listen address; wins over `server.api_listen` in every config revision.
        #[arg(long, value_name = "ADDR")]
        api_listen: Option<SocketAddr>,
    },
    /// Print the decision trace of a request.
    Explain {
        /// The request id (the X-Request-Id response header, or `request_id` in a problem body).
        request_id: String,
        #[command(flatten)]
        client: client::ClientArgs,
        /// Print the stored decision as JSON.
        #[arg(long)]
        json: bool,
    },
    /// The built-in WAF.
    #[command(subcommand)]
    Waf(WafCommand),
    /// Audit keys, roles, principals and the config: unused or never-expiring keys, `*`
    /// grants, suspended principals with live keys, anonymous write routes, report mode.
    Audit {
        /// A key unused for this many days is reported.
        #[arg(long, default_value_t = 90)]
        unused_days: u32,
        /// Print the findings as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: client::ClientArgs,
    },
    /// Which keys the proxy would let through for a request (evaluated by the same
    /// pipeline over the current config and directory).
    WhoCan(audit::WhoCanArgs),
    /// Stored decisions, listed and filtered.
    #[command(subcommand)]
    Decisions(decisions::DecisionsCommand),
    /// The replicas sharing this deployment's Redis, with their config revisions.
    #[command(subcommand)]
    Cluster(audit::ClusterCommand),
    /// Copy an embedded store into a new PostgreSQL one (for `[store] url`).
    Migrate {
        /// The embedded store: `sqlite:DIR` (the `server.data_dir` it lives in).
        #[arg(long)]
        from: String,
        /// The PostgreSQL database to fill: `postgres://...` (it must hold no keys yet).
        #[arg(long)]
        to: String,
    },
    /// A live view of refusals by reason, route and organization (exact counts).
    Top(decisions::TopArgs),
    /// Manage API keys.
    #[command(subcommand)]
    Keys(admin::Keys),
    /// Manage users.
    #[command(subcommand)]
    Users(admin::Principals),
    /// Manage service accounts.
    #[command(subcommand)]
    ServiceAccounts(admin::Principals),
    /// Manage roles and role assignments.
    #[command(subcommand)]
    Roles(admin::Roles),
    /// Manage organizations.
    #[command(subcommand)]
    Orgs(admin::Orgs),
    /// Manage cloud authentication: AWS accounts and ARN mappings.
    #[command(subcommand)]
    CloudAuth(admin::CloudAuth),
    /// Log in with a cloud identity and print a short-lived token.
    #[command(subcommand)]
    Login(LoginCommand),
    /// Obtain a managed intake key with the AWS identity and keep it fresh.
    AgentKey {
        #[command(flatten)]
        target: cloud::Target,
        /// A static key to use only after an exchange has failed.
        #[arg(long, env = "PINPOINT_FALLBACK_KEY", hide_env_values = true)]
        fallback_key: Option<String>,
        /// Keep the current key in this file (mode 0600) instead of printing it.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Print one key and exit.
        #[arg(long)]
        once: bool,
    },
    /// Host-side administration (needs the data directory, not the API).
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Print the reason catalogue.
    Reasons {
        /// As the Markdown page docs/reasons.md.
        #[arg(long)]
        markdown: bool,
    },
    /// Config tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Run the echo upstream on its own (for benchmarks and experiments).
    Echo {
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: SocketAddr,
        /// Answer every request with the same small body instead of describing it (the
        /// benchmark's upstream: its work then does not depend on the request's headers).
        #[arg(long)]
        fixed: bool,
    },
}

#[derive(Subcommand)]
enum LoginCommand {
    /// With the AWS identity of the standard credential chain.
    Aws {
        #[command(flatten)]
        target: cloud::Target,
        /// Print JSON with the token's expiry.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Issue a new bootstrap admin key into the data directory, for when every
    /// administrator key is lost or revoked.
    Recover {
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a config file and print its revision.
    Check { file: Option<PathBuf> },
    /// Print the built-in demo config.
    Demo,
    /// Print the config reference (docs/config.md).
    Reference,
}

/// mimalloc instead of glibc's malloc: a proxied request allocates and frees a few hundred
/// times, and glibc's allocator was 12% of a bare request's instructions
/// (`bench/instructions.sh`); see bench/README.md for the measured effect.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    // One thread's event loop: `serve` starts the other proxy workers' own
    // (pinpoint_gateway::workers).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        match cli.command {
            Command::Serve {
                config,
                log_format,
                proxy_listen,
                api_listen,
            } => {
                let listen = ListenOverride {
                    proxy: proxy_listen,
                    api: api_listen,
                };
                serve(config, &log_format, listen).await
            }
            Command::Explain {
                request_id,
                client,
                json,
            } => explain::run(&request_id, &client, json).await,
            Command::Waf(WafCommand::Exclude { request_id, client }) => waf::exclude(&request_id, &client).await,
            Command::Login(LoginCommand::Aws { target, json }) => cloud::login(&target, json).await,
            Command::AgentKey {
                target,
                fallback_key,
                out,
                once,
            } => {
                // Keys go to stdout (or --out); logs to stderr.
                let _log_flush = init_tracing("text", LogTo::Stderr);
                cloud::agent_key(&target, fallback_key, out, once).await
            }
            Command::Audit {
                unused_days,
                json,
                client,
            } => audit::run(unused_days, json, &client).await,
            Command::WhoCan(args) => audit::who_can(&args).await,
            Command::Cluster(audit::ClusterCommand::Status { client }) => audit::cluster_status(&client).await,
            Command::Migrate { from, to } => migrate(&from, &to).await,
            Command::Decisions(cmd) => decisions::run(cmd).await,
            Command::Top(args) => decisions::top(args).await,
            Command::Keys(cmd) => admin::keys(cmd).await,
            Command::Admin {
                command: AdminCommand::Recover { config },
            } => {
                // Straight to the store: for when no administrator key is left to call the API with.
                let (config, origin) = resolve_config(config.as_deref())?;
                let store = Store::open_configured(&config.store, &config.server.data_dir)
                    .await
                    .with_context(|| {
                        format!(
                            "cannot open the store of {origin} in {}",
                            config.server.data_dir.display()
                        )
                    })?;
                let issued = store
                    .recover_bootstrap_key()
                    .await
                    .context("cannot issue a new bootstrap key")?;
                store.close().await;
                println!("{}", issued.key);
                eprintln!(
                    "A new bootstrap admin key ({}) is in {}. A running pinpoint accepts it after its next start.",
                    issued.info.id,
                    config
                        .server
                        .data_dir
                        .join(pinpoint_store::keys::BOOTSTRAP_KEY_FILE)
                        .display()
                );
                Ok(())
            }
            Command::CloudAuth(cmd) => admin::cloud_auth(cmd).await,
            Command::Users(cmd) => admin::principals("users", cmd).await,
            Command::ServiceAccounts(cmd) => admin::principals("service_accounts", cmd).await,
            Command::Roles(cmd) => admin::roles(cmd).await,
            Command::Orgs(cmd) => admin::orgs(cmd).await,
            Command::Reasons { markdown } => print_reasons(markdown),
            Command::Config {
                command: ConfigCommand::Check { file },
            } => {
                let (config, origin) = resolve_config(file.as_deref())?;
                println!(
                    "{origin}: ok, revision {} ({} routes, {} upstreams)",
                    config.revision,
                    config.routes.len(),
                    config.upstreams.len()
                );
                for warning in config.warnings() {
                    println!("warning: {warning}");
                }
                for warning in waf::unused_exclusions(&config).await? {
                    println!("warning: {warning}");
                }
                Ok(())
            }
            Command::Config {
                command: ConfigCommand::Demo,
            } => {
                print!("{}", pinpoint_core::config::DEMO_CONFIG);
                Ok(())
            }
            Command::Config {
                command: ConfigCommand::Reference,
            } => {
                print!("{}", pinpoint_core::config::reference::render_markdown());
                Ok(())
            }
            Command::Echo { listen, fixed } => {
                let listener = TcpListener::bind(listen)
                    .await
                    .with_context(|| format!("cannot listen on {listen}"))?;
                eprintln!("echo upstream listening on {listen}");
                let mode = if fixed {
                    pinpoint_gateway::echo::EchoMode::Fixed
                } else {
                    pinpoint_gateway::echo::EchoMode::Describe
                };
                pinpoint_gateway::echo::serve_mode(listener, shutdown_signal(), mode).await;
                Ok(())
            }
        }
    })
}

/// The config to use: `--config FILE`, else `./pinpoint.toml`, else the built-in demo.
/// Returns the config and a description of where it came from.
pub(crate) fn resolve_config(explicit: Option<&Path>) -> Result<(Config, String)> {
    let path = match explicit {
        Some(p) => Some(p.to_owned()),
        None => Some(PathBuf::from(DEFAULT_CONFIG_FILE)).filter(|p| p.exists()),
    };
    match path {
        Some(path) => {
            let config =
                pinpoint_gateway::runtime::load_file(&path).map_err(|e| anyhow::anyhow!("{}", config_refusal(&e)))?;
            Ok((config, path.display().to_string()))
        }
        None => Ok((Config::demo(), String::from("<built-in demo>"))),
    }
}

/// How a refused config file is told: one mistake on the line, several one per line.
fn config_refusal(e: &pinpoint_gateway::runtime::LoadError) -> String {
    match e {
        pinpoint_gateway::runtime::LoadError::Invalid(errors) if errors.errors().len() > 1 => {
            format!("config refused, {} mistakes:\n{errors}", errors.errors().len())
        }
        other => format!("config refused: {other}"),
    }
}

#[derive(Subcommand)]
enum WafCommand {
    /// Print the narrowest `[[waf.exclusions]]` that would let a refused request through.
    Exclude {
        /// The request id of the refused request.
        request_id: String,
        #[command(flatten)]
        client: client::ClientArgs,
    },
}

/// `pinpoint migrate`: the embedded store in `from` copied into the PostgreSQL database
/// `to`, which takes the embedded store's pepper (the copied key hashes were made with it).
async fn migrate(from: &str, to: &str) -> Result<()> {
    let dir = PathBuf::from(from.strip_prefix("sqlite:").unwrap_or(from));
    if !dir.join(pinpoint_store::DB_FILE).exists() {
        anyhow::bail!(
            "{} holds no embedded store (pinpoint.db); --from takes sqlite:DIR, the server.data_dir",
            dir.display()
        );
    }
    if !pinpoint_core::config::StoreConfig::is_postgres_url(to) {
        anyhow::bail!("--to takes a postgres:// URL");
    }
    let source = Store::open(&dir)
        .await
        .with_context(|| format!("cannot open the store in {}", dir.display()))?;
    let pepper = dir.join(pinpoint_store::PEPPER_FILE);
    let target = Store::connect(to, &pepper, &dir)
        .await
        .context("cannot open the PostgreSQL store (--to)")?;
    let report = pinpoint_store::migrate::copy_store(&source, &target).await.context(
        "the copy failed; nothing was committed unless decisions were being copied (drop the database and run again)",
    )?;
    println!("{:<20} {:>10}", "table", "rows copied");
    for (table, rows) in &report.tables {
        println!("{table:<20} {rows:>10}");
    }
    println!(
        "\nCopied. Give every replica this pepper file ([store] pepper_file = \"{}\", copied to each, mode 0600) and [store] url.",
        pepper.display()
    );
    source.close().await;
    target.close().await;
    Ok(())
}

/// The config file used when `--config` is not given, if it exists.
const DEFAULT_CONFIG_FILE: &str = "pinpoint.toml";

async fn serve(config_flag: Option<PathBuf>, log_format: &str, listen_override: ListenOverride) -> Result<()> {
    // Log lines gather in a buffer a writer thread empties (log_sink), so the proxy never
    // waits on stdout; the guard writes what is left when `serve` returns.
    let _log_flush = init_tracing(log_format, LogTo::Stdout);
    let (mut config, origin) = resolve_config(config_flag.as_deref())?;
    listen_override.apply(&mut config);
    tracing::info!(config = %origin, revision = %config.revision, "config loaded");
    let data_dir = config.server.data_dir.clone();
    let store = Store::open_configured(&config.store, &data_dir)
        .await
        .with_context(|| match &config.store.url {
            Some(_) => "cannot open the PostgreSQL store ([store] url)".to_owned(),
            None => format!("cannot open the store in {}", data_dir.display()),
        })?;
    if let Some(issued) = store
        .bootstrap_admin_key()
        .await
        .context("cannot create the bootstrap admin key")?
    {
        let file = data_dir.join(pinpoint_store::keys::BOOTSTRAP_KEY_FILE);
        eprintln!(
            "\nFirst start: created the bootstrap admin key. It is shown only this once:\n\n    {}\n\nIt is also in {} (mode 0600); `pinpoint explain` reads it from there.\n",
            issued.key,
            file.display()
        );
    }
    let proxy = bind_proxy(config.server.proxy_listen)?;
    let api = bind(config.server.api_listen, "api").await?;
    let gateway = Gateway {
        config,
        // Without --config, `./pinpoint.toml` is watched even while the built-in demo serves,
        // so creating it is picked up like any later change.
        config_path: Some(config_flag.unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_FILE))),
        store: store.clone(),
        listen_override,
    };
    pinpoint_gateway::run(gateway, Listeners { proxy, api }, shutdown_signal()).await?;
    store.close().await;
    Ok(())
}

async fn bind(addr: SocketAddr, what: &str) -> Result<TcpListener> {
    match TcpListener::bind(addr).await {
        Ok(l) => Ok(l),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            bail!(
                "cannot listen on {addr} for the {what} listener: the address is in use (is another pinpoint running?)"
            )
        }
        Err(e) => Err(e).with_context(|| format!("cannot listen on {addr} for the {what} listener")),
    }
}

/// Binds the proxy listener so that the other workers can bind beside it (`SO_REUSEPORT`),
/// after checking that nothing holds the address already (a socket with `SO_REUSEPORT`
/// would otherwise share it with another pinpoint).
fn bind_proxy(addr: SocketAddr) -> Result<TcpListener> {
    let in_use = |e: std::io::Error| -> anyhow::Error {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            anyhow::anyhow!(
                "cannot listen on {addr} for the proxy listener: the address is in use (is another pinpoint running?)"
            )
        } else {
            anyhow::Error::new(e).context(format!("cannot listen on {addr} for the proxy listener"))
        }
    };
    drop(std::net::TcpListener::bind(addr).map_err(in_use)?);
    let listener = pinpoint_gateway::workers::bind_shared(addr).map_err(in_use)?;
    listener.set_nonblocking(true).map_err(in_use)?;
    TcpListener::from_std(listener).map_err(in_use)
}

/// Resolves on SIGTERM or Ctrl-C.
pub(crate) async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the server");
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => {},
            _ = tokio::signal::ctrl_c() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

enum LogTo {
    Stdout,
    Stderr,
}

fn init_tracing(format: &str, to: LogTo) -> log_sink::FlushGuard {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("PINPOINT_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let (sink, guard) = log_sink::LogSink::spawn(match to {
        LogTo::Stdout => Box::new(std::io::stdout()),
        LogTo::Stderr => Box::new(std::io::stderr()),
    });
    // Colour codes only for a terminal: a log file or a pipe gets plain text.
    use std::io::IsTerminal;
    let ansi = match to {
        LogTo::Stdout => std::io::stdout().is_terminal(),
        LogTo::Stderr => std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(sink.clone())
        .with_ansi(ansi);
    if format == "json" {
        // The access log's lines go straight to the sink, in the same format.
        pinpoint_gateway::telemetry::install_access_log(Box::new(log_format::JsonAccessLog { sink }));
        builder.event_format(log_format::JsonLines).init();
    } else {
        builder.init();
    }
    guard
}

/// Prints the catalogue. A reader that stops early (`| head -1`) ends it quietly.
fn print_reasons(markdown: bool) -> Result<()> {
    use std::io::Write;
    let text = if markdown {
        pinpoint_core::reason::render_markdown()
    } else {
        pinpoint_core::Reason::ALL
            .iter()
            .map(|reason| {
                let info = reason.info();
                format!("{:<28} {}  {}\n", info.code, info.status, info.title)
            })
            .collect()
    };
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}
