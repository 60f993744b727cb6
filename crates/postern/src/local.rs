//! Local administration: commands that act directly on the portal's database, for bootstrapping
//! (the first API token, the first administrator) and for managing accounts.

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context};
use argon2::password_hash::{PasswordHasher, SaltString};
use argon2::Argon2;
use chrono::Utc;
use clap::Subcommand;
use postern_domain::{Account, Acting, ActorType};
use postern_store::{NewActor, NewTokenRequest, Store, StoreError};
use serde_json::json;

use crate::expiry::ExpiryArgs;
use crate::output::{self, Table};

pub const MIN_PASSWORD_LEN: usize = 12;

/// Where the database is: a SQLite file in `--data-dir`, or PostgreSQL at `--database-url`.
#[derive(clap::Args, Debug, Clone)]
pub struct DbOpts {
    /// Directory of the embedded SQLite database (postern.db)
    #[arg(
        long,
        env = "POSTERN_DATA_DIR",
        default_value = "./postern-data",
        value_name = "DIR"
    )]
    pub data_dir: PathBuf,
    /// PostgreSQL URL (postgres://user:password@host/db); when set, --data-dir is not used
    #[arg(
        long,
        env = "POSTERN_DATABASE_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub database_url: Option<String>,
}

impl DbOpts {
    pub async fn open(&self) -> anyhow::Result<Store> {
        match &self.database_url {
            Some(url) => {
                check_database_url(url)?;
                Store::connect(url)
                    .await
                    .map_err(|err| anyhow!("cannot open database at {}: {err}", redact_url(url)))
            }
            None => Store::open_sqlite(&self.data_dir).await.map_err(|err| {
                anyhow!(
                    "cannot open database at {}: {err}",
                    self.data_dir.join("postern.db").display()
                )
            }),
        }
    }

    /// The flags that point another command at this same database, safe to print.
    pub fn flags_for_display(&self) -> String {
        match &self.database_url {
            Some(url) => format!("--database-url '{}'", redact_url(url)),
            None => format!("--data-dir {}", self.data_dir.display()),
        }
    }
}

/// Local options: the database and the account to act on.
#[derive(clap::Args, Debug, Clone)]
pub struct LocalOpts {
    #[command(flatten)]
    pub db: DbOpts,
    /// Slug of the account to act on
    #[arg(long, default_value = "default", value_name = "SLUG")]
    pub account: String,
}

#[derive(clap::Args)]
pub struct ApiTokenArgs {
    #[command(subcommand)]
    command: ApiTokenCommand,
}

#[derive(Subcommand)]
enum ApiTokenCommand {
    /// Create an API client and its API token; prints only the token on stdout
    #[command(after_help = "Examples:\n  \
        export POSTERN_API_TOKEN=$(postern api-token create --name admin-cli)\n  \
        postern api-token create --name terraform --expires-in 90d --data-dir /var/lib/postern\n\n\
        The token is shown once and cannot be read again.")]
    Create(ApiTokenCreateArgs),
}

#[derive(clap::Args)]
struct ApiTokenCreateArgs {
    /// Name of the API client (who uses the token, e.g. admin-cli or terraform)
    #[arg(long)]
    name: String,
    #[command(flatten)]
    expiry: ExpiryArgs,
    /// Print {"actor":..,"token":{..,"secret":..}} instead of the bare token
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    local: LocalOpts,
}

#[derive(clap::Args)]
pub struct AdminArgs {
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Create an administrator; reads the password from stdin
    #[command(after_help = "Examples:\n  \
        postern admin create --email ada@example.com --name 'Ada Lovelace'   (prompts for the password)\n  \
        printf '%s\\n' \"$PASSWORD\" | postern admin create --email ada@example.com\n\n\
        Passwords must be at least 12 characters long.")]
    Create(AdminCreateArgs),
}

#[derive(clap::Args)]
struct AdminCreateArgs {
    /// Email address the administrator signs in with
    #[arg(long)]
    email: String,
    /// Display name [default: the email address]
    #[arg(long)]
    name: Option<String>,
    #[command(flatten)]
    local: LocalOpts,
}

#[derive(clap::Args)]
pub struct AccountCreateArgs {
    /// Short identifier: lowercase letters, digits and dashes, starting with a letter
    #[arg(long)]
    slug: String,
    /// Display name [default: the slug]
    #[arg(long)]
    name: Option<String>,
    /// Print the account as JSON
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    db: DbOpts,
}

#[derive(clap::Args)]
pub struct AccountListArgs {
    /// Print the accounts as JSON
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    db: DbOpts,
}

pub async fn api_token(args: ApiTokenArgs) -> anyhow::Result<()> {
    let ApiTokenCommand::Create(args) = args.command;
    let expires_at = args.expiry.resolve(Utc::now())?;
    let store = args.local.db.open().await?;
    let result = create_api_token(&store, &args, expires_at).await;
    store.close().await;
    result
}

pub async fn admin(args: AdminArgs) -> anyhow::Result<()> {
    let AdminCommand::Create(args) = args.command;
    let email = postern_domain::validate::email("email", &args.email)
        .map_err(|err| anyhow!("invalid --email: {}", err.message))?;
    let password = read_password()?;
    if password.chars().count() < MIN_PASSWORD_LEN {
        bail!("the password is too short: use at least {MIN_PASSWORD_LEN} characters");
    }
    let password_hash = hash_password(&password)?;
    let store = args.local.db.open().await?;
    let result = async {
        let account = account_for(&store, &args.local.account).await?;
        let new = NewActor {
            actor_type: ActorType::Admin,
            name: args.name.clone().unwrap_or_else(|| email.clone()),
            email: Some(email.clone()),
            password_hash: Some(password_hash),
            group_ids: Vec::new(),
            token: None,
        };
        let (actor, _) = store
            .create_actor(account.id, new, &Acting::local_cli())
            .await?;
        tracing::debug!(actor_id = %actor.id, account = %account.slug, "administrator created");
        println!("{}", actor.id);
        Ok(())
    }
    .await;
    store.close().await;
    result
}

pub async fn account_create(args: AccountCreateArgs) -> anyhow::Result<()> {
    let store = args.db.open().await?;
    let result = async {
        store.ensure_default_account().await?;
        let name = args.name.as_deref().unwrap_or(&args.slug);
        let account = store
            .create_account(&args.slug, name, &Acting::local_cli())
            .await?;
        if args.json {
            return output::print_json(&serde_json::to_value(&account)?);
        }
        eprintln!("account '{}' created", account.slug);
        println!("{}", account.id);
        Ok(())
    }
    .await;
    store.close().await;
    result
}

pub async fn account_list(args: AccountListArgs) -> anyhow::Result<()> {
    let store = args.db.open().await?;
    let result = async {
        store.ensure_default_account().await?;
        let accounts = store.list_accounts().await?;
        if args.json {
            return output::print_json(&serde_json::to_value(&accounts)?);
        }
        let mut table = Table::new(&["SLUG", "NAME", "ID", "MAX TOKEN DAYS", "CREATED"]);
        for account in &accounts {
            table.row(vec![
                account.slug.clone(),
                account.name.clone(),
                account.id.to_string(),
                account.settings.max_token_lifetime_days.to_string(),
                output::short_date(account.created_at),
            ]);
        }
        table.print()
    }
    .await;
    store.close().await;
    result
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`, for messages and logs.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let Some((userinfo, host)) = authority.rsplit_once('@') else {
        return url.to_string();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}{path}"),
        None => url.to_string(),
    }
}

async fn create_api_token(
    store: &Store,
    args: &ApiTokenCreateArgs,
    expires_at: Option<chrono::DateTime<Utc>>,
) -> anyhow::Result<()> {
    let account = account_for(store, &args.local.account).await?;
    let new = NewActor {
        actor_type: ActorType::ApiClient,
        name: args.name.clone(),
        email: None,
        password_hash: None,
        group_ids: Vec::new(),
        token: Some(NewTokenRequest {
            name: None,
            expires_at,
            guardrails: Default::default(),
            rotated_from: None,
            workload_identity_id: None,
        }),
    };
    let (actor, created) = store
        .create_actor(account.id, new, &Acting::local_cli())
        .await?;
    let created = created.context("the portal created the API client but no token for it")?;
    tracing::debug!(actor_id = %actor.id, token_id = %created.token.id, account = %account.slug, "API token created");
    if args.json {
        let mut token = serde_json::to_value(&created.token)?;
        if let Some(fields) = token.as_object_mut() {
            fields.insert("secret".into(), json!(created.secret.expose()));
        }
        return output::print_json(&json!({ "actor": actor, "token": token }));
    }
    eprintln!(
        "API token for '{}' created; it expires at {}; it is shown once and cannot be read again",
        actor.name,
        output::full_date(created.token.expires_at)
    );
    println!("{}", created.secret.expose());
    Ok(())
}

/// The account with `slug`, creating the default account first if it is missing.
async fn account_for(store: &Store, slug: &str) -> anyhow::Result<Account> {
    store.ensure_default_account().await?;
    match store.account_by_slug(slug).await {
        Ok(account) => Ok(account),
        Err(StoreError::NotFound(_)) => {
            let slugs: Vec<String> = store
                .list_accounts()
                .await?
                .into_iter()
                .map(|a| a.slug)
                .collect();
            Err(anyhow!(
                "no account with slug '{slug}' (accounts: {})",
                slugs.join(", ")
            ))
        }
        Err(err) => Err(err.into()),
    }
}

fn check_database_url(url: &str) -> anyhow::Result<()> {
    let supported = ["postgres://", "postgresql://", "sqlite:"];
    if supported.iter().any(|prefix| url.starts_with(prefix)) {
        return Ok(());
    }
    bail!(
        "invalid --database-url '{}': it must start with postgres:// or postgresql:// (or leave it unset to use SQLite in --data-dir)",
        redact_url(url)
    )
}

fn read_password() -> anyhow::Result<String> {
    if std::io::stdin().is_terminal() {
        let password = rpassword::prompt_password("Password (at least 12 characters): ")
            .context("cannot read the password")?;
        let again = rpassword::prompt_password("Repeat the password: ")
            .context("cannot read the password")?;
        if password != again {
            bail!("the passwords do not match");
        }
        return Ok(password);
    }
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("cannot read the password from stdin")?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

fn hash_password(password: &str) -> anyhow::Result<String> {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|err| anyhow!("cannot hash the password: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact_url("postgres://app:s3cret@db.example:5432/postern"),
            "postgres://app:***@db.example:5432/postern"
        );
        assert_eq!(
            redact_url("postgres://app@db/postern"),
            "postgres://app@db/postern"
        );
        assert_eq!(redact_url("postgres://db/postern"), "postgres://db/postern");
    }

    #[test]
    fn passwords_hash_to_argon2id_phc_strings() {
        let hash = hash_password("correct horse battery").unwrap_or_default();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
    }
}
