//! `postern tokens`: tokens of service accounts and API clients.

use std::io::IsTerminal;

use anyhow::Context;
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
    #[command(flatten)]
    Manage(Manage),
    /// Revoke a token you hold (one that leaked, say) by presenting it: no API token needed.
    /// Reads the token from standard input or --file, never from the command line
    #[command(
        name = "revoke-presented",
        after_help = "Examples:\n  \
        postern tokens revoke-presented --api-url https://portal.example.com < leaked.txt\n  \
        postern tokens revoke-presented --file /etc/postern/token\n\n\
        Any kind of Postern token works (client, gateway, API). The portal answers whether the \
        text was one of its tokens; a text that is not counts as a failed authentication of \
        your address."
    )]
    RevokePresented {
        /// Read the token from this file instead of standard input
        #[arg(long, value_name = "PATH")]
        file: Option<std::path::PathBuf>,
    },
}

/// What needs an API token (POSTERN_API_TOKEN).
#[derive(Subcommand)]
enum Manage {
    /// Create another token for an actor (the secret is printed last, once)
    #[command(after_help = "Examples:\n  \
        postern tokens create --actor <ACTOR_ID> --name rotation-2 --expires-in 30d | tail -1\n  \
        postern tokens create --actor <ACTOR_ID> --name ci --max-clients 20 --allow-source 10.0.0.0/8\n  \
        postern tokens create --actor <ACTOR_ID> --name kiosks --require-approval")]
    Create {
        /// Id of the service account or API client
        #[arg(long)]
        actor: Uuid,
        /// Name of the token [default: chosen by the portal]
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        expiry: ExpiryArgs,
        /// Service accounts: at most this many devices connected with the token at once (the
        /// next one is refused and its client exits with code 5)
        #[arg(long, value_name = "N")]
        max_clients: Option<u32>,
        /// Service accounts: accept sessions only from this network (CIDR or address; repeat
        /// for several); others are refused and their client exits with code 4
        #[arg(long = "allow-source", value_name = "CIDR")]
        allow_source: Vec<String>,
        /// Service accounts: a device new to the portal is granted nothing until an
        /// administrator approves it (postern clients approve)
        #[arg(long)]
        require_approval: bool,
        /// Service accounts: every device using the token is ephemeral (removed when it stops,
        /// or a while after it vanished), as if started with postern-client --ephemeral
        #[arg(long)]
        ephemeral: bool,
    },
    /// Rename a service account's token or change its guardrails, live for its connected
    /// devices
    #[command(after_help = "Examples:\n  \
        postern tokens update --actor <ACTOR_ID> <TOKEN_ID> --max-clients 50\n  \
        postern tokens update --actor <ACTOR_ID> <TOKEN_ID> --no-max-clients --any-source\n  \
        postern tokens update --actor <ACTOR_ID> <TOKEN_ID> --allow-source 10.0.0.0/8 --allow-source 192.0.2.7\n  \
        postern tokens update --actor <ACTOR_ID> <TOKEN_ID> --require-approval false")]
    Update {
        /// Id of the service account
        #[arg(long)]
        actor: Uuid,
        /// Id of the token
        token_id: Uuid,
        /// A new name
        #[arg(long)]
        name: Option<String>,
        /// At most this many devices at once; lowering it leaves connected devices be
        #[arg(long, value_name = "N", conflicts_with = "no_max_clients")]
        max_clients: Option<u32>,
        /// Remove the limit on devices
        #[arg(long)]
        no_max_clients: bool,
        /// Accept sessions only from these networks (repeat for several; replaces the list);
        /// connected devices outside them are disconnected at once
        #[arg(
            long = "allow-source",
            value_name = "CIDR",
            conflicts_with = "any_source"
        )]
        allow_source: Vec<String>,
        /// Accept sessions from anywhere
        #[arg(long)]
        any_source: bool,
        /// Whether new devices wait for approval (`false` lets the waiting ones in)
        #[arg(long, value_name = "true|false")]
        require_approval: Option<bool>,
        /// Whether the devices using the token are ephemeral
        #[arg(long, value_name = "true|false")]
        ephemeral: Option<bool>,
    },
    /// List an actor's tokens
    #[command(after_help = "Example:\n  postern tokens list --actor <ACTOR_ID>")]
    List {
        /// Id of the service account or API client
        #[arg(long)]
        actor: Uuid,
    },
    /// Tokens of the whole account (every service account, API client and site) that expire
    /// soon, the soonest first
    #[command(after_help = "Examples:\n  \
        postern tokens expiring                 # within the account's warning period (30 days by default)\n  \
        postern tokens expiring --within 7d --kind client\n  \
        postern tokens expiring --json | jq -r '.[] | \"\\(.holder_name) \\(.name) \\(.expires_at)\"'\n\n\
        The warning period is an account setting: postern account update --token-expiry-warning-days N")]
    Expiring {
        /// Expiring within this long instead of the account's warning period (e.g. 7d, 12h)
        #[arg(long, value_name = "DURATION")]
        within: Option<String>,
        /// Only tokens of this kind
        #[arg(long, value_parser = ["client", "gateway", "api"])]
        kind: Option<String>,
    },
    /// Rotate a token without downtime: a successor now, the old token until the window ends
    #[command(after_help = "Examples:\n  \
        postern tokens rotate --actor <ACTOR_ID> <TOKEN_ID>\n  \
        postern tokens rotate --actor <ACTOR_ID> <TOKEN_ID> --overlap 1h --json | jq -r .successor.secret\n\n\
        The successor gets the same guardrails, the name with a \"(rotated DATE)\" suffix and as \
        long a life as the old token had (within the account's longest lifetime); its secret is \
        printed last, once. Every client connected with the old token is handed the successor: \
        it writes it to its token file (0600, same owner) and reconnects with it without \
        dropping its tunnels. A client started with POSTERN_TOKEN cannot persist it and says so \
        in its log and status; a client offline during the whole window needs the new token \
        by hand. `postern tokens list --actor <ACTOR_ID>` shows how many clients moved.")]
    Rotate {
        /// Id of the service account or API client
        #[arg(long)]
        actor: Uuid,
        /// Id of the token to rotate
        token_id: Uuid,
        /// How long the old token keeps working beside its successor (e.g. 24h, 90m, 7d) [default: 24h]
        #[arg(long, value_name = "DURATION")]
        overlap: Option<String>,
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
    match args.command {
        Command::Manage(command) => manage(&args.remote, command).await,
        Command::RevokePresented { file } => revoke_presented(&args.remote, file.as_deref()).await,
    }
}

async fn manage(remote: &RemoteOpts, command: Manage) -> anyhow::Result<()> {
    use Manage as Command;
    if let Command::Create { expiry, .. } = &command {
        expiry.resolve(Utc::now())?;
    }
    let client = Client::new(remote)?;
    match command {
        Command::Create {
            actor,
            name,
            expiry,
            max_clients,
            allow_source,
            require_approval,
            ephemeral,
        } => {
            let body = object(vec![
                ("name", name.map(Value::String)),
                ("expires_at", expiry.resolve(Utc::now())?.map(timestamp)),
                ("max_clients", max_clients.map(Value::from)),
                (
                    "allowed_source_cidrs",
                    (!allow_source.is_empty()).then(|| json!(allow_source)),
                ),
                (
                    "require_approval",
                    require_approval.then_some(Value::Bool(true)),
                ),
                ("ephemeral", ephemeral.then_some(Value::Bool(true))),
            ]);
            let path = format!("/v1/actors/{actor}/tokens");
            let token = client.post(&path, &body).await?;
            print_created(&client, &token)
        }
        Command::Update {
            actor,
            token_id,
            name,
            max_clients,
            no_max_clients,
            allow_source,
            any_source,
            require_approval,
            ephemeral,
        } => {
            let mut body = object(vec![
                ("name", name.map(Value::String)),
                ("max_clients", max_clients.map(Value::from)),
                (
                    "allowed_source_cidrs",
                    (!allow_source.is_empty() || any_source).then(|| json!(allow_source)),
                ),
                ("require_approval", require_approval.map(Value::Bool)),
                ("ephemeral", ephemeral.map(Value::Bool)),
            ]);
            if no_max_clients {
                body["max_clients"] = Value::Null;
            }
            if body.as_object().is_some_and(|fields| fields.is_empty()) {
                anyhow::bail!(
                    "nothing to change: give --name, --max-clients, --no-max-clients, \
                     --allow-source, --any-source, --require-approval or --ephemeral"
                );
            }
            let path = format!("/v1/actors/{actor}/tokens/{token_id}");
            let token = client.patch(&path, &body).await?;
            if client.json {
                return output::print_json(&token);
            }
            output::print_fields(&[
                ("token id", output::text(&token, "id")),
                ("token name", output::text(&token, "name")),
                ("guardrails", output::guardrails(&token)),
            ])
        }
        Command::Expiring { within, kind } => {
            let mut query = ListQuery::new("/v1/tokens");
            match within {
                Some(within) => {
                    let within = postern_domain::rules::parse_duration(&within)
                        .map_err(|err| anyhow::anyhow!("--within: {}", err.message))?;
                    query
                        .params
                        .push(("expires_before", (Utc::now() + within).to_rfc3339()));
                }
                None => query.params.push(("expiring", "true".to_string())),
            }
            if let Some(kind) = kind {
                query.params.push(("kind", kind));
            }
            let mut tokens = client.list(query).await?;
            tokens.sort_by_key(|token| {
                output::text(token, "expires_at")
                    .parse::<chrono::DateTime<Utc>>()
                    .ok()
            });
            if client.json {
                return output::print_json(&Value::Array(tokens));
            }
            if tokens.is_empty() {
                eprintln!("no live token expires in that period");
                return Ok(());
            }
            output::print_expiring_tokens(&tokens)
        }
        Command::List { actor } => {
            let path = format!("/v1/actors/{actor}/tokens");
            print_list(&client, &path).await
        }
        Command::Revoke { actor, token_id } => {
            let path = format!("/v1/actors/{actor}/tokens/{token_id}");
            print_revoked(&client, &path, token_id).await
        }
        Command::Rotate {
            actor,
            token_id,
            overlap,
        } => {
            let path = format!("/v1/actors/{actor}/tokens/{token_id}/rotate");
            let body = object(vec![("overlap", overlap.map(Value::String))]);
            let rotation = client.post(&path, &body).await?;
            if client.json {
                return output::print_json(&rotation);
            }
            let rotated = &rotation["rotated"];
            eprintln!(
                "token {token_id} rotated: it keeps working until {}, while the clients using it \
                 move to the successor",
                output::date(rotated, "expires_at", "-")
            );
            print_created(&client, &rotation["successor"])
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

/// `postern tokens revoke-presented`: the token read from `file` or standard input.
async fn revoke_presented(
    remote: &RemoteOpts,
    file: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let text = match file {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the token file {}", path.display()))?,
        None => {
            if std::io::stdin().is_terminal() {
                eprintln!("paste the token, then press Enter:");
            }
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .context("cannot read the token from standard input")?;
            line
        }
    };
    let token = text.trim();
    if token.is_empty() {
        anyhow::bail!("no token given: pipe it to standard input or name a file with --file");
    }
    let client = Client::anonymous(remote)?;
    let body = json!({ "token": token });
    let revoked = client.post("/v1/tokens/revoke-presented", &body).await?;
    if client.json {
        return output::print_json(&revoked);
    }
    let token_id = output::text(&revoked, "token_id");
    let kind = output::text(&revoked, "kind");
    if revoked.get("newly_revoked").and_then(Value::as_bool) == Some(false) {
        eprintln!("{kind} token {token_id} was already revoked; nothing changed");
    } else {
        eprintln!("{kind} token {token_id} revoked: every session using it ends now");
    }
    Ok(())
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
        ("guardrails", output::guardrails(token)),
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
