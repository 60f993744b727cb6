//! `postern clients`: headless clients that opened a session, and whether they are online.

use serde_json::Value;

use super::{service_accounts, Client, ListQuery, RemoteOpts};
use crate::output::{self, Table};

#[derive(clap::Args)]
pub struct Args {
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
    /// Fetch at most this many
    #[arg(long)]
    limit: Option<usize>,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let client = Client::new(&args.remote)?;
    let mut query = ListQuery::new("/v1/clients");
    if let Some(actor) = &args.actor {
        let id = service_accounts::resolve(&client, actor).await?;
        query.params.push(("actor_id", id.to_string()));
    }
    if let Some(token) = args.token {
        query.params.push(("token_id", token.to_string()));
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
        let status = if device["online"] == Value::Bool(true) {
            "online"
        } else {
            "offline"
        };
        table.row(vec![
            output::text(device, "device_id"),
            output::text(device, "name"),
            status.to_string(),
            output::text(device, "ipv4"),
            output::text(device, "version"),
            output::date(device, "last_seen_at", "-"),
            output::text(device, "last_seen_ip"),
            output::text(device, "token_id"),
        ]);
    }
    table.print()
}
