//! The other portal nodes' part in an account's sessions (PostgreSQL, several nodes).
//!
//! Every node's core keeps the account's grants — those it made and, through the change feed
//! (`ChangeEvent::AuthorizationsWritten`), those the others made — so each can send a grant to
//! its own sessions of the grant's gateway, withdraw it when a change says so (every node hears
//! every change; the deletes are idempotent), and route access through a gateway whatever node
//! holds its session (`ChangeEvent::GatewayPresence`), and learns the devices the others
//! claimed (`ChangeEvent::DevicesClaimed`: their addresses are not offered again here). A grant
//! another node made is checked here as one of this core's own: the feed is in commit order and
//! a remote write waits for any read pending here, so this core knows at least every change
//! committed before the grant — and perhaps a later one made through this node (a revocation,
//! a membership change), which then withdraws it here. A node that goes
//! away takes its gateways' presence with it (`handle_node_gone`); its grants stay in the
//! database and in every other node's core, which can still withdraw them.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use chrono::{DateTime, Utc};
use postern_domain::{ChangeEvent, Device, DeviceKind};
use postern_store::{LoadedAuthorization, RemoteGateway, StoredAuthorization};
use uuid::Uuid;

use super::{
    sorted, AccountSessions, Grant, GrantsLoad, LoadState, StoreOp, StoredGrant, Verdict,
    Withdrawal, Write, DELETED_REMEMBERED, REMOTE_PENDING, REVOKED_REMEMBERED,
};

impl AccountSessions {
    /// The grants in the store and the gateways on other nodes, read again
    /// ([`StoreOp::LoadGrants`]): grants this core holds that the store no longer has are
    /// withdrawn here, grants it missed are checked as if read back after a restart and given
    /// to this node's sessions of their gateways.
    pub fn handle_grants_loaded(&mut self, load: GrantsLoad, now: DateTime<Utc>) {
        self.load = LoadState::Idle;
        let stored: HashSet<Uuid> = load
            .authorizations
            .iter()
            .map(|a| a.authorization.id)
            .collect();
        let gone: Vec<Uuid> = sorted(
            self.grants
                .by_id
                .keys()
                // A pending save creates the row; a pending update would not (another node
                // deleted it: it stays deleted, and so it goes here too).
                .filter(|id| {
                    !stored.contains(id)
                        && !matches!(self.writes.get(id), Some(Write::Save(_)))
                        && !self.writing.contains(id)
                })
                .copied(),
        );
        self.withdraw_written_elsewhere(&gone);
        let missed: Vec<LoadedAuthorization> = load
            .authorizations
            .into_iter()
            .filter(|a| {
                !self.grants.by_id.contains_key(&a.authorization.id)
                    && !self.writes.contains_key(&a.authorization.id)
                    && !self.holds_pair_of(&a.authorization)
            })
            .collect();
        let ids: Vec<Uuid> = missed.iter().map(|a| a.authorization.id).collect();
        self.restore(missed, now);
        for id in ids {
            self.send_authorize(id);
        }
        self.take_remote_gateways(load.remote_gateways, now);
        self.after_load(now);
    }

    /// Another portal node is gone: its gateways' sessions with it.
    pub fn handle_node_gone(&mut self, node_id: Uuid) {
        self.remote_gateways.retain(|_, nodes| {
            nodes.remove(&node_id);
            !nodes.is_empty()
        });
    }

    /// Whether a gateway has a session here or on another node.
    pub(super) fn gateway_online(&self, device_id: &str) -> bool {
        !self.sessions_of(DeviceKind::Gateway, device_id).is_empty()
            || self.remote_gateways.contains_key(device_id)
    }

    /// Where clients reach a gateway: as its latest session here says, else as another node's.
    pub(super) fn gateway_endpoint(&self, device_id: &str) -> Option<String> {
        let here = self
            .sessions_of(DeviceKind::Gateway, device_id)
            .last()
            .and_then(|s| self.gateways.get(s))
            .and_then(|g| g.endpoint.clone());
        here.or_else(|| {
            self.remote_gateways
                .get(device_id)?
                .values()
                .find_map(Clone::clone)
        })
    }

    /// Tells the other nodes again which gateways have sessions here (after this node was
    /// taken for gone, or missed changes).
    pub(super) fn announce_local_gateways(&mut self) {
        let mut announced = Vec::new();
        for session in sorted(self.gateways.keys().copied()) {
            let Some(entry) = self.gateways.get(&session) else {
                continue;
            };
            if announced.contains(&entry.device_id) {
                continue;
            }
            let Some(gateway) = self.device(DeviceKind::Gateway, &entry.device_id).cloned() else {
                continue;
            };
            announced.push(entry.device_id.clone());
            self.store_ops.push_back(StoreOp::AnnounceGateway {
                gateway,
                token_id: entry.token_id,
                endpoint: entry.endpoint.clone(),
                online: true,
            });
        }
    }

    pub(super) fn remember_deleted(&mut self, id: Uuid) {
        if !self.deleted_grants.insert(id) {
            return;
        }
        self.deleted_order.push_back(id);
        if self.deleted_order.len() > DELETED_REMEMBERED {
            if let Some(old) = self.deleted_order.pop_front() {
                self.deleted_grants.remove(&old);
            }
        }
    }

    pub(super) fn remember_revoked(&mut self, token_id: Uuid) {
        if !self.revoked_tokens.insert(token_id) {
            return;
        }
        self.revoked_order.push_back(token_id);
        if self.revoked_order.len() > REVOKED_REMEMBERED {
            if let Some(old) = self.revoked_order.pop_front() {
                self.revoked_tokens.remove(&old);
            }
        }
    }

    /// Another node's grant writes or gateway presence: applied now, or after the pending read
    /// (which may predate them).
    pub(super) fn handle_remote(&mut self, event: &ChangeEvent, now: DateTime<Utc>) {
        if self.is_current() {
            self.apply_remote(event, now);
            return;
        }
        if self.loaded.is_none() && self.load == LoadState::Idle {
            // No sessions here yet: the first read finds it all in the store.
            return;
        }
        if self.remote_pending.len() >= REMOTE_PENDING {
            self.remote_pending.clear();
            self.grants_stale = true;
            return;
        }
        self.remote_pending.push_back(event.clone());
    }

    pub(super) fn apply_remote(&mut self, event: &ChangeEvent, now: DateTime<Utc>) {
        match event {
            ChangeEvent::AuthorizationsWritten { saved, deleted, .. } => {
                self.withdraw_written_elsewhere(deleted);
                for stored in saved {
                    self.take_remote_grant(stored, now);
                }
            }
            ChangeEvent::DevicesClaimed { devices, .. } => {
                for device in devices {
                    let key = (device.kind, device.device_id.clone());
                    let here = !self.sessions_of(key.0, &key.1).is_empty();
                    if !here && !self.claims.contains_key(&key) {
                        self.learn_device(device.clone());
                    }
                }
            }
            ChangeEvent::GatewayPresence {
                node_id,
                gateway,
                endpoint,
                online,
                ..
            } => {
                if *online {
                    self.remote_gateways
                        .entry(gateway.device_id.clone())
                        .or_default()
                        .insert(*node_id, endpoint.clone());
                    self.learn_gateway(gateway, now);
                } else if let Some(nodes) = self.remote_gateways.get_mut(&gateway.device_id) {
                    nodes.remove(node_id);
                    if nodes.is_empty() {
                        self.remote_gateways.remove(&gateway.device_id);
                    }
                }
            }
            _ => {}
        }
    }

    /// Takes the gateways on other nodes as read from the store.
    pub(super) fn take_remote_gateways(
        &mut self,
        gateways: Vec<RemoteGateway>,
        now: DateTime<Utc>,
    ) {
        self.remote_gateways.clear();
        for remote in gateways {
            self.remote_gateways
                .entry(remote.gateway.device_id.clone())
                .or_default()
                .insert(remote.node_id, remote.endpoint);
            self.learn_gateway(&remote.gateway, now);
        }
    }

    /// Grants another node deleted (or that the store no longer has): they leave this core
    /// and this node's gateway sessions, and clients here that still see the resource are
    /// told, so that they ask again. Nothing to write.
    fn withdraw_written_elsewhere(&mut self, ids: &[Uuid]) {
        for id in ids {
            self.remember_deleted(*id);
        }
        let known: Vec<Uuid> = ids
            .iter()
            .filter(|id| self.grants.by_id.contains_key(id))
            .copied()
            .collect();
        if known.is_empty() {
            return;
        }
        self.withdraw(&known, "access was withdrawn", Withdrawal::TellClient);
        for id in &known {
            if self.writes.get(id) == Some(&Write::Delete) {
                self.writes.remove(id);
            }
            self.granted_after_write.remove(id);
        }
    }

    /// A grant another node saved: kept in step here and given to this node's sessions of its
    /// gateway, unless it was made with a token revoked meanwhile (then it is deleted here).
    fn take_remote_grant(&mut self, stored: &StoredAuthorization, now: DateTime<Utc>) {
        let id = stored.id;
        if self.writes.contains_key(&id)
            || self.deleted_grants.contains(&id)
            || stored.expires_at <= now
        {
            // A decision of this node about it is pending and wins; a deleted one stays
            // deleted (this save was committed before the delete); an ended one is dropped.
            return;
        }
        if self.revoked_tokens.contains(&stored.token_id) {
            if self.grants.by_id.contains_key(&id) {
                self.withdraw(&[id], "the token was revoked", Withdrawal::Quietly);
            } else {
                self.writes.insert(id, Write::Delete);
            }
            return;
        }
        let Ok(body) = serde_json::from_value::<StoredGrant>(stored.body.clone()) else {
            return;
        };
        if body.authorization.id != id {
            return;
        }
        let previous = self.grants.by_id.get(&id);
        let unchanged = previous.is_some_and(|g| g.authorization == body.authorization);
        let session = previous.and_then(|g| g.session);
        let grant = Grant {
            wake_at: stored.expires_at,
            authorization: body.authorization,
            token_id: stored.token_id,
            client_ip: body.client_ip,
            gateway_device: stored.gateway_device_id.clone(),
            gateway_public_key: body.gateway_public_key,
            session,
        };
        self.learn_devices_of(&grant, now);
        self.grants.insert(grant);
        let wake = self.wake_time(id, now);
        self.grants.set_wake(id, wake);
        // This core has heard every change committed before the grant, and perhaps a later
        // one made through this node: the grant is checked as one of its own.
        match self.verdict_of(id, now) {
            Some(Verdict::Keep) if !unchanged => self.send_authorize(id),
            Some(Verdict::Keep) | None => {}
            Some(_) => self.check_grants(&[id], now),
        }
    }

    fn holds_pair_of(&self, stored: &StoredAuthorization) -> bool {
        let Ok(body) = serde_json::from_value::<StoredGrant>(stored.body.clone()) else {
            return false;
        };
        self.grants.by_pair.contains_key(&(
            body.authorization.client_device_id,
            body.authorization.resource.id,
        ))
    }

    /// What a grant of another node says of its devices, for those without a session here
    /// (the node holding a device's session knows it best).
    fn learn_devices_of(&mut self, grant: &Grant, now: DateTime<Utc>) {
        let authorization = &grant.authorization;
        let client_id = &authorization.client_device_id;
        if self.sessions_of(DeviceKind::Client, client_id).is_empty() {
            let known = self.device(DeviceKind::Client, client_id).cloned();
            let device = Device {
                public_key: authorization.client_public_key,
                actor_id: Some(authorization.actor_id),
                ipv4: authorization.client_addresses.ipv4,
                ipv6: authorization.client_addresses.ipv6,
                ..known.unwrap_or_else(|| Device {
                    id: Uuid::nil(),
                    account_id: self.account_id,
                    kind: DeviceKind::Client,
                    device_id: client_id.clone(),
                    actor_id: None,
                    site_id: None,
                    token_id: Some(grant.token_id),
                    name: client_id.clone(),
                    version: None,
                    public_key: None,
                    ipv4: Ipv4Addr::UNSPECIFIED,
                    ipv6: std::net::Ipv6Addr::UNSPECIFIED,
                    last_seen_ip: None,
                    last_seen_at: now,
                    created_at: now,
                    // Granted something on another node: not waiting for approval.
                    approved_at: Some(now),
                    ephemeral: false,
                })
            };
            self.learn_device(device);
        }
        let gateway_id = &grant.gateway_device;
        if self.device(DeviceKind::Gateway, gateway_id).is_none() {
            self.learn_device(Device {
                id: Uuid::nil(),
                account_id: self.account_id,
                kind: DeviceKind::Gateway,
                device_id: gateway_id.clone(),
                actor_id: None,
                site_id: Some(authorization.resource.site_id),
                token_id: None,
                name: gateway_id.clone(),
                version: None,
                public_key: grant.gateway_public_key,
                ipv4: Ipv4Addr::UNSPECIFIED,
                ipv6: std::net::Ipv6Addr::UNSPECIFIED,
                last_seen_ip: None,
                last_seen_at: now,
                created_at: now,
                approved_at: Some(now),
                ephemeral: false,
            });
        }
    }

    /// A gateway's record as the node holding its session sent it; a changed key withdraws
    /// what was granted under the old one.
    fn learn_gateway(&mut self, gateway: &Device, now: DateTime<Utc>) {
        if !self
            .sessions_of(DeviceKind::Gateway, &gateway.device_id)
            .is_empty()
        {
            return;
        }
        if self.learn_device(gateway.clone()) {
            let ids = super::Grants::ids_of(&self.grants.by_gateway, &gateway.device_id);
            self.check_grants(&ids, now);
        }
    }

    /// Puts a device record in place of what was known of it, with its key and address
    /// indexes; whether its key changed.
    fn learn_device(&mut self, device: Device) -> bool {
        let Some(loaded) = self.loaded.as_mut() else {
            return false;
        };
        let key = (device.kind, device.device_id.clone());
        let old = loaded.devices.insert(key.clone(), device.clone());
        if let Some(old) = &old {
            if old.public_key != device.public_key {
                if let Some(old_key) = &old.public_key {
                    if loaded.keys.get(old_key) == Some(&key) {
                        loaded.keys.remove(old_key);
                    }
                }
            }
            if old.ipv4 != device.ipv4 {
                loaded.used_ipv4.remove(&old.ipv4);
            }
        }
        if let Some(public_key) = &device.public_key {
            loaded.keys.insert(*public_key, key);
        }
        if !device.ipv4.is_unspecified() {
            loaded.used_ipv4.insert(device.ipv4);
        }
        old.is_some_and(|o| o.public_key != device.public_key)
    }
}
