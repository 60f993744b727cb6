//! `postern audit`: the audit log.

use chrono::Utc;
use serde_json::Value;
use uuid::Uuid;

use super::{Client, ListQuery, RemoteOpts};
use crate::expiry::parse_rfc3339;
use crate::output::{self, Table};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    remote: RemoteOpts,
    /// Only events caused by this actor
    #[arg(long, value_name = "ACTOR_ID")]
    actor: Option<Uuid>,
    /// Only events of this action, such as token.create or actor.disable
    #[arg(long)]
    action: Option<String>,
    /// Only events at or after this instant (RFC 3339), or this long ago (such as 24h or 7d)
    #[arg(long, value_name = "RFC3339|DURATION")]
    since: Option<String>,
    /// Fetch at most this many events
    #[arg(long)]
    limit: Option<usize>,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let since = args.since.as_deref().map(parse_since).transpose()?;
    let client = Client::new(&args.remote)?;
    let mut query = ListQuery::new("/v1/audit-events");
    if let Some(actor) = args.actor {
        query.params.push(("actor_id", actor.to_string()));
    }
    if let Some(action) = args.action {
        query.params.push(("action", action));
    }
    if let Some(since) = since {
        query.params.push(("since", since));
    }
    query.limit = args.limit;
    let events = client.list(query).await?;
    if client.json {
        return output::print_json(&Value::Array(events));
    }
    let mut table = Table::new(&["TIME", "ACTION", "OBJECT", "OBJECT ID", "ACTOR", "SOURCE"]);
    for event in &events {
        table.row(vec![
            output::date(event, "occurred_at", "-"),
            output::text(event, "action"),
            output::text(event, "object_type"),
            output::text(event, "object_id"),
            output::text(event, "actor_id"),
            output::text(event, "source_ip"),
        ]);
    }
    table.print()
}

fn parse_since(value: &str) -> anyhow::Result<String> {
    if let Ok(duration) = postern_domain::rules::parse_duration(value) {
        return Ok(output::full_date(Utc::now() - duration));
    }
    parse_rfc3339("--since", value).map(output::full_date)
}
