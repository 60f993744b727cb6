//! `postern serve`: opens the database, serves the REST API, shuts down gracefully.

use std::time::Duration;

use anyhow::{anyhow, Context};
use postern_domain::ActorType;
use postern_store::{ActorFilter, Page, Store};

use crate::local::DbOpts;

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Address and port to listen on (port 0 picks a free port)
    #[arg(
        long,
        env = "POSTERN_LISTEN",
        default_value = "127.0.0.1:8080",
        value_name = "ADDR"
    )]
    listen: String,
    #[command(flatten)]
    db: DbOpts,
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let store = args.db.open().await?;
    let result = serve(&args, &store).await;
    store.close().await;
    result
}

async fn serve(args: &ServeArgs, store: &Store) -> anyhow::Result<()> {
    let (account, created) = store.ensure_default_account().await?;
    if created || !has_administrators(store, account.id).await? {
        tracing::info!(
            "no administrators yet: create an API token with 'postern api-token create --name admin-cli {}'",
            args.db.flags_for_display()
        );
    }
    let _flusher = store.spawn_usage_flusher(Duration::from_secs(2));
    let _change_listener = store.spawn_change_listener();
    let shutdown = shutdown_signal()?;
    let listener = bind(&args.listen).await?;
    let address = listener
        .local_addr()
        .context("cannot read the address the portal listens on")?;
    tracing::info!("listening on http://{address}");
    let state = postern_api::AppState::new(store.clone());
    postern_api::serve(listener, state, shutdown)
        .await
        .context("the HTTP server failed")?;
    tracing::info!("shut down");
    Ok(())
}

async fn has_administrators(store: &Store, account_id: uuid::Uuid) -> anyhow::Result<bool> {
    for actor_type in [ActorType::ApiClient, ActorType::Admin] {
        let filter = ActorFilter {
            actor_type: Some(actor_type),
            name_contains: None,
        };
        let page = Page {
            limit: 1,
            cursor: None,
        };
        if !store
            .list_actors(account_id, &filter, page)
            .await?
            .items
            .is_empty()
        {
            return Ok(true);
        }
    }
    Ok(false)
}

async fn bind(listen: &str) -> anyhow::Result<tokio::net::TcpListener> {
    match tokio::net::TcpListener::bind(listen).await {
        Ok(listener) => Ok(listener),
        Err(err) if err.kind() == std::io::ErrorKind::AddrInUse => Err(anyhow!(
            "cannot listen on {listen}: address in use — is another portal running? use --listen"
        )),
        Err(err) => Err(anyhow!("cannot listen on {listen}: {err}")),
    }
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed before this returns, so a signal
/// sent right after "listening on" is already seen as a shutdown request.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => tracing::info!("SIGINT received, shutting down"),
            _ = terminate.recv() => tracing::info!("SIGTERM received, shutting down"),
        }
    })
}
