//! `postern service-accounts`: machine identities and their initial tokens.

use chrono::Utc;
use clap::Subcommand;
use reqwest::Method;
use serde_json::{json, Value};

use super::{confirm, object, timestamp, Client, ListQuery, RemoteOpts};
use crate::expiry::ExpiryArgs;
use crate::output::{self, Table};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    remote: RemoteOpts,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a service account and its first token (the token is printed last, once)
    #[command(after_help = "Examples:\n  \
        postern service-accounts create ci-runner --group engineering --expires-in 30d\n  \
        TOKEN=$(postern sa create backup-agent --token-name nas-1 --expires-at 2027-01-01T00:00:00Z | tail -1)")]
    Create(CreateArgs),
    /// List service accounts
    #[command(after_help = "Example:\n  postern service-accounts list --name ci")]
    List {
        /// Only those whose name contains this text (case-insensitive)
        #[arg(long)]
        name: Option<String>,
        /// Fetch at most this many
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Show a service account and its tokens
    #[command(after_help = "Example:\n  postern service-accounts show ci-runner")]
    Show {
        /// Id or name of the service account
        id: String,
    },
    /// Disable a service account: its tokens stop working until it is enabled again
    #[command(after_help = "Example:\n  postern service-accounts disable ci-runner")]
    Disable {
        /// Id or name of the service account
        id: String,
    },
    /// Enable a disabled service account
    #[command(after_help = "Example:\n  postern service-accounts enable ci-runner")]
    Enable {
        /// Id or name of the service account
        id: String,
    },
    /// Delete a service account with its tokens and memberships
    #[command(after_help = "Example:\n  postern service-accounts delete ci-runner --yes")]
    Delete {
        /// Id or name of the service account
        id: String,
        /// Do not ask for confirmation (required when not on a terminal)
        #[arg(long)]
        yes: bool,
    },
}

#[derive(clap::Args)]
struct CreateArgs {
    /// Name of the service account
    name: String,
    /// Group to add it to, by id or name (repeatable)
    #[arg(long = "group", value_name = "GROUP_ID_OR_NAME")]
    groups: Vec<String>,
    /// Name of the first token [default: chosen by the portal]
    #[arg(long)]
    token_name: Option<String>,
    #[command(flatten)]
    expiry: ExpiryArgs,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    if let Command::Create(create) = &args.command {
        // Bad input is reported before anything else, even before a missing token.
        create.expiry.resolve(Utc::now())?;
    }
    let client = Client::new(&args.remote)?;
    match args.command {
        Command::Create(create) => create_account(&client, create).await,
        Command::List { name, limit } => list(&client, name, limit).await,
        Command::Show { id } => show(&client, &id).await,
        Command::Disable { id } => set_disabled(&client, &id, true).await,
        Command::Enable { id } => set_disabled(&client, &id, false).await,
        Command::Delete { id, yes } => delete(&client, &id, yes).await,
    }
}

/// Prints one actor as labelled fields.
pub fn print_actor(actor: &Value) -> anyhow::Result<()> {
    output::print_fields(&[
        ("id", output::text(actor, "id")),
        ("name", output::text(actor, "name")),
        ("type", output::text(actor, "type")),
        ("status", actor_status(actor).to_string()),
        ("last seen", output::date(actor, "last_seen_at", "never")),
        ("created", output::date(actor, "created_at", "-")),
    ])
}

async fn create_account(client: &Client, args: CreateArgs) -> anyhow::Result<()> {
    let expires_at = args.expiry.resolve(Utc::now())?;
    let mut group_ids = Vec::new();
    for group in &args.groups {
        group_ids.push(
            client
                .resolve(ListQuery::new("/v1/groups"), "group", group)
                .await?,
        );
    }
    let token = object(vec![
        ("name", args.token_name.map(Value::String)),
        ("expires_at", expires_at.map(timestamp)),
    ]);
    let body = json!({
        "type": "service_account",
        "name": args.name,
        "group_ids": group_ids,
        "token": token,
    });
    let response = client
        .request(Method::POST, "/v1/actors", &[], Some(&body))
        .await?;
    if client.json {
        return output::print_json(&response);
    }
    let actor = response.get("data").cloned().unwrap_or(Value::Null);
    let token = response.get("token").cloned().unwrap_or(Value::Null);
    print_actor(&actor)?;
    output::print_fields(&[
        ("token id", output::text(&token, "id")),
        ("token name", output::text(&token, "name")),
        ("expires", output::date(&token, "expires_at", "-")),
    ])?;
    let Some(secret) = token.get("secret").and_then(Value::as_str) else {
        anyhow::bail!("the portal created the service account but returned no token");
    };
    output::print_secret(secret)
}

async fn list(client: &Client, name: Option<String>, limit: Option<usize>) -> anyhow::Result<()> {
    let mut query = ListQuery::new("/v1/actors");
    query.params.push(("type", "service_account".to_string()));
    if let Some(name) = name {
        query.params.push(("name", name));
    }
    query.limit = limit;
    let actors = client.list(query).await?;
    if client.json {
        return output::print_json(&Value::Array(actors));
    }
    let mut table = Table::new(&["ID", "NAME", "STATUS", "LAST SEEN", "CREATED"]);
    for actor in &actors {
        table.row(vec![
            output::text(actor, "id"),
            output::text(actor, "name"),
            actor_status(actor).to_string(),
            output::date(actor, "last_seen_at", "never"),
            output::date(actor, "created_at", "-"),
        ]);
    }
    table.print()
}

async fn show(client: &Client, input: &str) -> anyhow::Result<()> {
    let id = resolve(client, input).await?;
    let actor = client.get(&format!("/v1/actors/{id}")).await?;
    let tokens = client
        .list(ListQuery::new(&format!("/v1/actors/{id}/tokens")))
        .await?;
    if client.json {
        return output::print_json(&json!({ "actor": actor, "tokens": tokens }));
    }
    print_actor(&actor)?;
    println!();
    output::print_tokens(&tokens)
}

async fn set_disabled(client: &Client, input: &str, disabled: bool) -> anyhow::Result<()> {
    let id = resolve(client, input).await?;
    let actor = client
        .patch(
            &format!("/v1/actors/{id}"),
            &json!({ "disabled": disabled }),
        )
        .await?;
    if client.json {
        return output::print_json(&actor);
    }
    let verb = if disabled { "disabled" } else { "enabled" };
    eprintln!("service account '{}' {verb}", output::text(&actor, "name"));
    Ok(())
}

async fn delete(client: &Client, input: &str, yes: bool) -> anyhow::Result<()> {
    let id = resolve(client, input).await?;
    let path = format!("/v1/actors/{id}");
    if !yes {
        let actor = client.get(&path).await?;
        confirm(&format!(
            "Delete service account '{}' ({id}) and all its tokens?",
            output::text(&actor, "name")
        ))?;
    }
    client.delete(&path).await?;
    eprintln!("service account {id} deleted");
    Ok(())
}

/// The id of the service account named or identified by `input`.
pub async fn resolve(client: &Client, input: &str) -> anyhow::Result<uuid::Uuid> {
    let mut query = ListQuery::new("/v1/actors");
    query.params.push(("type", "service_account".to_string()));
    client.resolve(query, "service account", input).await
}

fn actor_status(actor: &Value) -> &'static str {
    if actor.get("disabled_at").is_some_and(|v| !v.is_null()) {
        "disabled"
    } else {
        "active"
    }
}
