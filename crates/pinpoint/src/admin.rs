//! The everyday operator commands: `pinpoint keys|users|service-accounts|roles|orgs ...`,
//! thin wrappers over the API that print one line per resource.

use anyhow::Result;
use clap::Subcommand;
use reqwest::Method;
use serde_json::{json, Value};

use crate::client::{ApiClient, ClientArgs};

#[derive(Subcommand)]
pub enum Keys {
    /// Create a key; its secret is printed once.
    Create {
        name: String,
        /// Owner principal id (default: the caller).
        #[arg(long)]
        owner: Option<String>,
        /// Create an organization (api) key instead of an application key.
        #[arg(long)]
        org_key: bool,
        /// Narrow the key to these permissions (repeatable).
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// Expiry, in days from now.
        #[arg(long)]
        expires_in_days: Option<u32>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List keys (prefix, owner, scopes, expiry, last use).
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Revoke a key by id.
    Revoke {
        id: String,
        /// Revoke even the last key of a platform administrator.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Issue a successor; the old key keeps working for the overlap window.
    Rotate {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand)]
pub enum Principals {
    /// Create one.
    Create {
        name: String,
        #[arg(long)]
        email: Option<String>,
        /// Organization id (platform admins only; default: the caller's).
        #[arg(long)]
        org: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List them.
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Suspend (or, with --undo, reinstate) one.
    Suspend {
        id: String,
        #[arg(long)]
        undo: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand)]
pub enum Roles {
    /// Create a role from permissions.
    Create {
        name: String,
        #[arg(long = "permission", required = true)]
        permissions: Vec<String>,
        #[arg(long)]
        org: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List roles.
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Give a role to a principal.
    Assign {
        role: String,
        principal: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand)]
pub enum Orgs {
    /// Create an organization (platform admins).
    Create {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List organizations.
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
}

fn body(kind: &str, attributes: Value) -> Option<Value> {
    Some(json!({ "data": { "type": kind, "attributes": attributes } }))
}

fn print_list(value: &Value, line: impl Fn(&Value) -> String) {
    for item in value["data"].as_array().into_iter().flatten() {
        println!("{}", line(item));
    }
}

fn key_line(k: &Value) -> String {
    let a = &k["attributes"];
    format!(
        "{}  {}  {}  owner={}  scopes={}  expires={}  last_used={}{}",
        k["id"].as_str().unwrap_or("?"),
        a["prefix"].as_str().unwrap_or(""),
        a["name"].as_str().unwrap_or(""),
        a["principal_id"].as_str().unwrap_or("(organization)"),
        a["scopes"]
            .as_array()
            .map(|s| s.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(","))
            .unwrap_or_else(|| "all".into()),
        a["expires_at"]
            .as_i64()
            .map(|s| pinpoint_core::time::rfc3339(s * 1000))
            .unwrap_or_else(|| "never".into()),
        a["last_used_at"]
            .as_i64()
            .map(|s| pinpoint_core::time::rfc3339(s * 1000))
            .unwrap_or_else(|| "never".into()),
        if a["revoked"].as_bool() == Some(true) {
            "  REVOKED"
        } else {
            ""
        },
    )
}

fn named_line(v: &Value) -> String {
    let a = &v["attributes"];
    let mut line = format!(
        "{}  {}",
        v["id"].as_str().unwrap_or("?"),
        a["name"].as_str().unwrap_or("")
    );
    if let Some(p) = a["permissions"].as_array() {
        line.push_str(&format!(
            "  [{}]",
            p.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", ")
        ));
    }
    if a["suspended"].as_bool() == Some(true) {
        line.push_str("  SUSPENDED");
    }
    line
}

fn print_new_key(v: &Value) {
    let a = &v["data"]["attributes"];
    println!("{}", key_line(&v["data"]));
    println!("key (shown only now): {}", a["key"].as_str().unwrap_or(""));
}

pub async fn keys(cmd: Keys) -> Result<()> {
    match cmd {
        Keys::Create {
            name,
            owner,
            org_key,
            scopes,
            expires_in_days,
            client,
        } => {
            let expires_at = expires_in_days.map(|d| pinpoint_store::now_ms() / 1000 + i64::from(d) * 86_400);
            let attrs = json!({
                "name": name,
                "kind": if org_key { "api" } else { "application" },
                "principal_id": owner,
                "scopes": if scopes.is_empty() { None } else { Some(scopes) },
                "expires_at": expires_at,
            });
            let created = ApiClient::new(&client)?
                .call(Method::POST, "/api/v2/api_keys", body("api_keys", attrs))
                .await?;
            print_new_key(&created);
        }
        Keys::List { client } => print_list(
            &ApiClient::new(&client)?
                .call(Method::GET, "/api/v2/api_keys", None)
                .await?,
            key_line,
        ),
        Keys::Revoke { id, force, client } => {
            let force = if force { "?force=true" } else { "" };
            ApiClient::new(&client)?
                .call(Method::DELETE, &format!("/api/v2/api_keys/{id}{force}"), None)
                .await?;
            println!("revoked {id}");
        }
        Keys::Rotate { id, client } => {
            let created = ApiClient::new(&client)?
                .call(Method::POST, &format!("/api/v2/api_keys/{id}/rotate"), None)
                .await?;
            print_new_key(&created);
            println!("the old key {id} keeps working until the overlap window ends");
        }
    }
    Ok(())
}

pub async fn principals(collection: &str, cmd: Principals) -> Result<()> {
    let path = format!("/api/v2/{collection}");
    match cmd {
        Principals::Create {
            name,
            email,
            org,
            client,
        } => {
            let attrs = json!({ "name": name, "email": email, "org_id": org });
            let created = ApiClient::new(&client)?
                .call(Method::POST, &path, body(collection, attrs))
                .await?;
            println!("{}", named_line(&created["data"]));
        }
        Principals::List { client } => print_list(
            &ApiClient::new(&client)?.call(Method::GET, &path, None).await?,
            named_line,
        ),
        Principals::Suspend { id, undo, client } => {
            let patched = ApiClient::new(&client)?
                .call(
                    Method::PATCH,
                    &format!("{path}/{id}"),
                    body(collection, json!({ "suspended": !undo })),
                )
                .await?;
            println!("{}", named_line(&patched["data"]));
        }
    }
    Ok(())
}

pub async fn roles(cmd: Roles) -> Result<()> {
    match cmd {
        Roles::Create {
            name,
            permissions,
            org,
            client,
        } => {
            let attrs = json!({ "name": name, "permissions": permissions, "org_id": org });
            let created = ApiClient::new(&client)?
                .call(Method::POST, "/api/v2/roles", body("roles", attrs))
                .await?;
            println!("{}", named_line(&created["data"]));
        }
        Roles::List { client } => print_list(
            &ApiClient::new(&client)?
                .call(Method::GET, "/api/v2/roles", None)
                .await?,
            named_line,
        ),
        Roles::Assign {
            role,
            principal,
            client,
        } => {
            let rel = json!({ "data": { "type": "principals", "id": principal } });
            ApiClient::new(&client)?
                .call(Method::POST, &format!("/api/v2/roles/{role}/principals"), Some(rel))
                .await?;
            println!("assigned role {role} to {principal}");
        }
    }
    Ok(())
}

pub async fn orgs(cmd: Orgs) -> Result<()> {
    match cmd {
        Orgs::Create { name, client } => {
            let created = ApiClient::new(&client)?
                .call(Method::POST, "/api/v2/orgs", body("orgs", json!({ "name": name })))
                .await?;
            println!("{}", named_line(&created["data"]));
        }
        Orgs::List { client } => print_list(
            &ApiClient::new(&client)?.call(Method::GET, "/api/v2/orgs", None).await?,
            named_line,
        ),
    }
    Ok(())
}

#[derive(Subcommand)]
pub enum CloudAuth {
    /// Register an AWS account for your organization (mappings may only name registered accounts).
    AddAccount {
        account_id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List registered AWS accounts.
    Accounts {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Unregister an AWS account.
    RemoveAccount {
        account_id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Map an ARN pattern to a user or service account (email or id) for `login aws`.
    AddPersona {
        arn_pattern: String,
        account_identifier: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Map an ARN pattern to managed intake keys (`agent-key`).
    AddIntake {
        arn_pattern: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List persona and intake mappings.
    Mappings {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete a mapping (an intake mapping's keys are revoked with it).
    RemoveMapping {
        id: String,
        /// It is an intake mapping.
        #[arg(long)]
        intake: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
}

const CLOUD: &str = "/api/v2/cloud_auth/aws";

fn mapping_line(v: &Value) -> String {
    let a = &v["attributes"];
    format!(
        "{}  {}  {}",
        v["id"].as_str().unwrap_or("?"),
        a["arn_pattern"].as_str().unwrap_or(""),
        a["account_identifier"].as_str().unwrap_or("(intake)")
    )
}

pub async fn cloud_auth(cmd: CloudAuth) -> Result<()> {
    match cmd {
        CloudAuth::AddAccount { account_id, client } => {
            ApiClient::new(&client)?
                .call(
                    Method::POST,
                    &format!("{CLOUD}/accounts"),
                    body("aws_accounts", json!({ "account_id": account_id })),
                )
                .await?;
            println!("registered AWS account {account_id}");
        }
        CloudAuth::Accounts { client } => print_list(
            &ApiClient::new(&client)?
                .call(Method::GET, &format!("{CLOUD}/accounts"), None)
                .await?,
            |v| v["id"].as_str().unwrap_or("?").to_owned(),
        ),
        CloudAuth::RemoveAccount { account_id, client } => {
            ApiClient::new(&client)?
                .call(Method::DELETE, &format!("{CLOUD}/accounts/{account_id}"), None)
                .await?;
            println!("removed AWS account {account_id}");
        }
        CloudAuth::AddPersona {
            arn_pattern,
            account_identifier,
            client,
        } => {
            let created = ApiClient::new(&client)?
                .call(
                    Method::POST,
                    &format!("{CLOUD}/persona_mapping"),
                    body(
                        "aws_cloud_auth_config",
                        json!({ "arn_pattern": arn_pattern, "account_identifier": account_identifier }),
                    ),
                )
                .await?;
            println!("{}", mapping_line(&created["data"]));
        }
        CloudAuth::AddIntake { arn_pattern, client } => {
            let created = ApiClient::new(&client)?
                .call(
                    Method::POST,
                    &format!("{CLOUD}/intake_mapping"),
                    body("aws_cloud_auth_intake_mapping", json!({ "arn_pattern": arn_pattern })),
                )
                .await?;
            println!("{}", mapping_line(&created["data"]));
        }
        CloudAuth::Mappings { client } => {
            let api = ApiClient::new(&client)?;
            print_list(
                &api.call(Method::GET, &format!("{CLOUD}/persona_mapping"), None).await?,
                mapping_line,
            );
            print_list(
                &api.call(Method::GET, &format!("{CLOUD}/intake_mapping"), None).await?,
                mapping_line,
            );
        }
        CloudAuth::RemoveMapping { id, intake, client } => {
            let kind = if intake { "intake_mapping" } else { "persona_mapping" };
            ApiClient::new(&client)?
                .call(Method::DELETE, &format!("{CLOUD}/{kind}/{id}"), None)
                .await?;
            println!("removed mapping {id}");
        }
    }
    Ok(())
}
