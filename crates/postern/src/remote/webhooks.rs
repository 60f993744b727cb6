//! `postern webhooks`: the account's webhooks, their delivery log, and test events.

use clap::Subcommand;
use postern_domain::webhooks::WebhookEvent;
use serde_json::{json, Value};
use uuid::Uuid;

use super::{object, Client, ListQuery, RemoteOpts};
use crate::output::{self, Table};

fn event_parser() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(WebhookEvent::subscribable_names())
}

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    remote: RemoteOpts,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Add a webhook; its signing secret is printed last, once
    #[command(after_help = "Examples:\n  \
        postern webhooks create --url https://hooks.example.com/postern --event token.leaked --event token.expiring\n  \
        postern webhooks create --url https://siem.example.com/in --all-events --description 'SIEM'\n\n\
        Deliveries are POSTed as JSON, signed in the header Postern-Signature (t=<unix>,v1=<HMAC-SHA-256 \
        of \"<t>.<body>\" keyed with the secret>), retried with backoff for a day. See docs/webhooks.md.")]
    Create {
        /// Where events are POSTed (https://, or http:// to this machine)
        #[arg(long)]
        url: String,
        /// An event to send (repeat for several)
        #[arg(long = "event", value_name = "EVENT", value_parser = event_parser(), required_unless_present = "all_events")]
        events: Vec<String>,
        /// Send every event
        #[arg(long, conflicts_with = "events")]
        all_events: bool,
        /// What it is for, shown in lists
        #[arg(long)]
        description: Option<String>,
    },
    /// List the account's webhooks
    #[command(after_help = "Example:\n  postern webhooks list")]
    List,
    /// Change a webhook's URL, events, description, or pause it
    #[command(after_help = "Examples:\n  \
        postern webhooks update <WEBHOOK_ID> --enabled false\n  \
        postern webhooks update <WEBHOOK_ID> --event token.revoked --event token.leaked")]
    Update {
        /// Id of the webhook (postern webhooks list)
        webhook_id: Uuid,
        /// A new endpoint URL
        #[arg(long)]
        url: Option<String>,
        /// The events to send from now on (repeat; replaces the list)
        #[arg(long = "event", value_name = "EVENT", value_parser = event_parser())]
        events: Vec<String>,
        /// A new description
        #[arg(long)]
        description: Option<String>,
        /// `false` pauses deliveries (they wait for `true`)
        #[arg(long, value_name = "true|false")]
        enabled: Option<bool>,
    },
    /// Delete a webhook and its delivery log
    #[command(after_help = "Example:\n  postern webhooks delete <WEBHOOK_ID>")]
    Delete {
        /// Id of the webhook (postern webhooks list)
        webhook_id: Uuid,
    },
    /// Send a webhook.test event to a webhook now
    #[command(
        after_help = "Example:\n  postern webhooks test <WEBHOOK_ID> && postern webhooks deliveries <WEBHOOK_ID>"
    )]
    Test {
        /// Id of the webhook (postern webhooks list)
        webhook_id: Uuid,
    },
    /// A webhook's deliveries, newest first: state, tries, the receiver's last answer
    #[command(after_help = "Example:\n  postern webhooks deliveries <WEBHOOK_ID> --limit 20")]
    Deliveries {
        /// Id of the webhook (postern webhooks list)
        webhook_id: Uuid,
        /// Fetch at most this many
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let client = Client::new(&args.remote)?;
    match args.command {
        Command::Create {
            url,
            events,
            all_events,
            description,
        } => {
            let events: Vec<String> = if all_events {
                WebhookEvent::subscribable_names()
                    .map(str::to_string)
                    .collect()
            } else {
                events
            };
            let body = object(vec![
                ("url", Some(Value::String(url))),
                ("events", Some(json!(events))),
                ("description", description.map(Value::String)),
            ]);
            let created = client.post("/v1/webhooks", &body).await?;
            if client.json {
                return output::print_json(&created);
            }
            print_webhook(&created)?;
            let Some(secret) = created.get("secret").and_then(Value::as_str) else {
                anyhow::bail!("the portal created the webhook but returned no secret");
            };
            output::print_secret(secret)
        }
        Command::List => {
            let webhooks = client.list(ListQuery::new("/v1/webhooks")).await?;
            if client.json {
                return output::print_json(&Value::Array(webhooks));
            }
            let mut table = Table::new(&["ID", "URL", "EVENTS", "ENABLED", "DESCRIPTION"]);
            for webhook in &webhooks {
                table.row(vec![
                    output::text(webhook, "id"),
                    output::text(webhook, "url"),
                    events_text(webhook),
                    enabled_text(webhook),
                    webhook["description"].as_str().unwrap_or("-").to_string(),
                ]);
            }
            table.print()
        }
        Command::Update {
            webhook_id,
            url,
            events,
            description,
            enabled,
        } => {
            let body = object(vec![
                ("url", url.map(Value::String)),
                ("events", (!events.is_empty()).then(|| json!(events))),
                ("description", description.map(Value::String)),
                ("enabled", enabled.map(Value::Bool)),
            ]);
            if body.as_object().is_some_and(|fields| fields.is_empty()) {
                anyhow::bail!("nothing to change: give --url, --event, --description or --enabled");
            }
            let webhook = client
                .patch(&format!("/v1/webhooks/{webhook_id}"), &body)
                .await?;
            if client.json {
                return output::print_json(&webhook);
            }
            print_webhook(&webhook)
        }
        Command::Delete { webhook_id } => {
            client.delete(&format!("/v1/webhooks/{webhook_id}")).await?;
            if client.json {
                return output::print_json(&json!({ "id": webhook_id, "deleted": true }));
            }
            eprintln!("webhook {webhook_id} deleted with its delivery log");
            Ok(())
        }
        Command::Test { webhook_id } => {
            let delivery = client
                .post(&format!("/v1/webhooks/{webhook_id}/test"), &json!({}))
                .await?;
            if client.json {
                return output::print_json(&delivery);
            }
            eprintln!(
                "test event queued as delivery {}; see: postern webhooks deliveries {webhook_id}",
                output::text(&delivery, "id")
            );
            Ok(())
        }
        Command::Deliveries { webhook_id, limit } => {
            let path = format!("/v1/webhooks/{webhook_id}/deliveries");
            let mut query = ListQuery::new(&path);
            query.limit = Some(limit);
            let deliveries = client.list(query).await?;
            if client.json {
                return output::print_json(&Value::Array(deliveries));
            }
            let mut table = Table::new(&[
                "CREATED",
                "EVENT",
                "STATE",
                "TRIES",
                "LAST ANSWER",
                "NEXT TRY",
                "ID",
            ]);
            for delivery in &deliveries {
                let answer = match (
                    delivery["last_status"].as_u64(),
                    delivery["last_error"].as_str(),
                ) {
                    (_, Some(error)) => error.to_string(),
                    (Some(status), None) => format!("HTTP {status}"),
                    (None, None) => "-".to_string(),
                };
                table.row(vec![
                    output::date(delivery, "created_at", "-"),
                    output::text(delivery, "event_type"),
                    output::text(delivery, "state"),
                    delivery["attempts"].as_u64().unwrap_or(0).to_string(),
                    answer,
                    output::date(delivery, "next_attempt_at", "-"),
                    output::text(delivery, "id"),
                ]);
            }
            table.print()
        }
    }
}

fn events_text(webhook: &Value) -> String {
    webhook["events"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

fn enabled_text(webhook: &Value) -> String {
    if webhook["enabled"].as_bool() == Some(false) {
        "paused".to_string()
    } else {
        "yes".to_string()
    }
}

fn print_webhook(webhook: &Value) -> anyhow::Result<()> {
    output::print_fields(&[
        ("webhook id", output::text(webhook, "id")),
        ("url", output::text(webhook, "url")),
        ("events", events_text(webhook)),
        ("enabled", enabled_text(webhook)),
    ])
}
