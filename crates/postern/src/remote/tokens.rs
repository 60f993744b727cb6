//! `postern tokens`: tokens of service accounts and API clients.

use chrono::Utc;
use clap::Subcommand;
use serde_json::{json, Value};
use uuid::Uuid;

use super::{confirm, object, timestamp, Client, ListQuery, RemoteOpts};
use crate::expiry::ExpiryArgs;
use crate::output;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    remote: RemoteOpts,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create another token for an actor (the secret is printed last, once)
    #[command(after_help = "Example:\n  \
        postern tokens create --actor <ACTOR_ID> --name rotation-2 --expires-in 30d | tail -1")]
    Create {
        /// Id of the service account or API client
        #[arg(long)]
        actor: Uuid,
        /// Name of the token [default: chosen by the portal]
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        expiry: ExpiryArgs,
    },
    /// List an actor's tokens
    #[command(after_help = "Example:\n  postern tokens list --actor <ACTOR_ID>")]
    List {
        /// Id of the service account or API client
        #[arg(long)]
        actor: Uuid,
    },
    /// Revoke one token: it stops working at once
    #[command(after_help = "Example:\n  postern tokens revoke --actor <ACTOR_ID> <TOKEN_ID>")]
    Revoke {
        /// Id of the service account or API client
        #[arg(long)]
        actor: Uuid,
        /// Id of the token
        token_id: Uuid,
    },
    /// Revoke every active token of an actor
    #[command(
        name = "revoke-all",
        after_help = "Example:\n  postern tokens revoke-all --actor <ACTOR_ID> --yes"
    )]
    RevokeAll {
        /// Id of the service account or API client
        #[arg(long)]
        actor: Uuid,
        /// Do not ask for confirmation (required when not on a terminal)
        #[arg(long)]
        yes: bool,
    },
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    if let Command::Create { expiry, .. } = &args.command {
        expiry.resolve(Utc::now())?;
    }
    let client = Client::new(&args.remote)?;
    match args.command {
        Command::Create {
            actor,
            name,
            expiry,
        } => {
            let body = object(vec![
                ("name", name.map(Value::String)),
                ("expires_at", expiry.resolve(Utc::now())?.map(timestamp)),
            ]);
            let path = format!("/v1/actors/{actor}/tokens");
            let token = client.post(&path, &body).await?;
            print_created(&client, &token)
        }
        Command::List { actor } => {
            let path = format!("/v1/actors/{actor}/tokens");
            print_list(&client, &path).await
        }
        Command::Revoke { actor, token_id } => {
            let path = format!("/v1/actors/{actor}/tokens/{token_id}");
            print_revoked(&client, &path, token_id).await
        }
        Command::RevokeAll { actor, yes } => {
            if !yes {
                confirm(&format!("Revoke every token of actor {actor}?"))?;
            }
            let result = client.delete(&format!("/v1/actors/{actor}/tokens")).await?;
            if client.json {
                return output::print_json(&result);
            }
            let revoked = result.get("revoked").and_then(Value::as_u64).unwrap_or(0);
            eprintln!("revoked {revoked} token(s)");
            println!("{revoked}");
            Ok(())
        }
    }
}

/// Prints a token just created (of an actor or a site): its fields, then the secret last.
pub fn print_created(client: &Client, token: &Value) -> anyhow::Result<()> {
    if client.json {
        return output::print_json(token);
    }
    output::print_fields(&[
        ("token id", output::text(token, "id")),
        ("token name", output::text(token, "name")),
        ("kind", output::text(token, "kind")),
        ("expires", output::date(token, "expires_at", "-")),
    ])?;
    let Some(secret) = token.get("secret").and_then(Value::as_str) else {
        anyhow::bail!("the portal created the token but returned no secret");
    };
    output::print_secret(secret)
}

pub async fn print_list(client: &Client, path: &str) -> anyhow::Result<()> {
    let tokens = client.list(ListQuery::new(path)).await?;
    if client.json {
        return output::print_json(&Value::Array(tokens));
    }
    output::print_tokens(&tokens)
}

pub async fn print_revoked(client: &Client, path: &str, token_id: Uuid) -> anyhow::Result<()> {
    let token = client.delete(path).await?;
    if client.json {
        let token = if token.is_null() {
            json!({ "id": token_id, "revoked": true })
        } else {
            token
        };
        return output::print_json(&token);
    }
    eprintln!("token {token_id} revoked");
    Ok(())
}
