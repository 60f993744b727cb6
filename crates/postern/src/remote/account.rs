//! `postern account show|update`: the account the API token belongs to.

use anyhow::bail;
use serde_json::{json, Value};

use super::{object, Client, RemoteOpts};
use crate::output;

#[derive(clap::Args)]
pub struct ShowArgs {
    #[command(flatten)]
    remote: RemoteOpts,
}

#[derive(clap::Args)]
pub struct UpdateArgs {
    #[command(flatten)]
    remote: RemoteOpts,
    /// New display name
    #[arg(long)]
    name: Option<String>,
    /// The longest lifetime, in days, that a new token may have
    #[arg(long, value_name = "DAYS")]
    max_token_lifetime_days: Option<u32>,
}

pub async fn show(args: ShowArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.remote)?;
    let account = client.get("/v1/account").await?;
    print_account(&client, &account)
}

pub async fn update(args: UpdateArgs) -> anyhow::Result<()> {
    if args.name.is_none() && args.max_token_lifetime_days.is_none() {
        bail!("nothing to change: give --name or --max-token-lifetime-days");
    }
    let client = Client::new(&args.remote)?;
    let settings = args
        .max_token_lifetime_days
        .map(|days| json!({ "max_token_lifetime_days": days }));
    let body = object(vec![
        ("name", args.name.map(Value::String)),
        ("settings", settings),
    ]);
    let account = client.patch("/v1/account", &body).await?;
    print_account(&client, &account)
}

fn print_account(client: &Client, account: &Value) -> anyhow::Result<()> {
    if client.json {
        return output::print_json(account);
    }
    let max_days = account
        .pointer("/settings/max_token_lifetime_days")
        .map(|days| days.to_string())
        .unwrap_or_else(|| "-".to_string());
    output::print_fields(&[
        ("id", output::text(account, "id")),
        ("slug", output::text(account, "slug")),
        ("name", output::text(account, "name")),
        ("max token lifetime (days)", max_days),
        ("created", output::date(account, "created_at", "-")),
        ("updated", output::date(account, "updated_at", "-")),
    ])
}
