//! `postern account show|update`: the account the API token belongs to.

use anyhow::bail;
use serde_json::Value;

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
    /// Seconds after its last session ended that an ephemeral device that did not say
    /// goodbye (it crashed) is removed [portal default: 600]
    #[arg(long, value_name = "SECONDS")]
    ephemeral_device_timeout_seconds: Option<u32>,
    /// Days after which a device (not ephemeral) that was not seen is removed [portal
    /// default: 90]
    #[arg(long, value_name = "DAYS")]
    stale_device_days: Option<u32>,
    /// Tokens expiring within this many days are shown as expiring soon (badges, `postern
    /// tokens expiring`) [portal default: 30]
    #[arg(long, value_name = "DAYS")]
    token_expiry_warning_days: Option<u32>,
}

pub async fn show(args: ShowArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.remote)?;
    let account = client.get("/v1/account").await?;
    print_account(&client, &account)
}

pub async fn update(args: UpdateArgs) -> anyhow::Result<()> {
    let settings = object(vec![
        (
            "max_token_lifetime_days",
            args.max_token_lifetime_days.map(Value::from),
        ),
        (
            "ephemeral_device_timeout_seconds",
            args.ephemeral_device_timeout_seconds.map(Value::from),
        ),
        ("stale_device_days", args.stale_device_days.map(Value::from)),
        (
            "token_expiry_warning_days",
            args.token_expiry_warning_days.map(Value::from),
        ),
    ]);
    let settings = settings
        .as_object()
        .is_some_and(|fields| !fields.is_empty())
        .then_some(settings);
    if args.name.is_none() && settings.is_none() {
        bail!(
            "nothing to change: give --name, --max-token-lifetime-days, \
             --ephemeral-device-timeout-seconds, --stale-device-days or \
             --token-expiry-warning-days"
        );
    }
    let client = Client::new(&args.remote)?;
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
    let setting = |name: &str| {
        account
            .pointer(&format!("/settings/{name}"))
            .map(|value| value.to_string())
            .unwrap_or_else(|| "-".to_string())
    };
    output::print_fields(&[
        ("id", output::text(account, "id")),
        ("slug", output::text(account, "slug")),
        ("name", output::text(account, "name")),
        (
            "max token lifetime (days)",
            setting("max_token_lifetime_days"),
        ),
        (
            "ephemeral device timeout (s)",
            setting("ephemeral_device_timeout_seconds"),
        ),
        ("stale device removal (days)", setting("stale_device_days")),
        (
            "token expiry warning (days)",
            setting("token_expiry_warning_days"),
        ),
        ("created", output::date(account, "created_at", "-")),
        ("updated", output::date(account, "updated_at", "-")),
    ])
}
