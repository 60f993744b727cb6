//! Devices (headless clients and gateways), and the account snapshot that access decisions
//! read. Device sightings are buffered and written in batches: a fleet reconnecting at once
//! costs one transaction a second, not one per session.

use chrono::{DateTime, Utc};
use postern_domain::{Acting, ChangeEvent, Device, DeviceKind, Policy, Resource, WireGuardKey};
use sqlx::any::AnyRow;
use sqlx::Row;
use uuid::Uuid;

use crate::audit::{self, snapshot, Entry};
use crate::db::{self, opt_text, opt_time, opt_uuid, text, time, ts};
use crate::{Page, Paged, Result, Store, StoreError};

/// Devices per claiming `INSERT` (17 bind parameters each: well under SQLite's and
/// PostgreSQL's limits).
const CLAIMS_PER_QUERY: usize = 500;
/// Devices per removing `DELETE` or approving `UPDATE`.
const REMOVALS_PER_QUERY: usize = 500;

/// Which devices to list.
#[derive(Debug, Clone, Default)]
pub struct DeviceFilter {
    pub actor_id: Option<Uuid>,
    pub token_id: Option<Uuid>,
    pub site_id: Option<Uuid>,
    /// Only the device with this device id (the one it reports).
    pub device_id: Option<String>,
    /// Only devices whose name or device id contains this (case-insensitive).
    pub search: Option<String>,
    /// Only devices waiting for approval (`true`), or only the approved ones (`false`).
    pub awaiting_approval: Option<bool>,
    /// Only blocked devices (`true`), or only the others (`false`).
    pub blocked: Option<bool>,
}

/// The `WHERE` conditions of a device listing and their bound values (`$1`, `$2`, ...).
fn device_conditions(
    account_id: Uuid,
    kind: DeviceKind,
    filter: &DeviceFilter,
) -> (String, Vec<String>) {
    let mut sql = String::from("account_id = $1 AND kind = $2");
    let mut binds = vec![account_id.to_string(), kind.as_str().to_string()];
    for (column, value) in [
        ("actor_id", filter.actor_id),
        ("token_id", filter.token_id),
        ("site_id", filter.site_id),
    ] {
        if let Some(value) = value {
            binds.push(value.to_string());
            sql.push_str(&format!(" AND {column} = ${}", binds.len()));
        }
    }
    if let Some(device_id) = &filter.device_id {
        binds.push(device_id.clone());
        sql.push_str(&format!(" AND device_id = ${}", binds.len()));
    }
    if let Some(needle) = filter.search.as_deref().filter(|n| !n.is_empty()) {
        binds.push(format!("%{}%", db::escape_like(&needle.to_lowercase())));
        let n = binds.len();
        sql.push_str(&format!(
            " AND (LOWER(name) LIKE ${n} ESCAPE '\\' OR LOWER(device_id) LIKE ${n} ESCAPE '\\')"
        ));
    }
    if let Some(awaiting) = filter.awaiting_approval {
        let negation = if awaiting { "" } else { "NOT " };
        sql.push_str(&format!(" AND approved_at IS {negation}NULL"));
    }
    if let Some(blocked) = filter.blocked {
        // The blocked list is short: the database looks its ids up in the device id index.
        let negation = if blocked { "" } else { "NOT " };
        sql.push_str(&format!(
            " AND device_id {negation}IN (SELECT device_id FROM blocked_devices WHERE \
             account_id = $1)"
        ));
    }
    (sql, binds)
}

/// A client device an administrator blocked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockedDevice {
    pub device_id: String,
    /// Its WireGuard key when it was blocked: refused under any id.
    pub public_key: Option<WireGuardKey>,
}

/// What became of a new device's claim on its id and tunnel address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceClaim {
    /// The row is the device's: its id and address are unique in the account.
    Claimed,
    /// Another device of the account holds this tunnel address (another node allocated it).
    AddressTaken,
    /// A row with this device id exists already (another node registered it meanwhile): it is
    /// the device's truth, whoever it belongs to.
    IdTaken(Box<Device>),
}

/// What an account's access decisions need, read in one go.
#[derive(Debug, Clone, Default)]
pub struct AccessData {
    pub resources: Vec<Resource>,
    pub policies: Vec<Policy>,
    /// `(group_id, actor_id)`.
    pub memberships: Vec<(Uuid, Uuid)>,
    pub disabled_actors: Vec<Uuid>,
    /// Site names, for the reasons given to devices.
    pub site_names: std::collections::HashMap<Uuid, String>,
    /// Client devices refused by an administrator.
    pub blocked_devices: Vec<BlockedDevice>,
}

impl Store {
    /// Buffers a sighting of a claimed device (name, version, key, token, last seen); written by
    /// the usage flusher.
    pub fn record_device(&self, device: Device) {
        self.inner.devices.lock().insert(
            (device.account_id, device.kind, device.device_id.clone()),
            device,
        );
    }

    /// Audits that a client device moved from a rotated token to its successor
    /// (`client.move_to_successor`, by the portal).
    pub async fn record_token_move(
        &self,
        account_id: Uuid,
        device: Uuid,
        device_id: &str,
        from: Uuid,
        to: Uuid,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        audit::record(
            &mut tx.tx,
            Entry {
                account_id: Some(account_id),
                acting: &Acting::default(),
                action: "client.move_to_successor",
                object_type: "client",
                object_id: Some(device),
                before: Some(serde_json::json!({ "device_id": device_id, "token_id": from })),
                after: Some(serde_json::json!({ "device_id": device_id, "token_id": to })),
                now: Utc::now(),
            },
        )
        .await?;
        tx.commit().await
    }

    /// Corrects the ids of the client devices whose last session used `token_id`, as read from
    /// the database, by the sightings not yet written.
    pub(crate) fn overlay_pending_sightings(
        &self,
        account_id: Uuid,
        token_id: Uuid,
        device_ids: &mut std::collections::HashSet<String>,
    ) {
        let pending = self.inner.devices.lock();
        for ((account, kind, device_id), device) in pending.iter() {
            if *account != account_id || *kind != DeviceKind::Client {
                continue;
            }
            if device.token_id == Some(token_id) {
                device_ids.insert(device_id.clone());
            } else {
                device_ids.remove(device_id);
            }
        }
    }

    /// Every device of the account, for address allocation and lookups.
    pub async fn load_devices(&self, account_id: Uuid) -> Result<Vec<Device>> {
        let rows = sqlx::query("SELECT * FROM devices WHERE account_id = $1")
            .bind(account_id.to_string())
            .fetch_all(self.pool())
            .await?;
        let mut devices = rows
            .iter()
            .map(device_from_row)
            .collect::<Result<Vec<_>>>()?;
        let pending = self.inner.devices.lock();
        for device in &mut devices {
            if let Some(newer) = pending.get(&(account_id, device.kind, device.device_id.clone())) {
                *device = Device {
                    id: device.id,
                    created_at: device.created_at,
                    // An approval is written by an administrator, never undone by a sighting.
                    approved_at: device.approved_at.or(newer.approved_at),
                    ..newer.clone()
                };
            }
        }
        Ok(devices)
    }

    pub async fn list_devices(
        &self,
        account_id: Uuid,
        kind: DeviceKind,
        filter: &DeviceFilter,
        page: Page,
    ) -> Result<Paged<Device>> {
        self.flush_devices().await?;
        let (conditions, mut binds) = device_conditions(account_id, kind, filter);
        binds.push(page.cursor.map(|c| c.to_string()).unwrap_or_default());
        let sql = format!(
            "SELECT * FROM devices WHERE {conditions} AND id > ${} ORDER BY id LIMIT {}",
            binds.len(),
            page.limit + 1
        );
        let mut query = sqlx::query(&sql);
        for bind in binds {
            query = query.bind(bind);
        }
        let rows = query.fetch_all(self.pool()).await?;
        let items = rows
            .iter()
            .map(device_from_row)
            .collect::<Result<Vec<_>>>()?;
        Ok(db::paginate(items, page.limit, |d| d.id))
    }

    /// How many devices match the filter (all pages).
    pub async fn count_devices(
        &self,
        account_id: Uuid,
        kind: DeviceKind,
        filter: &DeviceFilter,
    ) -> Result<u64> {
        let (conditions, binds) = device_conditions(account_id, kind, filter);
        let sql = format!("SELECT COUNT(*) AS n FROM devices WHERE {conditions}");
        let mut query = sqlx::query(&sql);
        for bind in binds {
            query = query.bind(bind);
        }
        let row = query.fetch_one(self.pool()).await?;
        let count: i64 = row.try_get("n")?;
        Ok(u64::try_from(count).unwrap_or_default())
    }

    /// The account's resources, enabled and disabled policies, memberships and disabled actors.
    pub async fn access_data(&self, account_id: Uuid) -> Result<AccessData> {
        let all = Page {
            limit: u32::MAX - 1,
            cursor: None,
        };
        let resources = self.list_resources(account_id, all).await?.items;
        let policies = self.list_policies(account_id, all).await?.items;
        let rows = sqlx::query("SELECT group_id, actor_id FROM memberships WHERE account_id = $1")
            .bind(account_id.to_string())
            .fetch_all(self.pool())
            .await?;
        let memberships = rows
            .iter()
            .map(|row| Ok((db::uuid(row, "group_id")?, db::uuid(row, "actor_id")?)))
            .collect::<Result<Vec<_>>>()?;
        let rows =
            sqlx::query("SELECT id FROM actors WHERE account_id = $1 AND disabled_at IS NOT NULL")
                .bind(account_id.to_string())
                .fetch_all(self.pool())
                .await?;
        let disabled_actors = rows
            .iter()
            .map(|row| db::uuid(row, "id"))
            .collect::<Result<Vec<_>>>()?;
        let rows = sqlx::query("SELECT id, name FROM sites WHERE account_id = $1")
            .bind(account_id.to_string())
            .fetch_all(self.pool())
            .await?;
        let site_names = rows
            .iter()
            .map(|row| Ok((db::uuid(row, "id")?, db::text(row, "name")?)))
            .collect::<Result<_>>()?;
        Ok(AccessData {
            resources,
            policies,
            memberships,
            disabled_actors,
            site_names,
            blocked_devices: self.blocked_devices(account_id).await?,
        })
    }

    /// The account's blocked client devices.
    pub async fn blocked_devices(&self, account_id: Uuid) -> Result<Vec<BlockedDevice>> {
        let rows =
            sqlx::query("SELECT device_id, public_key FROM blocked_devices WHERE account_id = $1")
                .bind(account_id.to_string())
                .fetch_all(self.pool())
                .await?;
        rows.iter()
            .map(|row| {
                let device_id = text(row, "device_id")?;
                let public_key = stored_key(opt_text(row, "public_key")?, &device_id);
                Ok(BlockedDevice {
                    device_id,
                    public_key,
                })
            })
            .collect()
    }

    /// One client device of the account, by its row's id.
    pub async fn get_client(&self, account_id: Uuid, id: Uuid) -> Result<Device> {
        self.flush_devices().await?;
        let row =
            sqlx::query("SELECT * FROM devices WHERE account_id = $1 AND id = $2 AND kind = $3")
                .bind(account_id.to_string())
                .bind(id.to_string())
                .bind(DeviceKind::Client.as_str())
                .fetch_optional(self.pool())
                .await?
                .ok_or(StoreError::NotFound("client"))?;
        device_from_row(&row)
    }

    /// Blocks a client device: its sessions end and its grants go on every portal node, and
    /// its id and current key are refused until [`Store::unblock_client`]. Blocking a blocked
    /// device changes nothing.
    pub async fn block_client(
        &self,
        account_id: Uuid,
        id: Uuid,
        acting: &Acting,
    ) -> Result<Device> {
        self.set_blocked(account_id, id, true, acting).await
    }

    pub async fn unblock_client(
        &self,
        account_id: Uuid,
        id: Uuid,
        acting: &Acting,
    ) -> Result<Device> {
        self.set_blocked(account_id, id, false, acting).await
    }

    /// Approves a client device that waits for it (its token requires approval): it is granted
    /// what its policies allow from now on, on every portal node. Approving an approved device
    /// changes nothing.
    pub async fn approve_client(
        &self,
        account_id: Uuid,
        id: Uuid,
        acting: &Acting,
    ) -> Result<Device> {
        let before = self.get_client(account_id, id).await?;
        if before.approved_at.is_some() {
            return Ok(before);
        }
        let now = Utc::now();
        let mut tx = self.begin_write().await?;
        let changed = sqlx::query(
            "UPDATE devices SET approved_at = $1 \
             WHERE account_id = $2 AND id = $3 AND approved_at IS NULL",
        )
        .bind(ts(now))
        .bind(account_id.to_string())
        .bind(id.to_string())
        .execute(&mut *tx.tx)
        .await?
        .rows_affected();
        if changed == 0 {
            return self.get_client(account_id, id).await;
        }
        let after = Device {
            approved_at: Some(now),
            ..before.clone()
        };
        audit::record(
            &mut tx.tx,
            Entry {
                account_id: Some(account_id),
                acting,
                action: "client.approve",
                object_type: "client",
                object_id: Some(id),
                before: snapshot(&before),
                after: snapshot(&after),
                now,
            },
        )
        .await?;
        self.commit_publishing(
            tx,
            vec![ChangeEvent::DeviceApproved {
                account_id,
                device_id: after.device_id.clone(),
            }],
        )
        .await?;
        Ok(after)
    }

    /// Removes devices of the account, each once however many portal nodes try at the same
    /// time: the row goes, the audit log records it (`client.remove` or `gateway.remove`, with
    /// `why`) and every node forgets the device and frees its address (`DevicesRemoved`).
    /// With `seen_before`, only devices not seen since then go (one that came back stays).
    /// Returns the devices removed here.
    pub async fn remove_devices(
        &self,
        account_id: Uuid,
        ids: &[Uuid],
        seen_before: Option<DateTime<Utc>>,
        why: &str,
    ) -> Result<Vec<Device>> {
        let mut removed = Vec::new();
        for chunk in ids.chunks(REMOVALS_PER_QUERY) {
            let mut tx = self.begin_write().await?;
            let seen = match seen_before {
                Some(_) => format!(" AND last_seen_at < ${}", chunk.len() + 2),
                None => String::new(),
            };
            let sql = format!(
                "DELETE FROM devices WHERE account_id = $1 AND id IN ({}){seen} RETURNING *",
                db::placeholders(2, chunk.len())
            );
            let mut query = sqlx::query(&sql).bind(account_id.to_string());
            for id in chunk {
                query = query.bind(id.to_string());
            }
            if let Some(before) = seen_before {
                query = query.bind(ts(before));
            }
            let rows = query.fetch_all(&mut *tx.tx).await?;
            let devices = rows
                .iter()
                .map(device_from_row)
                .collect::<Result<Vec<Device>>>()?;
            if devices.is_empty() {
                continue;
            }
            let now = Utc::now();
            let acting = Acting::default();
            for device in &devices {
                let action = match device.kind {
                    DeviceKind::Client => "client.remove",
                    DeviceKind::Gateway => "gateway.remove",
                };
                let mut before = snapshot(device);
                if let Some(fields) = before.as_mut().and_then(|v| v.as_object_mut()) {
                    fields.insert("removed_because".into(), serde_json::json!(why));
                }
                audit::record(
                    &mut tx.tx,
                    Entry {
                        account_id: Some(account_id),
                        acting: &acting,
                        action,
                        object_type: device.kind.as_str(),
                        object_id: Some(device.id),
                        before,
                        after: None,
                        now,
                    },
                )
                .await?;
            }
            let mut events = Vec::new();
            for kind in [DeviceKind::Client, DeviceKind::Gateway] {
                let device_ids: Vec<String> = devices
                    .iter()
                    .filter(|d| d.kind == kind)
                    .map(|d| d.device_id.clone())
                    .collect();
                if !device_ids.is_empty() {
                    events.push(ChangeEvent::DevicesRemoved {
                        account_id,
                        kind,
                        device_ids,
                    });
                }
            }
            self.commit_publishing(tx, events).await?;
            removed.extend(devices);
        }
        Ok(removed)
    }

    /// Devices of the account due for removal at `now`: ephemeral clients last seen before
    /// its `ephemeral_device_timeout_seconds`, and every device last seen before its
    /// `stale_device_days`; at most `limit`, the longest unseen first. The caller leaves out
    /// the ones online now.
    pub async fn devices_due_for_removal(
        &self,
        account_id: Uuid,
        settings: &postern_domain::AccountSettings,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<(Device, DateTime<Utc>)>> {
        self.flush_devices().await?;
        let ephemeral_cutoff =
            now - chrono::Duration::seconds(i64::from(settings.ephemeral_device_timeout_seconds));
        let stale_cutoff = now - chrono::Duration::days(i64::from(settings.stale_device_days));
        let rows = sqlx::query(&format!(
            "SELECT * FROM devices WHERE account_id = $1 AND \
             ((ephemeral = 1 AND last_seen_at < $2) OR last_seen_at < $3) \
             ORDER BY last_seen_at LIMIT {limit}"
        ))
        .bind(account_id.to_string())
        .bind(ts(ephemeral_cutoff))
        .bind(ts(stale_cutoff))
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                let device = device_from_row(row)?;
                let cutoff = match device.ephemeral {
                    true => ephemeral_cutoff,
                    false => stale_cutoff,
                };
                Ok((device, cutoff))
            })
            .collect()
    }

    /// Records client devices as approved now, if they were not: seen on a token that does not
    /// require approval (the portal approves them; not audited as an administrator's act).
    pub async fn mark_approved(&self, account_id: Uuid, ids: &[Uuid]) -> Result<()> {
        for chunk in ids.chunks(REMOVALS_PER_QUERY) {
            let sql = format!(
                "UPDATE devices SET approved_at = $2 WHERE account_id = $1 \
                 AND approved_at IS NULL AND id IN ({})",
                db::placeholders(3, chunk.len())
            );
            let mut query = sqlx::query(&sql)
                .bind(account_id.to_string())
                .bind(ts(Utc::now()));
            for id in chunk {
                query = query.bind(id.to_string());
            }
            let mut tx = self.begin_write().await?;
            query.execute(&mut *tx.tx).await?;
            tx.commit().await?;
        }
        Ok(())
    }

    /// Whether each of `device_ids` (clients of the account) is blocked.
    pub async fn blocked_among(
        &self,
        account_id: Uuid,
        device_ids: &[String],
    ) -> Result<std::collections::HashSet<String>> {
        let blocked = self.blocked_devices(account_id).await?;
        Ok(blocked
            .into_iter()
            .map(|b| b.device_id)
            .filter(|id| device_ids.contains(id))
            .collect())
    }

    async fn set_blocked(
        &self,
        account_id: Uuid,
        id: Uuid,
        blocked: bool,
        acting: &Acting,
    ) -> Result<Device> {
        let device = self.get_client(account_id, id).await?;
        let actor_id = device.actor_id.ok_or_else(|| {
            StoreError::Corrupt(format!("client {} has no service account", device.id))
        })?;
        let now = Utc::now();
        let mut tx = self.begin_write().await?;
        let changed = if blocked {
            sqlx::query(
                "INSERT INTO blocked_devices \
                 (account_id, device_id, actor_id, public_key, blocked_at) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (account_id, device_id) DO NOTHING",
            )
            .bind(account_id.to_string())
            .bind(device.device_id.clone())
            .bind(actor_id.to_string())
            .bind(device.public_key.map(|k| k.to_string()))
            .bind(ts(now))
            .execute(&mut *tx.tx)
            .await?
            .rows_affected()
        } else {
            sqlx::query("DELETE FROM blocked_devices WHERE account_id = $1 AND device_id = $2")
                .bind(account_id.to_string())
                .bind(device.device_id.clone())
                .execute(&mut *tx.tx)
                .await?
                .rows_affected()
        };
        if changed == 0 {
            return Ok(device);
        }
        let (action, event) = match blocked {
            true => (
                "client.block",
                ChangeEvent::DeviceBlocked {
                    account_id,
                    device_id: device.device_id.clone(),
                },
            ),
            false => (
                "client.unblock",
                ChangeEvent::DeviceUnblocked {
                    account_id,
                    device_id: device.device_id.clone(),
                },
            ),
        };
        audit::record(
            &mut tx.tx,
            Entry {
                account_id: Some(account_id),
                acting,
                action,
                object_type: "client",
                object_id: Some(device.id),
                before: None,
                after: snapshot(&device),
                now,
            },
        )
        .await?;
        self.commit_publishing(tx, vec![event]).await?;
        Ok(device)
    }

    /// Claims new devices' rows, each on its own (one transaction for the batch): the database's
    /// unique indexes on (account, kind, device id) and (account, tunnel address) decide, so two
    /// portal nodes never hand out one address or bind one id twice.
    pub async fn claim_devices(&self, devices: &[Device]) -> Result<Vec<DeviceClaim>> {
        let mut tx = self.begin_write().await?;
        let mut inserted: std::collections::HashSet<(String, String)> = Default::default();
        for chunk in devices.chunks(CLAIMS_PER_QUERY) {
            let rows: Vec<String> = (0..chunk.len())
                .map(|i| format!("({})", db::placeholders(i * 17 + 1, 17)))
                .collect();
            let sql = format!(
                "INSERT INTO devices (id, account_id, kind, device_id, actor_id, site_id, token_id, \
                 name, version, public_key, ipv4, ipv6, last_seen_ip, last_seen_at, created_at, \
                 approved_at, ephemeral) VALUES {} ON CONFLICT DO NOTHING RETURNING kind, device_id",
                rows.join(", ")
            );
            let mut query = sqlx::query(&sql);
            for device in chunk {
                query = query
                    .bind(device.id.to_string())
                    .bind(device.account_id.to_string())
                    .bind(device.kind.as_str())
                    .bind(device.device_id.clone())
                    .bind(device.actor_id.map(|id| id.to_string()))
                    .bind(device.site_id.map(|id| id.to_string()))
                    .bind(device.token_id.map(|id| id.to_string()))
                    .bind(device.name.clone())
                    .bind(device.version.clone())
                    .bind(device.public_key.map(|key| key.to_string()))
                    .bind(device.ipv4.to_string())
                    .bind(device.ipv6.to_string())
                    .bind(device.last_seen_ip.clone())
                    .bind(ts(device.last_seen_at))
                    .bind(ts(device.created_at))
                    .bind(db::opt_ts(device.approved_at))
                    .bind(i64::from(device.ephemeral));
            }
            for row in query.fetch_all(&mut *tx.tx).await? {
                inserted.insert((text(&row, "kind")?, text(&row, "device_id")?));
            }
        }
        // The others met a unique index: their id (a row to adopt) or their address.
        let mut outcomes = Vec::with_capacity(devices.len());
        for device in devices {
            if inserted.contains(&(device.kind.as_str().to_string(), device.device_id.clone())) {
                outcomes.push(DeviceClaim::Claimed);
                continue;
            }
            let existing = sqlx::query(
                "SELECT * FROM devices WHERE account_id = $1 AND kind = $2 AND device_id = $3",
            )
            .bind(device.account_id.to_string())
            .bind(device.kind.as_str())
            .bind(device.device_id.clone())
            .fetch_optional(&mut *tx.tx)
            .await?;
            outcomes.push(match existing {
                Some(row) => DeviceClaim::IdTaken(Box::new(device_from_row(&row)?)),
                None => DeviceClaim::AddressTaken,
            });
        }
        // The other nodes learn the rows at once, so they do not offer their addresses again.
        let mut claimed: std::collections::BTreeMap<uuid::Uuid, Vec<Device>> = Default::default();
        for (device, outcome) in devices.iter().zip(&outcomes) {
            if *outcome == DeviceClaim::Claimed {
                claimed
                    .entry(device.account_id)
                    .or_default()
                    .push(device.clone());
            }
        }
        let events = claimed
            .into_iter()
            .map(|(account_id, devices)| ChangeEvent::DevicesClaimed {
                account_id,
                devices,
            })
            .collect();
        self.commit_announcing(tx, events).await?;
        Ok(outcomes)
    }

    /// Writes buffered device sightings.
    /// Writes buffered device sightings; when that fails they are kept for the next flush (a
    /// sighting made since wins over its older one).
    pub async fn flush_devices(&self) -> Result<usize> {
        let pending = std::mem::take(&mut *self.inner.devices.lock());
        if pending.is_empty() {
            return Ok(0);
        }
        let devices: Vec<&Device> = pending.values().collect();
        match self.write_sightings(&devices).await {
            Ok(()) => Ok(pending.len()),
            Err(err) => {
                let mut buffered = self.inner.devices.lock();
                for (key, device) in pending {
                    buffered.entry(key).or_insert(device);
                }
                Err(err)
            }
        }
    }

    async fn write_sightings(&self, pending: &[&Device]) -> Result<()> {
        let mut tx = self.begin_write().await?;
        // Rows are created by `claim_devices`; a sighting only updates its device's row, and
        // never one that now belongs to another holder.
        for device in pending {
            sqlx::query(
                "UPDATE devices SET token_id = $1, name = $2, version = $3, public_key = $4, \
                 last_seen_ip = $5, last_seen_at = $6, approved_at = COALESCE(approved_at, $12), \
                 ephemeral = $13 \
                 WHERE account_id = $7 AND kind = $8 AND device_id = $9 \
                 AND COALESCE(actor_id, '') = COALESCE($10, '') \
                 AND COALESCE(site_id, '') = COALESCE($11, '')",
            )
            .bind(device.token_id.map(|id| id.to_string()))
            .bind(device.name.clone())
            .bind(device.version.clone())
            .bind(device.public_key.map(|key| key.to_string()))
            .bind(device.last_seen_ip.clone())
            .bind(ts(device.last_seen_at))
            .bind(device.account_id.to_string())
            .bind(device.kind.as_str())
            .bind(device.device_id.clone())
            .bind(device.actor_id.map(|id| id.to_string()))
            .bind(device.site_id.map(|id| id.to_string()))
            .bind(db::opt_ts(device.approved_at))
            .bind(i64::from(device.ephemeral))
            .execute(&mut *tx.tx)
            .await?;
        }
        tx.commit().await
    }
}

/// Versions before typed keys stored any base64-looking text. Such a key is dropped, not the
/// account: the device sends its real key when it next connects.
fn stored_key(text: Option<String>, device_id: &str) -> Option<WireGuardKey> {
    let text = text?;
    let key = text.parse().ok();
    if key.is_none() {
        tracing::warn!(device_id, "the stored public key of this device is not a WireGuard key; it is ignored until the device connects again");
    }
    key
}

pub(crate) fn device_from_row(row: &AnyRow) -> Result<Device> {
    let kind_text = text(row, "kind")?;
    let parse_ip = |column: &str| -> Result<String> { text(row, column) };
    let device_id = text(row, "device_id")?;
    let public_key = stored_key(opt_text(row, "public_key")?, &device_id);
    Ok(Device {
        id: db::uuid(row, "id")?,
        account_id: db::uuid(row, "account_id")?,
        kind: DeviceKind::parse(&kind_text)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown device kind '{kind_text}'")))?,
        device_id,
        actor_id: opt_uuid(row, "actor_id")?,
        site_id: opt_uuid(row, "site_id")?,
        token_id: opt_uuid(row, "token_id")?,
        name: text(row, "name")?,
        version: opt_text(row, "version")?,
        public_key,
        ipv4: parse_ip("ipv4")?
            .parse()
            .map_err(|_| StoreError::Corrupt("a device's ipv4 is not an address".to_string()))?,
        ipv6: parse_ip("ipv6")?
            .parse()
            .map_err(|_| StoreError::Corrupt("a device's ipv6 is not an address".to_string()))?,
        last_seen_ip: opt_text(row, "last_seen_ip")?,
        last_seen_at: time(row, "last_seen_at")?,
        created_at: time(row, "created_at")?,
        approved_at: opt_time(row, "approved_at")?,
        ephemeral: row.try_get::<i64, _>("ephemeral")? != 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_stored_by_an_older_version_that_is_not_a_key_is_dropped_not_the_row() {
        let key = WireGuardKey::from_bytes([3; 32]);
        assert_eq!(stored_key(Some(key.to_string()), "d"), Some(key));
        assert_eq!(stored_key(Some("owner-key".into()), "d"), None);
        assert_eq!(stored_key(None, "d"), None);
    }
}
