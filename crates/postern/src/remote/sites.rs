//! `postern sites`: sites and their gateway tokens.

use chrono::Utc;
use clap::Subcommand;
use serde_json::{json, Value};
use uuid::Uuid;

use super::{confirm, object, timestamp, tokens, Client, ListQuery, RemoteOpts};
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
    /// List sites
    #[command(after_help = "Example:\n  postern sites list")]
    List {
        /// Fetch at most this many
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Create a site
    #[command(after_help = "Example:\n  postern sites create office-berlin")]
    Create {
        /// Name of the site
        name: String,
    },
    /// Rename a site
    #[command(after_help = "Example:\n  postern sites rename office-berlin berlin-hq")]
    Rename {
        /// Id or name of the site
        id: String,
        /// The new name
        name: String,
    },
    /// Delete a site with its gateway tokens
    #[command(after_help = "Example:\n  postern sites delete office-berlin --yes")]
    Delete {
        /// Id or name of the site
        id: String,
        /// Do not ask for confirmation (required when not on a terminal)
        #[arg(long)]
        yes: bool,
    },
    /// Gateway tokens of a site: create, list, revoke
    #[command(
        name = "gateway-tokens",
        subcommand,
        after_help = "Examples:\n  \
            postern sites gateway-tokens create office-berlin --name gw-1 --expires-in 1y | tail -1\n  \
            postern sites gateway-tokens list office-berlin"
    )]
    GatewayTokens(GatewayCommand),
    /// Gateways of a site that opened a session, and whether they are online
    #[command(after_help = "Example:\n  postern sites gateways office-berlin")]
    Gateways {
        /// Id or name of the site
        site_id: String,
    },
}

#[derive(Subcommand)]
enum GatewayCommand {
    /// List a site's gateway tokens
    #[command(after_help = "Example:\n  postern sites gateway-tokens list office-berlin")]
    List {
        /// Id or name of the site
        site_id: String,
    },
    /// Create a gateway token (the secret is printed last, once)
    #[command(
        after_help = "Example:\n  postern sites gateway-tokens create office-berlin --name gw-1 --expires-in 1y"
    )]
    Create {
        /// Id or name of the site
        site_id: String,
        /// Name of the token [default: chosen by the portal]
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        expiry: ExpiryArgs,
    },
    /// Revoke a gateway token
    #[command(
        after_help = "Example:\n  postern sites gateway-tokens revoke office-berlin <TOKEN_ID>"
    )]
    Revoke {
        /// Id or name of the site
        site_id: String,
        /// Id of the token
        token_id: Uuid,
    },
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    if let Command::GatewayTokens(GatewayCommand::Create { expiry, .. }) = &args.command {
        expiry.resolve(Utc::now())?;
    }
    let client = Client::new(&args.remote)?;
    match args.command {
        Command::List { limit } => list(&client, limit).await,
        Command::Create { name } => {
            let site = client.post("/v1/sites", &json!({ "name": name })).await?;
            print_site(&client, &site, "created")
        }
        Command::Rename { id, name } => {
            let id = resolve(&client, &id).await?;
            let site = client
                .patch(&format!("/v1/sites/{id}"), &json!({ "name": name }))
                .await?;
            print_site(&client, &site, "renamed")
        }
        Command::Delete { id, yes } => {
            let id = resolve(&client, &id).await?;
            if !yes {
                confirm(&format!(
                    "Delete site {id}, its resources and its gateway tokens?"
                ))?;
            }
            client.delete(&format!("/v1/sites/{id}")).await?;
            eprintln!("site {id} deleted");
            Ok(())
        }
        Command::GatewayTokens(command) => gateway_tokens(&client, command).await,
        Command::Gateways { site_id } => {
            let id = resolve(&client, &site_id).await?;
            let gateways = client
                .list(ListQuery::new(&format!("/v1/sites/{id}/gateways")))
                .await?;
            super::clients::print_devices(&client, gateways)
        }
    }
}

/// The id of the site named or identified by `input`.
pub async fn resolve(client: &Client, input: &str) -> anyhow::Result<Uuid> {
    client
        .resolve(ListQuery::new("/v1/sites"), "site", input)
        .await
}

async fn gateway_tokens(client: &Client, command: GatewayCommand) -> anyhow::Result<()> {
    match command {
        GatewayCommand::List { site_id } => {
            let id = resolve(client, &site_id).await?;
            tokens::print_list(client, &format!("/v1/sites/{id}/gateway_tokens")).await
        }
        GatewayCommand::Create {
            site_id,
            name,
            expiry,
        } => {
            let id = resolve(client, &site_id).await?;
            let body = object(vec![
                ("name", name.map(Value::String)),
                ("expires_at", expiry.resolve(Utc::now())?.map(timestamp)),
            ]);
            let token = client
                .post(&format!("/v1/sites/{id}/gateway_tokens"), &body)
                .await?;
            tokens::print_created(client, &token)
        }
        GatewayCommand::Revoke { site_id, token_id } => {
            let id = resolve(client, &site_id).await?;
            let path = format!("/v1/sites/{id}/gateway_tokens/{token_id}");
            tokens::print_revoked(client, &path, token_id).await
        }
    }
}

async fn list(client: &Client, limit: Option<usize>) -> anyhow::Result<()> {
    let mut query = ListQuery::new("/v1/sites");
    query.limit = limit;
    let sites = client.list(query).await?;
    if client.json {
        return output::print_json(&Value::Array(sites));
    }
    let mut table = Table::new(&["ID", "NAME", "CREATED"]);
    for site in &sites {
        table.row(vec![
            output::text(site, "id"),
            output::text(site, "name"),
            output::date(site, "created_at", "-"),
        ]);
    }
    table.print()
}

fn print_site(client: &Client, site: &Value, verb: &str) -> anyhow::Result<()> {
    if client.json {
        return output::print_json(site);
    }
    eprintln!("site '{}' {verb}", output::text(site, "name"));
    println!("{}", output::text(site, "id"));
    Ok(())
}
