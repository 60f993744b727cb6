//! The `postern` binary: the portal server, local administration on the database, and an admin
//! CLI that drives the REST API.

mod expiry;
mod local;
mod output;
mod remote;
mod serve;
mod webhooks;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "postern",
    version,
    about = "Postern: a self-hosted zero-trust access portal",
    long_about = "Postern: a self-hosted zero-trust access portal.\n\n\
        'postern serve' runs the portal. 'api-token', 'admin' and 'account create|list' act \
        directly on the portal's database (run them on the portal host). Every other command \
        drives the REST API of a running portal with an API token from POSTERN_API_TOKEN.",
    after_help = "Getting started:\n  \
        postern serve --data-dir ./postern-data &\n  \
        export POSTERN_API_TOKEN=$(postern api-token create --name admin-cli --data-dir ./postern-data)\n  \
        postern groups create engineering\n  \
        postern service-accounts create ci-runner --group engineering --expires-in 30d\n\n\
        Logs go to stderr; set RUST_LOG (e.g. RUST_LOG=debug) to change their level."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the portal: the REST API on --listen, with its database
    #[command(after_help = "Examples:\n  \
        postern serve\n  \
        postern serve --listen 0.0.0.0:8080 --data-dir /var/lib/postern\n  \
        POSTERN_DATABASE_URL=postgres://postern@db/postern postern serve")]
    Serve(serve::ServeArgs),

    /// Create API tokens for the admin CLI and scripts (local: acts on the database)
    #[command(
        name = "api-token",
        after_help = "Example:\n  \
        export POSTERN_API_TOKEN=$(postern api-token create --name admin-cli --expires-in 90d)"
    )]
    ApiToken(local::ApiTokenArgs),

    /// Create administrators who sign in with a password (local: acts on the database)
    #[command(after_help = "Example:\n  \
        printf '%s\\n' \"$ADMIN_PASSWORD\" | postern admin create --email ada@example.com --name 'Ada'")]
    Admin(local::AdminArgs),

    /// Accounts: create and list them locally, show and update one through the API
    #[command(after_help = "Examples:\n  \
        postern account create --slug acme --name 'Acme Corp'\n  \
        postern account list\n  \
        postern account show\n  \
        postern account update --max-token-lifetime-days 90")]
    Account(AccountArgs),

    /// Service accounts: machine identities whose headless clients connect with a token
    #[command(
        name = "service-accounts",
        visible_alias = "sa",
        after_help = "Examples:\n  \
            postern service-accounts create ci-runner --group engineering --expires-in 30d | tail -1\n  \
            postern sa list --name ci\n  \
            postern sa show 0190c3e0-7c1a-7d2e-9f00-3a1b2c3d4e5f\n  \
            postern sa disable 0190c3e0-7c1a-7d2e-9f00-3a1b2c3d4e5f"
    )]
    ServiceAccounts(remote::service_accounts::Args),

    /// Tokens of service accounts and API clients: create, list, revoke
    #[command(after_help = "Examples:\n  \
        postern tokens create --actor 0190c3e0-7c1a-7d2e-9f00-3a1b2c3d4e5f --name rotation-2 --expires-in 30d\n  \
        postern tokens list --actor 0190c3e0-7c1a-7d2e-9f00-3a1b2c3d4e5f\n  \
        postern tokens revoke-all --actor 0190c3e0-7c1a-7d2e-9f00-3a1b2c3d4e5f --yes")]
    Tokens(remote::tokens::Args),

    /// Groups of actors, which policies grant access to
    #[command(after_help = "Examples:\n  \
        postern groups create engineering\n  \
        postern groups add-member <GROUP_ID> <ACTOR_ID> <ACTOR_ID>\n  \
        postern groups members <GROUP_ID>")]
    Groups(remote::groups::Args),

    /// Sites (networks reached through gateways) and their gateway tokens
    #[command(after_help = "Examples:\n  \
        postern sites create office-berlin\n  \
        postern sites gateway-tokens create <SITE_ID> --name gw-1 --expires-in 1y | tail -1")]
    Sites(remote::sites::Args),

    /// Resources: addresses (CIDR ranges, IPs, DNS names) reachable through a site
    #[command(after_help = "Examples:\n  \
        postern resources create --type dns --name gitlab --address gitlab.corp.example --site office-berlin --filter tcp:22,443\n  \
        postern resources create --type cidr --name office-lan --address 10.20.0.0/16 --site office-berlin --filter icmp\n  \
        postern resources list")]
    Resources(remote::resources::Args),

    /// Policies: which group may reach which resource, and under what conditions
    #[command(after_help = "Examples:\n  \
        postern policies create --group engineering --resource gitlab --time-window 'Mon-Fri 09:00-17:00 Europe/Berlin'\n  \
        postern policies create --group contractors --resource office-lan --source-ip-in 203.0.113.0/24\n  \
        postern policies disable <POLICY_ID>")]
    Policies(remote::policies::Args),

    /// Headless clients that opened a session with the portal, whether they are online, and
    /// blocking one device on a shared token
    #[command(after_help = "Examples:\n  \
        postern clients --online\n  \
        postern clients --actor ci-runner --json\n  \
        postern clients --blocked\n  \
        postern clients --actor ci-runner --search runner-1   # name or device id contains\n  \
        postern clients block runner-17      # ended and refused; the token serves the others\n  \
        postern clients unblock runner-17\n  \
        postern clients --awaiting-approval\n  \
        postern clients approve kiosk-3      # its token requires approval: granted from now on")]
    Clients(remote::clients::Args),

    /// The audit log: who changed what, and when
    #[command(after_help = "Examples:\n  \
        postern audit --limit 20\n  \
        postern audit --action token.revoke --since 2026-01-01T00:00:00Z --json")]
    Audit(remote::audit::Args),

    /// Webhooks: tell your systems of token, device and leak events, signed, retried for a day
    #[command(after_help = "Examples:\n  \
        postern webhooks create --url https://hooks.example.com/postern --event token.leaked --event token.expiring\n  \
        postern webhooks test <WEBHOOK_ID>\n  \
        postern webhooks deliveries <WEBHOOK_ID>")]
    Webhooks(remote::webhooks::Args),

    /// Workload identities: CI jobs, Kubernetes pods and cloud machines reach resources as a
    /// service account with their platform's ID token instead of a stored secret
    #[command(
        name = "workload-identities",
        after_help = "Examples:\n  \
        postern workload-identities create --actor ci-deploy --issuer https://token.actions.githubusercontent.com \\\n    \
          --audience postern --subject 'repo:acme/deploy:ref:refs/heads/main'\n  \
        postern workload-identities list --actor ci-deploy\n  \
        postern workload-identities delete --actor ci-deploy <WORKLOAD_IDENTITY_ID>"
    )]
    WorkloadIdentities(remote::workload_identities::Args),

    /// Identity providers: people sign in to the portal through your OpenID Connect provider
    #[command(
        name = "identity-providers",
        after_help = "Examples:\n  \
        printf '%s' \"$SECRET\" | postern identity-providers create --name 'Acme SSO' --issuer https://acme.okta.com \\\n    \
          --client-id 0oa1b2c3 --client-secret-stdin --groups-claim groups --admin-group postern-admins\n  \
        postern identity-providers list"
    )]
    IdentityProviders(remote::identity_providers::Args),
}

#[derive(clap::Args)]
struct AccountArgs {
    #[command(subcommand)]
    command: AccountCommand,
}

#[derive(Subcommand)]
enum AccountCommand {
    /// Create an account (local: acts on the database)
    #[command(after_help = "Example:\n  postern account create --slug acme --name 'Acme Corp'")]
    Create(local::AccountCreateArgs),
    /// List the accounts (local: acts on the database)
    #[command(after_help = "Example:\n  postern account list --json")]
    List(local::AccountListArgs),
    /// Show the account the API token belongs to
    #[command(after_help = "Example:\n  postern account show")]
    Show(remote::account::ShowArgs),
    /// Rename the account or change its settings
    #[command(after_help = "Example:\n  postern account update --max-token-lifetime-days 90")]
    Update(remote::account::UpdateArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve::run(args).await,
        Command::ApiToken(args) => local::api_token(args).await,
        Command::Admin(args) => local::admin(args).await,
        Command::Account(args) => match args.command {
            AccountCommand::Create(args) => local::account_create(args).await,
            AccountCommand::List(args) => local::account_list(args).await,
            AccountCommand::Show(args) => remote::account::show(args).await,
            AccountCommand::Update(args) => remote::account::update(args).await,
        },
        Command::ServiceAccounts(args) => remote::service_accounts::run(args).await,
        Command::Tokens(args) => remote::tokens::run(args).await,
        Command::Groups(args) => remote::groups::run(args).await,
        Command::Sites(args) => remote::sites::run(args).await,
        Command::Resources(args) => remote::resources::run(args).await,
        Command::Policies(args) => remote::policies::run(args).await,
        Command::Clients(args) => remote::clients::run(args).await,
        Command::Audit(args) => remote::audit::run(args).await,
        Command::Webhooks(args) => remote::webhooks::run(args).await,
        Command::WorkloadIdentities(args) => remote::workload_identities::run(args).await,
        Command::IdentityProviders(args) => remote::identity_providers::run(args).await,
    }
}

fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
