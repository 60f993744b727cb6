//! Portal nodes that share one PostgreSQL database: each node heartbeats in `portal_nodes`, and
//! which devices have sessions on which node is in `presence`. A node silent for
//! [`NODE_TIMEOUT`] is gone: every other node hears it (`Store::nodes_gone`) and stops counting
//! its sessions, and its rows are deleted by whichever node notices first. On SQLite one process
//! owns the database: nothing is written and every query answers "no other node".

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use postern_domain::{ChangeEvent, Device, DeviceKind};
use sqlx::Row;
use uuid::Uuid;

use crate::db;
use crate::{Backend, Result, Store};

/// How long a node may stay silent before the others take it for gone.
pub const NODE_TIMEOUT: Duration = Duration::from_secs(20);
/// How often a node says it is alive: four beats fit in the timeout.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// The database's clock, so that nodes whose clocks differ still agree on who is silent.
const DB_NOW: &str = "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000000 AS BIGINT)";
/// Rows per multi-row statement: well under PostgreSQL's bind limit.
const ROWS_PER_QUERY: usize = 500;

/// A gateway with a session on another live node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteGateway {
    pub node_id: Uuid,
    pub gateway: Device,
    pub endpoint: Option<String>,
}

/// How many sessions a device has on this node now (0: none left).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceCount {
    pub account_id: Uuid,
    pub kind: DeviceKind,
    pub device_id: String,
    pub token_id: Uuid,
    pub sessions: u32,
}

impl Store {
    /// This process's id among the portal nodes.
    pub fn node_id(&self) -> Uuid {
        self.inner.node_id
    }

    /// Whether other portal nodes may share the database (PostgreSQL).
    pub fn is_clustered(&self) -> bool {
        self.inner.backend == Backend::Postgres
    }

    /// The ids of nodes found gone (silent for [`NODE_TIMEOUT`], or stopped).
    pub fn nodes_gone(&self) -> tokio::sync::broadcast::Receiver<Uuid> {
        self.inner.nodes_gone.subscribe()
    }

    /// Whether the database answers (for a readiness check).
    pub async fn ping_database(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(self.pool()).await?;
        Ok(())
    }

    /// Heartbeats for this node until the store is dropped (PostgreSQL only), and watches the
    /// others'.
    pub fn spawn_node_heartbeat(&self) -> Option<tokio::task::JoinHandle<()>> {
        if !self.is_clustered() {
            return None;
        }
        let weak = std::sync::Arc::downgrade(&self.inner);
        Some(tokio::spawn(async move {
            let mut ticker = tokio::time::interval(HEARTBEAT);
            let mut live: HashSet<Uuid> = HashSet::new();
            let mut first = true;
            loop {
                ticker.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                let store = Store { inner };
                match store.heartbeat(&mut live, first).await {
                    Ok(()) => first = false,
                    Err(err) => {
                        tracing::warn!(error = %err, "cannot heartbeat in the database; other portal nodes may take this one for gone")
                    }
                }
            }
        }))
    }

    async fn heartbeat(&self, live: &mut HashSet<Uuid>, first: bool) -> Result<()> {
        let me = self.inner.node_id.to_string();
        let beat = sqlx::query(&format!(
            "UPDATE portal_nodes SET heartbeat_at = {DB_NOW} WHERE id = $1"
        ))
        .bind(&me)
        .execute(self.pool())
        .await?;
        if beat.rows_affected() == 0 {
            sqlx::query(&format!(
                "INSERT INTO portal_nodes (id, started_at, heartbeat_at) VALUES ($1, {DB_NOW}, {DB_NOW}) \
                 ON CONFLICT (id) DO UPDATE SET heartbeat_at = {DB_NOW}"
            ))
            .bind(&me)
            .execute(self.pool())
            .await?;
            if !first {
                // The others deleted this node's presence and may have missed its changes'
                // effects: its sessions check and announce everything again.
                tracing::warn!("other portal nodes took this one for gone; resynchronising");
                self.report_gap();
            }
        }
        let rows = sqlx::query(&format!(
            "SELECT id, heartbeat_at, {DB_NOW} AS now FROM portal_nodes"
        ))
        .fetch_all(self.pool())
        .await?;
        let timeout = NODE_TIMEOUT.as_micros() as i64;
        let mut now_live = HashSet::new();
        let mut cutoff = None;
        for row in &rows {
            let id = db::uuid(row, "id")?;
            let (at, now): (i64, i64) = (row.try_get("heartbeat_at")?, row.try_get("now")?);
            cutoff = Some(now - timeout);
            if id == self.inner.node_id {
                continue;
            }
            if at >= now - timeout {
                now_live.insert(id);
            } else {
                let _ = self.inner.nodes_gone.send(id);
            }
        }
        for gone in live.difference(&now_live) {
            let _ = self.inner.nodes_gone.send(*gone);
        }
        *live = now_live;
        if let Some(cutoff) = cutoff {
            let mut tx = self.pool().begin().await?;
            sqlx::query(
                "DELETE FROM presence WHERE node_id IN \
                 (SELECT id FROM portal_nodes WHERE heartbeat_at < $1)",
            )
            .bind(cutoff)
            .execute(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM portal_nodes WHERE heartbeat_at < $1")
                .bind(cutoff)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        }
        Ok(())
    }

    /// Leaves the cluster on a clean stop: the others stop counting this node's sessions at
    /// their next heartbeat instead of after the timeout.
    pub(crate) async fn leave_cluster(&self) {
        if !self.is_clustered() {
            return;
        }
        let me = self.inner.node_id.to_string();
        let left = async {
            let mut tx = self.pool().begin().await?;
            sqlx::query("DELETE FROM presence WHERE node_id = $1")
                .bind(&me)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM portal_nodes WHERE id = $1")
                .bind(&me)
                .execute(&mut *tx)
                .await?;
            tx.commit().await
        };
        if let Err(err) = left.await {
            tracing::warn!(error = %err, "could not leave the cluster; the others notice after the timeout");
        }
    }

    /// A gateway's first session on this node began (`online`) or its last one here ended:
    /// its presence row and the feed event for the other nodes, in one transaction.
    pub async fn announce_gateway(
        &self,
        gateway: &Device,
        token_id: Uuid,
        endpoint: Option<String>,
        online: bool,
    ) -> Result<()> {
        if !self.is_clustered() {
            return Ok(());
        }
        let mut tx = self.begin_write().await?;
        let (node, account) = (
            self.inner.node_id.to_string(),
            gateway.account_id.to_string(),
        );
        if online {
            sqlx::query(
                "INSERT INTO presence (node_id, account_id, kind, device_id, token_id, sessions, endpoint, device) \
                 VALUES ($1, $2, $3, $4, $5, 1, $6, $7) \
                 ON CONFLICT (node_id, account_id, kind, device_id) DO UPDATE SET \
                 token_id = excluded.token_id, endpoint = excluded.endpoint, device = excluded.device",
            )
            .bind(&node)
            .bind(&account)
            .bind(DeviceKind::Gateway.as_str())
            .bind(&gateway.device_id)
            .bind(token_id.to_string())
            .bind(endpoint.clone())
            .bind(db::to_json(gateway)?)
            .execute(&mut *tx.tx)
            .await?;
        } else {
            sqlx::query(
                "DELETE FROM presence WHERE node_id = $1 AND account_id = $2 AND kind = $3 \
                 AND device_id = $4",
            )
            .bind(&node)
            .bind(&account)
            .bind(DeviceKind::Gateway.as_str())
            .bind(&gateway.device_id)
            .execute(&mut *tx.tx)
            .await?;
        }
        let event = ChangeEvent::GatewayPresence {
            account_id: gateway.account_id,
            node_id: self.inner.node_id,
            gateway: Box::new(gateway.clone()),
            endpoint,
            online,
        };
        self.commit_announcing(tx, vec![event]).await
    }

    /// The account's gateways with a session on another live node.
    pub async fn remote_gateways(&self, account_id: Uuid) -> Result<Vec<RemoteGateway>> {
        if !self.is_clustered() {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(&format!(
            "SELECT p.node_id, p.endpoint, p.device FROM presence p \
             JOIN portal_nodes n ON n.id = p.node_id \
             WHERE p.account_id = $1 AND p.kind = $2 AND p.node_id <> $3 \
             AND n.heartbeat_at >= {DB_NOW} - $4 AND p.device IS NOT NULL"
        ))
        .bind(account_id.to_string())
        .bind(DeviceKind::Gateway.as_str())
        .bind(self.inner.node_id.to_string())
        .bind(NODE_TIMEOUT.as_micros() as i64)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                Ok(RemoteGateway {
                    node_id: db::uuid(row, "node_id")?,
                    gateway: db::json(row, "device")?,
                    endpoint: db::opt_text(row, "endpoint")?,
                })
            })
            .collect()
    }

    /// Writes how many sessions these client devices have on this node (0 deletes the row).
    pub async fn write_presence(&self, counts: &[PresenceCount]) -> Result<()> {
        if !self.is_clustered() || counts.is_empty() {
            return Ok(());
        }
        let node = self.inner.node_id.to_string();
        let mut tx = self.pool().begin().await?;
        let (present, absent): (Vec<&PresenceCount>, Vec<&PresenceCount>) =
            counts.iter().partition(|c| c.sessions > 0);
        for chunk in present.chunks(ROWS_PER_QUERY / 6) {
            let values: Vec<String> = (0..chunk.len())
                .map(|i| {
                    let b = i * 6;
                    format!(
                        "(${}, ${}, ${}, ${}, ${}, ${})",
                        b + 1,
                        b + 2,
                        b + 3,
                        b + 4,
                        b + 5,
                        b + 6
                    )
                })
                .collect();
            let sql = format!(
                "INSERT INTO presence (node_id, account_id, kind, device_id, token_id, sessions) \
                 VALUES {} ON CONFLICT (node_id, account_id, kind, device_id) DO UPDATE SET \
                 token_id = excluded.token_id, sessions = excluded.sessions",
                values.join(", ")
            );
            let mut query = sqlx::query(&sql);
            for count in chunk {
                query = query
                    .bind(node.clone())
                    .bind(count.account_id.to_string())
                    .bind(count.kind.as_str())
                    .bind(count.device_id.clone())
                    .bind(count.token_id.to_string())
                    .bind(i64::from(count.sessions));
            }
            query.execute(&mut *tx).await?;
        }
        let mut groups: HashMap<(Uuid, DeviceKind), Vec<&str>> = HashMap::new();
        for count in absent {
            groups
                .entry((count.account_id, count.kind))
                .or_default()
                .push(&count.device_id);
        }
        for ((account_id, kind), devices) in groups {
            for chunk in devices.chunks(ROWS_PER_QUERY) {
                let sql = format!(
                    "DELETE FROM presence WHERE node_id = $1 AND account_id = $2 AND kind = $3 \
                     AND device_id IN ({})",
                    db::placeholders(4, chunk.len())
                );
                let mut query = sqlx::query(&sql)
                    .bind(node.clone())
                    .bind(account_id.to_string())
                    .bind(kind.as_str());
                for device in chunk {
                    query = query.bind(device.to_string());
                }
                query.execute(&mut *tx).await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// Which of these devices have a session on another live node.
    pub async fn remote_online(
        &self,
        account_id: Uuid,
        kind: DeviceKind,
        device_ids: &[String],
    ) -> Result<HashSet<String>> {
        let mut online = HashSet::new();
        if !self.is_clustered() {
            return Ok(online);
        }
        for chunk in device_ids.chunks(ROWS_PER_QUERY) {
            let sql = format!(
                "SELECT DISTINCT p.device_id FROM presence p JOIN portal_nodes n ON n.id = p.node_id \
                 WHERE p.account_id = $1 AND p.kind = $2 AND p.node_id <> $3 \
                 AND n.heartbeat_at >= {DB_NOW} - $4 AND p.device_id IN ({})",
                db::placeholders(5, chunk.len())
            );
            let mut query = sqlx::query(&sql)
                .bind(account_id.to_string())
                .bind(kind.as_str())
                .bind(self.inner.node_id.to_string())
                .bind(NODE_TIMEOUT.as_micros() as i64);
            for device in chunk {
                query = query.bind(device.clone());
            }
            for row in query.fetch_all(self.pool()).await? {
                online.insert(db::text(&row, "device_id")?);
            }
        }
        Ok(online)
    }

    /// How many sessions use each of these tokens on the other live nodes.
    pub async fn remote_token_sessions(
        &self,
        account_id: Uuid,
        token_ids: &[Uuid],
    ) -> Result<HashMap<Uuid, u32>> {
        let mut sessions = HashMap::new();
        if !self.is_clustered() {
            return Ok(sessions);
        }
        for chunk in token_ids.chunks(ROWS_PER_QUERY) {
            let sql = format!(
                "SELECT p.token_id, CAST(SUM(p.sessions) AS BIGINT) AS sessions FROM presence p \
                 JOIN portal_nodes n ON n.id = p.node_id \
                 WHERE p.account_id = $1 AND p.node_id <> $2 AND n.heartbeat_at >= {DB_NOW} - $3 \
                 AND p.token_id IN ({}) GROUP BY p.token_id",
                db::placeholders(4, chunk.len())
            );
            let mut query = sqlx::query(&sql)
                .bind(account_id.to_string())
                .bind(self.inner.node_id.to_string())
                .bind(NODE_TIMEOUT.as_micros() as i64);
            for id in chunk {
                query = query.bind(id.to_string());
            }
            for row in query.fetch_all(self.pool()).await? {
                let count: i64 = row.try_get("sessions")?;
                sessions.insert(
                    db::uuid(&row, "token_id")?,
                    u32::try_from(count).unwrap_or(u32::MAX),
                );
            }
        }
        Ok(sessions)
    }
}
