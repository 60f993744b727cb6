//! Change events between portal nodes that share one PostgreSQL database: each node NOTIFYs its
//! committed changes and LISTENs for the others', so a token revoked on one node stops working
//! on every node at once.

use std::time::Duration;

use postern_domain::ChangeEvent;
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgListener;
use uuid::Uuid;

use crate::Store;

pub(crate) const CHANNEL: &str = "postern_changes";
/// PostgreSQL caps a notification's payload at 8000 bytes: long id lists go in several.
const MAX_IDS_PER_NOTIFICATION: usize = 100;

#[derive(Serialize, Deserialize)]
struct Notification {
    node: Uuid,
    event: ChangeEvent,
}

impl Store {
    /// Listens for other nodes' changes (PostgreSQL only; `None` on SQLite, where one process
    /// owns the database). Reconnects after a lost connection and then drops the token cache,
    /// since notifications sent meanwhile are lost.
    pub fn spawn_change_listener(&self) -> Option<tokio::task::JoinHandle<()>> {
        let url = self.inner.database_url.clone()?;
        let weak = std::sync::Arc::downgrade(&self.inner);
        Some(tokio::spawn(async move {
            loop {
                let mut listener = match connect(&url).await {
                    Ok(listener) => listener,
                    Err(err) => {
                        tracing::warn!(error = %err, "cannot listen for other portal nodes' changes; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                let Some(inner) = weak.upgrade() else { return };
                Store { inner }.inner.tokens.clear();
                loop {
                    let notification = match listener.recv().await {
                        Ok(notification) => notification,
                        Err(err) => {
                            tracing::warn!(error = %err, "lost the change feed from other portal nodes; reconnecting");
                            break;
                        }
                    };
                    let Some(inner) = weak.upgrade() else { return };
                    let store = Store { inner };
                    match serde_json::from_str::<Notification>(notification.payload()) {
                        Ok(n) if n.node == store.inner.node_id => {}
                        Ok(n) => store.apply_remote(n.event),
                        Err(err) => {
                            tracing::warn!(error = %err, "ignoring a malformed change notification")
                        }
                    }
                }
            }
        }))
    }

    fn apply_remote(&self, event: ChangeEvent) {
        self.inner.tokens.apply(&event);
        let _ = self.inner.events.send(event);
    }

    /// Announces committed changes to the other nodes (PostgreSQL only).
    pub(crate) fn notify_other_nodes(&self, events: &[ChangeEvent]) {
        if self.inner.database_url.is_none() || events.is_empty() {
            return;
        }
        let payloads: Vec<String> = events
            .iter()
            .flat_map(split_for_payload)
            .filter_map(|event| {
                serde_json::to_string(&Notification {
                    node: self.inner.node_id,
                    event,
                })
                .ok()
            })
            .collect();
        let pool = self.inner.pool.clone();
        tokio::spawn(async move {
            for payload in payloads {
                if let Err(err) = sqlx::query("SELECT pg_notify($1, $2)")
                    .bind(CHANNEL)
                    .bind(payload)
                    .execute(&pool)
                    .await
                {
                    tracing::warn!(error = %err, "could not announce a change to other portal nodes");
                }
            }
        });
    }
}

async fn connect(url: &str) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect(url).await?;
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

fn split_for_payload(event: &ChangeEvent) -> Vec<ChangeEvent> {
    match event {
        ChangeEvent::TokensRevoked {
            account_id,
            token_ids,
        } if token_ids.len() > MAX_IDS_PER_NOTIFICATION => token_ids
            .chunks(MAX_IDS_PER_NOTIFICATION)
            .map(|chunk| ChangeEvent::TokensRevoked {
                account_id: *account_id,
                token_ids: chunk.to_vec(),
            })
            .collect(),
        other => vec![other.clone()],
    }
}
