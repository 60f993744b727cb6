//! `postern identity-providers`: the OpenID Connect providers people sign in through.

use std::io::Read;

use clap::Subcommand;
use serde_json::{json, Value};
use uuid::Uuid;

use super::{object, Client, ListQuery, RemoteOpts};
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
    /// Add a provider people sign in through (register <portal URL>/auth/oidc/callback as its
    /// redirect URI)
    #[command(after_help = "Examples:\n  \
        printf '%s' \"$CLIENT_SECRET\" | postern identity-providers create --name 'Acme SSO' \\\n    \
          --issuer https://acme.okta.com --client-id 0oa1b2c3 --client-secret-stdin \\\n    \
          --groups-claim groups --admin-group postern-admins\n  \
        postern identity-providers create --name Google --issuer https://accounts.google.com \\\n    \
          --client-id 1234.apps.googleusercontent.com --client-secret-stdin --session-lifetime 8h\n\n\
        A person's first sign-in creates them: an admin when one of their groups (the --groups-claim\n\
        claim of the ID token) is an --admin-group, a user otherwise. Service accounts are never\n\
        created, changed or signed in through a provider. See docs/identity.md.")]
    Create {
        /// Shown on the sign-in page: "Sign in with NAME"
        #[arg(long)]
        name: String,
        /// The provider's issuer (its discovery document is <issuer>/.well-known/openid-configuration)
        #[arg(long)]
        issuer: String,
        #[arg(long)]
        client_id: String,
        /// Read the client secret from standard input (kept sealed, never shown again)
        #[arg(long)]
        client_secret_stdin: bool,
        /// A scope to ask for besides openid (repeatable; default: email, profile)
        #[arg(long = "scope", value_name = "SCOPE")]
        scopes: Vec<String>,
        /// The ID token claim that holds the email (default: email)
        #[arg(long)]
        email_claim: Option<String>,
        /// The ID token claim that lists the person's groups
        #[arg(long)]
        groups_claim: Option<String>,
        /// A group whose members are admins (repeatable; needs --groups-claim)
        #[arg(long = "admin-group", value_name = "GROUP")]
        admin_groups: Vec<String>,
        /// How long people signed in through it stay signed in, 5m to 30d (default 12h)
        #[arg(long, value_name = "DURATION")]
        session_lifetime: Option<String>,
        /// Signing out of the portal also signs the person out at the provider (RP-initiated
        /// logout; at most providers that ends their other applications' sessions too).
        /// Register <portal URL>/auth/oidc/signed-out as a post-logout redirect URI
        #[arg(long)]
        sign_out_at_provider: bool,
    },
    /// Change a provider (not its issuer); people and service accounts are not touched
    #[command(after_help = "Examples:\n  \
        postern identity-providers update <PROVIDER_ID> --session-lifetime 8h --admin-group postern-admins\n  \
        printf '%s' \"$NEW_SECRET\" | postern identity-providers update <PROVIDER_ID> --client-secret-stdin")]
    Update {
        /// Id of the provider (postern identity-providers list)
        provider_id: Uuid,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        client_id: Option<String>,
        /// Read a new client secret from standard input
        #[arg(long)]
        client_secret_stdin: bool,
        /// The scopes besides openid (repeatable; replaces the list)
        #[arg(long = "scope", value_name = "SCOPE")]
        scopes: Vec<String>,
        #[arg(long)]
        email_claim: Option<String>,
        #[arg(long)]
        groups_claim: Option<String>,
        /// The admin groups (repeatable; replaces the list)
        #[arg(long = "admin-group", value_name = "GROUP")]
        admin_groups: Vec<String>,
        /// Remove every admin group (nobody is made an admin by group)
        #[arg(long, conflicts_with = "admin_groups")]
        no_admin_groups: bool,
        #[arg(long, value_name = "DURATION")]
        session_lifetime: Option<String>,
        /// Whether signing out of the portal also signs the person out at the provider
        #[arg(long, value_name = "true|false")]
        sign_out_at_provider: Option<bool>,
    },
    /// List the account's identity providers
    #[command(after_help = "Example:\n  postern identity-providers list")]
    List,
    /// A SCIM token for the provider's directory to provision people with (SCIM 2.0 at
    /// <portal URL>/scim/v2); printed last, once; the previous one stops working
    #[command(
        after_help = "Example:\n  postern identity-providers scim-token <PROVIDER_ID> | tail -1\n\n\
        In Okta: the app's Provisioning tab, SCIM connector base URL https://portal.example.com/scim/v2,\n\
        unique identifier userName, HTTP Header authentication with this token."
    )]
    ScimToken {
        /// Id of the provider (postern identity-providers list)
        provider_id: Uuid,
    },
    /// Delete a provider: nobody signs in through it any more and the web sessions it opened
    /// end; people and service accounts stay
    #[command(after_help = "Example:\n  postern identity-providers delete <PROVIDER_ID>")]
    Delete {
        /// Id of the provider (postern identity-providers list)
        provider_id: Uuid,
    },
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let client = Client::new(&args.remote)?;
    match args.command {
        Command::Create {
            name,
            issuer,
            client_id,
            client_secret_stdin,
            scopes,
            email_claim,
            groups_claim,
            admin_groups,
            session_lifetime,
            sign_out_at_provider,
        } => {
            let secret = client_secret_stdin
                .then(read_secret)
                .transpose()?
                .map(Value::String);
            let body = object(vec![
                ("name", Some(Value::String(name))),
                ("issuer", Some(Value::String(issuer))),
                ("client_id", Some(Value::String(client_id))),
                ("client_secret", secret),
                ("scopes", (!scopes.is_empty()).then(|| json!(scopes))),
                ("email_claim", email_claim.map(Value::String)),
                ("groups_claim", groups_claim.map(Value::String)),
                ("admin_groups", Some(json!(admin_groups))),
                ("session_lifetime", session_lifetime.map(Value::String)),
                (
                    "sign_out_at_provider",
                    Some(Value::Bool(sign_out_at_provider)),
                ),
            ]);
            let created = client.post("/v1/identity-providers", &body).await?;
            if client.json {
                return output::print_json(&created);
            }
            print_provider(&created)
        }
        Command::Update {
            provider_id,
            name,
            client_id,
            client_secret_stdin,
            scopes,
            email_claim,
            groups_claim,
            admin_groups,
            no_admin_groups,
            session_lifetime,
            sign_out_at_provider,
        } => {
            let secret = client_secret_stdin
                .then(read_secret)
                .transpose()?
                .map(Value::String);
            let admin_groups = if no_admin_groups {
                Some(json!([]))
            } else {
                (!admin_groups.is_empty()).then(|| json!(admin_groups))
            };
            let body = object(vec![
                ("name", name.map(Value::String)),
                ("client_id", client_id.map(Value::String)),
                ("client_secret", secret),
                ("scopes", (!scopes.is_empty()).then(|| json!(scopes))),
                ("email_claim", email_claim.map(Value::String)),
                ("groups_claim", groups_claim.map(Value::String)),
                ("admin_groups", admin_groups),
                ("session_lifetime", session_lifetime.map(Value::String)),
                (
                    "sign_out_at_provider",
                    sign_out_at_provider.map(Value::Bool),
                ),
            ]);
            let updated = client
                .patch(&format!("/v1/identity-providers/{provider_id}"), &body)
                .await?;
            if client.json {
                return output::print_json(&updated);
            }
            print_provider(&updated)
        }
        Command::List => {
            let providers = client
                .list(ListQuery::new("/v1/identity-providers"))
                .await?;
            if client.json {
                return output::print_json(&Value::Array(providers));
            }
            let mut table = Table::new(&["ID", "NAME", "ISSUER", "CLIENT ID", "ADMIN GROUPS"]);
            for provider in &providers {
                table.row(vec![
                    output::text(provider, "id"),
                    output::text(provider, "name"),
                    output::text(provider, "issuer"),
                    output::text(provider, "client_id"),
                    list_text(&provider["admin_groups"]),
                ]);
            }
            table.print()
        }
        Command::ScimToken { provider_id } => {
            let created = client
                .post(
                    &format!("/v1/identity-providers/{provider_id}/scim-token"),
                    &json!({}),
                )
                .await?;
            if client.json {
                return output::print_json(&created);
            }
            eprintln!(
                "SCIM base URL: <portal URL>{}; the token (shown once) follows.",
                created["base_path"].as_str().unwrap_or("/scim/v2")
            );
            let Some(token) = created["token"].as_str() else {
                anyhow::bail!("the portal created no token");
            };
            output::print_secret(token)
        }
        Command::Delete { provider_id } => {
            client
                .delete(&format!("/v1/identity-providers/{provider_id}"))
                .await?;
            if client.json {
                return output::print_json(&json!({ "deleted": provider_id }));
            }
            println!("Deleted identity provider {provider_id}.");
            Ok(())
        }
    }
}

/// The client secret given on standard input.
fn read_secret() -> anyhow::Result<String> {
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .map_err(|err| anyhow::anyhow!("cannot read the client secret: {err}"))?;
    let text = text.trim().to_string();
    anyhow::ensure!(!text.is_empty(), "no client secret on standard input");
    Ok(text)
}

fn list_text(values: &Value) -> String {
    let items: Vec<&str> = values
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if items.is_empty() {
        "-".into()
    } else {
        items.join(", ")
    }
}

fn print_provider(provider: &Value) -> anyhow::Result<()> {
    let hours = provider["session_lifetime_seconds"].as_u64().unwrap_or(0) / 3600;
    output::print_fields(&[
        ("id", output::text(provider, "id")),
        ("name", output::text(provider, "name")),
        ("issuer", output::text(provider, "issuer")),
        ("client id", output::text(provider, "client_id")),
        (
            "client secret",
            if provider["has_client_secret"] == true {
                "set (sealed)".into()
            } else {
                "none".into()
            },
        ),
        (
            "scopes",
            format!("openid, {}", list_text(&provider["scopes"])),
        ),
        ("groups claim", output::text(provider, "groups_claim")),
        ("admin groups", list_text(&provider["admin_groups"])),
        ("session lifetime", format!("{hours} h")),
        (
            "sign out at provider",
            if provider["sign_out_at_provider"] == true {
                "yes (post-logout redirect URI <portal URL>/auth/oidc/signed-out)".into()
            } else {
                "no".into()
            },
        ),
        (
            "redirect URI",
            "<portal URL>/auth/oidc/callback (register it at the provider)".into(),
        ),
    ])
}
