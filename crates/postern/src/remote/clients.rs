//! `postern clients`: headless clients that opened a session, whether they are online, and
//! blocking one device on a shared token.

use anyhow::anyhow;
use serde_json::{json, Value};

use super::{service_accounts, Client, ListQuery, RemoteOpts};
use crate::output::{self, Table};

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    remote: RemoteOpts,
    /// Only clients of this service account (id or name)
    #[arg(long, value_name = "ACTOR")]
    actor: Option<String>,
    /// Only clients whose latest session used this token
    #[arg(long, value_name = "TOKEN_ID")]
    token: Option<uuid::Uuid>,
    /// Only clients online now
    #[arg(long)]
    online: bool,
    /// Only blocked clients
    #[arg(long)]
    blocked: bool,
    /// Only clients waiting for an administrator's approval (their token requires one)
    #[arg(long)]
    awaiting_approval: bool,
    /// Only clients whose name or device id contains this (case-insensitive)
    #[arg(long, value_name = "TEXT")]
    search: Option<String>,
    /// Fetch at most this many
    #[arg(long)]
    limit: Option<usize>,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Block one client device: its session ends and its access is withdrawn at once, and its
    /// device id and WireGuard key are refused (it exits with code 4) until unblocked; the
    /// token keeps working for every other device
    Block(Target),
    /// Let a blocked client device connect again
    Unblock(Target),
    /// Approve a client device that waits for it (its token requires approval): it is granted
    /// what its policies allow from now on
    Approve(Target),
}

#[derive(clap::Args)]
struct Target {
    /// The client's device id (as `postern clients` shows it) or its id
    device: String,
    #[command(flatten)]
    remote: RemoteOpts,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        Some(Command::Block(target)) => return act_on(target, Action::Block).await,
        Some(Command::Unblock(target)) => return act_on(target, Action::Unblock).await,
        Some(Command::Approve(target)) => return act_on(target, Action::Approve).await,
        None => {}
    }
    let client = Client::new(&args.remote)?;
    let mut query = ListQuery::new("/v1/clients");
    if let Some(actor) = &args.actor {
        let id = service_accounts::resolve(&client, actor).await?;
        query.params.push(("actor_id", id.to_string()));
    }
    if let Some(token) = args.token {
        query.params.push(("token_id", token.to_string()));
    }
    if args.blocked {
        query.params.push(("blocked", "true".to_string()));
    }
    if args.awaiting_approval {
        query.params.push(("awaiting_approval", "true".to_string()));
    }
    if let Some(search) = args.search {
        query.params.push(("q", search));
    }
    query.limit = args.limit;
    let mut devices = client.list(query).await?;
    if args.online {
        devices.retain(|d| d["online"] == Value::Bool(true));
    }
    print_devices(&client, devices)
}

/// Prints devices (clients or gateways) as a table, or as JSON for scripts.
pub fn print_devices(client: &Client, devices: Vec<Value>) -> anyhow::Result<()> {
    if client.json {
        return output::print_json(&Value::Array(devices));
    }
    let mut table = Table::new(&[
        "DEVICE ID",
        "NAME",
        "STATUS",
        "TUNNEL IPV4",
        "VERSION",
        "LAST SEEN",
        "FROM",
        "TOKEN",
    ]);
    for device in &devices {
        let status = if device["blocked"] == Value::Bool(true) {
            "blocked"
        } else if device["kind"] == "client" && device["approved_at"].is_null() {
            "awaiting approval"
        } else if device["online"] == Value::Bool(true) {
            "online"
        } else {
            "offline"
        };
        let status = match device["ephemeral"] == Value::Bool(true) {
            true => format!("{status}, ephemeral"),
            false => status.to_string(),
        };
        table.row(vec![
            output::text(device, "device_id"),
            output::text(device, "name"),
            status,
            output::text(device, "ipv4"),
            output::text(device, "version"),
            output::date(device, "last_seen_at", "-"),
            output::text(device, "last_seen_ip"),
            output::text(device, "token_id"),
        ]);
    }
    table.print()
}

#[derive(Clone, Copy)]
enum Action {
    Block,
    Unblock,
    Approve,
}

/// Finds the client by device id (or, failing that, by id), then blocks, unblocks or
/// approves it.
async fn act_on(target: Target, action: Action) -> anyhow::Result<()> {
    let client = Client::new(&target.remote)?;
    let mut query = ListQuery::new("/v1/clients");
    query.params.push(("device_id", target.device.clone()));
    query.limit = Some(1);
    let by_device_id = client.list(query).await?;
    let id = match by_device_id.first() {
        Some(found) => output::text(found, "id"),
        None if uuid::Uuid::parse_str(&target.device).is_ok() => target.device.clone(),
        None => {
            return Err(anyhow!(
                "no client with device id '{}' (see postern clients)",
                target.device
            ))
        }
    };
    let verb = match action {
        Action::Block => "block",
        Action::Unblock => "unblock",
        Action::Approve => "approve",
    };
    let device = client
        .post(&format!("/v1/clients/{id}/{verb}"), &json!({}))
        .await?;
    if client.json {
        return output::print_json(&device);
    }
    let device = &device;
    let (device_id, name) = (
        output::text(device, "device_id"),
        output::text(device, "name"),
    );
    match action {
        Action::Block => println!(
            "blocked {device_id} ({name}): its session ended and it is refused until unblocked"
        ),
        Action::Unblock => println!("unblocked {device_id} ({name}): it may connect again"),
        Action::Approve => println!(
            "approved {device_id} ({name}): it is granted what its policies allow from now on"
        ),
    }
    Ok(())
}
