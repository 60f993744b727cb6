//! One account's sessions: a task that owns them, so no locks guard them.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Weak};

use chrono::{DateTime, Utc};
use postern_access::{diff, AccessSnapshot, View};
use postern_domain::{ChangeEvent, Device, DeviceKind};
use postern_protocol::{
    encode, Authorization, ClientInit, DisconnectReason, GatewayInfo, GatewayInit, PortalToClient,
    PortalToGateway, TunnelAddresses,
};
use postern_store::Store;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::{addresses, Hello, HubInner, Outbound, SessionError};

pub(crate) enum Command {
    Register {
        session: u64,
        kind: DeviceKind,
        hello: Hello,
        outbound: mpsc::Sender<Outbound>,
        reply: oneshot::Sender<Result<(), SessionError>>,
    },
    Unregister {
        session: u64,
    },
    RequestAccess {
        session: u64,
        resource_id: Uuid,
    },
    Change(ChangeEvent),
    Resync,
    /// The portal is stopping: tell every session, so devices know to reconnect.
    Shutdown,
}

/// How far ahead the worker looks for a time window opening or closing.
const BOUNDARY_HORIZON: chrono::Duration = chrono::Duration::hours(1);

pub(crate) fn spawn(
    account_id: Uuid,
    store: Store,
    hub: Weak<HubInner>,
) -> mpsc::UnboundedSender<Command> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut worker = Worker {
            account_id,
            store,
            hub,
            loaded: None,
            clients: HashMap::new(),
            gateways: HashMap::new(),
            by_token: HashMap::new(),
            authorizations: HashMap::new(),
            view_cache: HashMap::new(),
        };
        worker.run(rx).await;
    });
    tx
}

struct Loaded {
    slug: String,
    snapshot: AccessSnapshot,
    devices: HashMap<(DeviceKind, String), Device>,
    used_ipv4: HashSet<Ipv4Addr>,
    actor_names: HashMap<Uuid, String>,
    site_names: HashMap<Uuid, String>,
}

struct Session {
    kind: DeviceKind,
    device: Device,
    actor_id: Option<Uuid>,
    site_id: Option<Uuid>,
    token_id: Uuid,
    token_expires_at: DateTime<Utc>,
    source_ip: Option<IpAddr>,
    /// Gateways: where clients reach their WireGuard listener.
    endpoint: Option<String>,
    outbound: mpsc::Sender<Outbound>,
    /// Clients: what they were last told they may reach.
    view: Arc<View>,
}

struct Grant {
    authorization: Authorization,
    /// The client's session when it was granted (0 after a portal restart).
    client_session: u64,
    client_ip: Option<IpAddr>,
    token_id: Uuid,
    gateway_device: String,
}

/// What is stored of a grant, so that a restarted portal still knows (and can withdraw) it.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredGrant {
    authorization: Authorization,
    client_ip: Option<IpAddr>,
}

type ViewKey = (Uuid, Option<IpAddr>);

struct Worker {
    account_id: Uuid,
    store: Store,
    hub: Weak<HubInner>,
    loaded: Option<Loaded>,
    clients: HashMap<u64, Session>,
    gateways: HashMap<u64, Session>,
    by_token: HashMap<Uuid, HashSet<u64>>,
    authorizations: HashMap<Uuid, Grant>,
    /// Views computed since the snapshot last changed, shared by sessions with the same key.
    view_cache: HashMap<ViewKey, Arc<View>>,
}

impl Worker {
    async fn run(&mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        loop {
            let boundary = self.next_boundary();
            let first = tokio::select! {
                command = commands.recv() => match command {
                    Some(command) => command,
                    None => return,
                },
                _ = sleep_until(boundary) => {
                    self.refresh(Utc::now());
                    continue;
                }
            };
            // Handle everything already queued before recomputing, so a burst of changes
            // costs one reload.
            let mut dirty = self.handle(first).await;
            while let Ok(command) = commands.try_recv() {
                dirty |= self.handle(command).await;
            }
            if dirty {
                if let Err(err) = self.reload().await {
                    tracing::error!(account_id = %self.account_id, error = %err, "cannot reload the account's access data");
                    continue;
                }
                self.refresh(Utc::now());
            }
        }
    }

    /// Returns whether the access snapshot must be reloaded.
    async fn handle(&mut self, command: Command) -> bool {
        match command {
            Command::Register {
                session,
                kind,
                hello,
                outbound,
                reply,
            } => {
                let result = self.register(session, kind, hello, outbound).await;
                let _ = reply.send(result);
                false
            }
            Command::Unregister { session } => {
                self.unregister(session);
                false
            }
            Command::RequestAccess {
                session,
                resource_id,
            } => {
                self.request_access(session, resource_id, Utc::now());
                false
            }
            Command::Change(event) => self.on_change(event),
            Command::Shutdown => {
                self.close_all("the portal is restarting; reconnect");
                false
            }
            Command::Resync => {
                self.close_all("the portal is resynchronising; reconnect");
                true
            }
        }
    }

    async fn ensure_loaded(&mut self) -> Result<(), SessionError> {
        if self.loaded.is_some() {
            return Ok(());
        }
        let account = self.store.get_account(self.account_id).await?;
        let devices = self.store.load_devices(self.account_id).await?;
        let data = self.store.access_data(self.account_id).await?;
        let mut loaded = Loaded {
            slug: account.slug,
            snapshot: AccessSnapshot::default(),
            used_ipv4: devices.iter().map(|d| d.ipv4).collect(),
            devices: devices
                .into_iter()
                .map(|d| ((d.kind, d.device_id.clone()), d))
                .collect(),
            actor_names: HashMap::new(),
            site_names: HashMap::new(),
        };
        loaded.snapshot = snapshot_of(data);
        self.loaded = Some(loaded);
        for stored in self
            .store
            .load_authorizations(self.account_id, Utc::now())
            .await?
        {
            let Ok(grant) = serde_json::from_value::<StoredGrant>(stored.body) else {
                tracing::warn!(id = %stored.id, "ignoring a stored authorization that cannot be read");
                continue;
            };
            self.authorizations.insert(
                stored.id,
                Grant {
                    authorization: grant.authorization,
                    client_session: 0,
                    client_ip: grant.client_ip,
                    token_id: stored.token_id,
                    gateway_device: stored.gateway_device_id,
                },
            );
        }
        Ok(())
    }

    async fn reload(&mut self) -> Result<(), SessionError> {
        let data = self.store.access_data(self.account_id).await?;
        if let Some(loaded) = &mut self.loaded {
            loaded.snapshot = snapshot_of(data);
        }
        self.view_cache.clear();
        Ok(())
    }

    async fn register(
        &mut self,
        session: u64,
        kind: DeviceKind,
        hello: Hello,
        outbound: mpsc::Sender<Outbound>,
    ) -> Result<(), SessionError> {
        self.ensure_loaded().await?;
        let principal = &hello.principal;
        let name = match kind {
            DeviceKind::Client => {
                let actor_id = principal.actor_id.ok_or_else(|| {
                    SessionError::Refused("a client token must belong to a service account".into())
                })?;
                self.actor_name(actor_id).await?
            }
            DeviceKind::Gateway => {
                let site_id = principal.site_id.ok_or_else(|| {
                    SessionError::Refused("a gateway token must belong to a site".into())
                })?;
                self.site_name(site_id).await?
            }
        };
        let device = self.sight_device(kind, &hello)?;
        let mut entry = Session {
            kind,
            device,
            actor_id: principal.actor_id,
            site_id: principal.site_id,
            token_id: principal.token_id,
            token_expires_at: principal.expires_at,
            source_ip: hello.source_ip,
            endpoint: hello.params.endpoint.clone(),
            outbound,
            view: Arc::new(View::new()),
        };
        if kind == DeviceKind::Client {
            let actor_id = entry.actor_id.unwrap_or_default();
            entry.view = self.view_for((actor_id, entry.source_ip), Utc::now());
        }
        let slug = self
            .loaded
            .as_ref()
            .map(|l| l.slug.clone())
            .unwrap_or_default();
        let init = match kind {
            DeviceKind::Client => {
                let actor_id = entry.actor_id.unwrap_or_default();
                encode(&PortalToClient::Init(ClientInit {
                    account_id: self.account_id,
                    account_slug: slug,
                    actor_id,
                    actor_name: name,
                    token_id: entry.token_id,
                    token_expires_at: entry.token_expires_at,
                    device_id: entry.device.device_id.clone(),
                    addresses: addresses_of(&entry.device),
                    resources: entry.view.values().cloned().collect(),
                }))
            }
            DeviceKind::Gateway => encode(&PortalToGateway::Init(GatewayInit {
                account_id: self.account_id,
                site_id: entry.site_id.unwrap_or_default(),
                site_name: name,
                token_id: entry.token_id,
                token_expires_at: entry.token_expires_at,
                device_id: entry.device.device_id.clone(),
                addresses: addresses_of(&entry.device),
                authorizations: self
                    .authorizations
                    .values()
                    .filter(|g| g.gateway_device == entry.device.device_id)
                    .map(|g| g.authorization.clone())
                    .collect(),
            })),
        };
        if entry
            .outbound
            .try_send(Outbound::Text(init.into()))
            .is_err()
        {
            return Err(SessionError::Closed);
        }
        if let Some(hub) = self.hub.upgrade() {
            hub.mark_online(
                self.account_id,
                kind,
                &entry.device.device_id,
                entry.token_id,
            );
        }
        self.by_token
            .entry(entry.token_id)
            .or_default()
            .insert(session);
        match kind {
            DeviceKind::Client => self.clients.insert(session, entry),
            DeviceKind::Gateway => self.gateways.insert(session, entry),
        };
        Ok(())
    }

    fn unregister(&mut self, session: u64) {
        let Some(entry) = self
            .clients
            .remove(&session)
            .or_else(|| self.gateways.remove(&session))
        else {
            return;
        };
        if let Some(sessions) = self.by_token.get_mut(&entry.token_id) {
            sessions.remove(&session);
            if sessions.is_empty() {
                self.by_token.remove(&entry.token_id);
            }
        }
        if let Some(hub) = self.hub.upgrade() {
            hub.mark_offline(
                self.account_id,
                entry.kind,
                &entry.device.device_id,
                entry.token_id,
            );
        }
    }

    /// Returns whether the access snapshot must be reloaded.
    fn on_change(&mut self, event: ChangeEvent) -> bool {
        match event {
            ChangeEvent::TokensRevoked { token_ids, .. } => {
                for token_id in &token_ids {
                    self.end_token(
                        *token_id,
                        DisconnectReason::TokenRevoked,
                        "the token was revoked",
                    );
                }
                false
            }
            ChangeEvent::ActorDisabled { actor_id, .. } => {
                self.end_actor(
                    actor_id,
                    DisconnectReason::ActorDisabled,
                    "the service account was disabled",
                );
                true
            }
            ChangeEvent::ActorDeleted { actor_id, .. } => {
                self.end_actor(
                    actor_id,
                    DisconnectReason::ActorDeleted,
                    "the service account was deleted",
                );
                true
            }
            ChangeEvent::ActorUpdated { actor_id, .. } => {
                if let Some(loaded) = &mut self.loaded {
                    loaded.actor_names.remove(&actor_id);
                }
                false
            }
            ChangeEvent::SiteDeleted { site_id, .. } => {
                let sessions: Vec<u64> = self
                    .gateways
                    .iter()
                    .filter(|(_, s)| s.site_id == Some(site_id))
                    .map(|(id, _)| *id)
                    .collect();
                for session in sessions {
                    self.close(
                        session,
                        DisconnectReason::SiteDeleted,
                        "the site was deleted",
                    );
                }
                true
            }
            ChangeEvent::SiteUpdated { site_id, .. } => {
                if let Some(loaded) = &mut self.loaded {
                    loaded.site_names.remove(&site_id);
                }
                false
            }
            ChangeEvent::ActorEnabled { .. }
            | ChangeEvent::GroupDeleted { .. }
            | ChangeEvent::MembershipChanged { .. }
            | ChangeEvent::ResourceCreated { .. }
            | ChangeEvent::ResourceUpdated { .. }
            | ChangeEvent::ResourceDeleted { .. }
            | ChangeEvent::PolicyCreated { .. }
            | ChangeEvent::PolicyUpdated { .. }
            | ChangeEvent::PolicyDeleted { .. } => self.loaded.is_some(),
            _ => false,
        }
    }

    /// Recomputes every client's view, tells each client what changed, and withdraws the
    /// authorizations that no longer hold.
    fn refresh(&mut self, now: DateTime<Utc>) {
        self.view_cache.clear();
        let mut encoded: HashMap<(usize, usize), Vec<Arc<str>>> = HashMap::new();
        let keys: Vec<(u64, ViewKey)> = self
            .clients
            .iter()
            .map(|(id, s)| (*id, (s.actor_id.unwrap_or_default(), s.source_ip)))
            .collect();
        let mut stalled = Vec::new();
        // Replaced views stay alive until the loop ends: `encoded` is keyed by their addresses,
        // which must not be reused by a view allocated meanwhile.
        let mut retired: Vec<Arc<View>> = Vec::new();
        for (session, key) in keys {
            let new = self.view_for(key, now);
            let Some(entry) = self.clients.get_mut(&session) else {
                continue;
            };
            if Arc::ptr_eq(&entry.view, &new) || *entry.view == *new {
                retired.push(std::mem::replace(&mut entry.view, new));
                continue;
            }
            let pair = (
                Arc::as_ptr(&entry.view) as usize,
                Arc::as_ptr(&new) as usize,
            );
            let messages = encoded.entry(pair).or_insert_with(|| {
                diff(&entry.view, &new)
                    .iter()
                    .map(|m| Arc::from(encode(m)))
                    .collect()
            });
            for message in messages.iter() {
                if entry
                    .outbound
                    .try_send(Outbound::Text(message.clone()))
                    .is_err()
                {
                    stalled.push(session);
                    break;
                }
            }
            retired.push(std::mem::replace(&mut entry.view, new));
        }
        drop(retired);
        for session in stalled {
            self.drop_stalled(session);
        }
        self.withdraw_invalid(now);
    }

    fn view_for(&mut self, key: ViewKey, now: DateTime<Utc>) -> Arc<View> {
        if let Some(view) = self.view_cache.get(&key) {
            return view.clone();
        }
        let view = match &self.loaded {
            Some(loaded) => Arc::new(loaded.snapshot.view(key.0, key.1, now)),
            None => Arc::new(View::new()),
        };
        self.view_cache.insert(key, view.clone());
        view
    }

    fn request_access(&mut self, session: u64, resource_id: Uuid, now: DateTime<Utc>) {
        let Some(client) = self.clients.get(&session) else {
            return;
        };
        let Some(loaded) = &self.loaded else { return };
        let actor_id = client.actor_id.unwrap_or_default();
        let denied = |reason: String| {
            encode(&PortalToClient::AccessDenied {
                resource_id,
                reason,
            })
        };
        let until = match loaded
            .snapshot
            .authorize(actor_id, resource_id, client.source_ip, now)
        {
            Ok(until) => until,
            Err(reason) => {
                let _ = client
                    .outbound
                    .try_send(Outbound::Text(denied(reason).into()));
                return;
            }
        };
        let Some(resource) = loaded.snapshot.resources.get(&resource_id) else {
            return;
        };
        let gateway = self
            .gateways
            .iter()
            .filter(|(_, g)| g.site_id == Some(resource.site_id))
            .min_by_key(|(_, g)| {
                self.authorizations
                    .values()
                    .filter(|a| a.gateway_device == g.device.device_id)
                    .count()
            });
        let Some((_, gateway)) = gateway else {
            let site = loaded
                .site_names
                .get(&resource.site_id)
                .cloned()
                .unwrap_or_else(|| resource.site_id.to_string());
            let reason = format!("no gateway of site '{site}' is online");
            let _ = client
                .outbound
                .try_send(Outbound::Text(denied(reason).into()));
            return;
        };
        let expires_at = match until {
            Some(until) => until.min(client.token_expires_at),
            None => client.token_expires_at,
        };
        // One preshared key per client–gateway pair: a WireGuard peer has a single one, so a
        // second resource through the same gateway reuses the pair's key.
        let preshared_key = self
            .authorizations
            .values()
            .find(|g| {
                g.gateway_device == gateway.device.device_id
                    && g.authorization.client_device_id == client.device.device_id
                    && g.authorization.client_public_key == client.device.public_key
            })
            .and_then(|g| g.authorization.preshared_key.clone())
            .or_else(|| Some(preshared_key()));
        let authorization = Authorization {
            id: Uuid::new_v4(),
            client_device_id: client.device.device_id.clone(),
            actor_id,
            client_public_key: client.device.public_key.clone(),
            client_addresses: addresses_of(&client.device),
            resource: postern_access::resource_view(resource, until),
            expires_at,
            preshared_key: preshared_key.clone(),
        };
        let granted = PortalToClient::AccessGranted {
            resource_id,
            authorization_id: authorization.id,
            gateway: GatewayInfo {
                id: gateway.device.device_id.clone(),
                name: gateway.device.name.clone(),
                public_key: gateway.device.public_key.clone(),
                endpoint: gateway.endpoint.clone(),
                addresses: addresses_of(&gateway.device),
            },
            expires_at,
            preshared_key,
        };
        let authorize = PortalToGateway::Authorize {
            authorization: authorization.clone(),
        };
        let _ = gateway
            .outbound
            .try_send(Outbound::Text(encode(&authorize).into()));
        let _ = client
            .outbound
            .try_send(Outbound::Text(encode(&granted).into()));
        let grant = Grant {
            client_session: session,
            client_ip: client.source_ip,
            token_id: client.token_id,
            gateway_device: gateway.device.device_id.clone(),
            authorization,
        };
        self.persist(&grant);
        self.authorizations.insert(grant.authorization.id, grant);
    }

    /// Stores a grant in the background: the worker does not wait for the database.
    fn persist(&self, grant: &Grant) {
        let stored = postern_store::StoredAuthorization {
            id: grant.authorization.id,
            token_id: grant.token_id,
            gateway_device_id: grant.gateway_device.clone(),
            expires_at: grant.authorization.expires_at,
            body: serde_json::to_value(StoredGrant {
                authorization: grant.authorization.clone(),
                client_ip: grant.client_ip,
            })
            .unwrap_or_default(),
        };
        let (store, account_id) = (self.store.clone(), self.account_id);
        tokio::spawn(async move {
            if let Err(err) = store.save_authorization(account_id, &stored).await {
                tracing::warn!(error = %err, "could not store an authorization");
            }
        });
    }

    /// Withdraws authorizations whose client may no longer reach the resource as authorized,
    /// and forgets expired ones.
    fn withdraw_invalid(&mut self, now: DateTime<Utc>) {
        let Some(loaded) = &self.loaded else { return };
        let invalid: Vec<Uuid> = self
            .authorizations
            .iter()
            .filter(|(_, grant)| {
                let authorized = &grant.authorization.resource;
                let current = loaded.snapshot.resources.get(&authorized.id);
                let still_granted = self
                    .clients
                    .get(&grant.client_session)
                    .map(|c| c.view.contains_key(&authorized.id))
                    .unwrap_or_else(|| {
                        loaded
                            .snapshot
                            .authorize(
                                grant.authorization.actor_id,
                                authorized.id,
                                grant.client_ip,
                                now,
                            )
                            .is_ok()
                    });
                grant.authorization.expires_at <= now
                    || !still_granted
                    || current.is_none_or(|r| {
                        r.address != authorized.address || r.site_id != authorized.site_id
                    })
            })
            .map(|(id, _)| *id)
            .collect();
        self.revoke_authorizations(&invalid, "access was withdrawn");
    }

    fn revoke_authorizations(&mut self, ids: &[Uuid], reason: &str) {
        let mut per_gateway: HashMap<String, Vec<Uuid>> = HashMap::new();
        for id in ids {
            if let Some(grant) = self.authorizations.remove(id) {
                per_gateway
                    .entry(grant.gateway_device)
                    .or_default()
                    .push(*id);
            }
        }
        for (device, ids) in per_gateway {
            let message: Arc<str> = encode(&PortalToGateway::Revoke {
                authorization_ids: ids,
                reason: reason.to_string(),
            })
            .into();
            for gateway in self
                .gateways
                .values()
                .filter(|g| g.device.device_id == device)
            {
                let _ = gateway.outbound.try_send(Outbound::Text(message.clone()));
            }
        }
    }

    fn end_token(&mut self, token_id: Uuid, reason: DisconnectReason, message: &str) {
        let sessions: Vec<u64> = self
            .by_token
            .get(&token_id)
            .into_iter()
            .flatten()
            .copied()
            .collect();
        for session in sessions {
            self.close(session, reason, message);
        }
        let grants: Vec<Uuid> = self
            .authorizations
            .iter()
            .filter(|(_, g)| g.token_id == token_id)
            .map(|(id, _)| *id)
            .collect();
        self.revoke_authorizations(&grants, message);
    }

    fn end_actor(&mut self, actor_id: Uuid, reason: DisconnectReason, message: &str) {
        let sessions: Vec<u64> = self
            .clients
            .iter()
            .filter(|(_, s)| s.actor_id == Some(actor_id))
            .map(|(id, _)| *id)
            .collect();
        for session in sessions {
            self.close(session, reason, message);
        }
        let grants: Vec<Uuid> = self
            .authorizations
            .iter()
            .filter(|(_, g)| g.authorization.actor_id == actor_id)
            .map(|(id, _)| *id)
            .collect();
        self.revoke_authorizations(&grants, message);
    }

    /// Ends every session of the account without blaming its credentials: devices reconnect.
    fn close_all(&mut self, message: &str) {
        let sessions: Vec<u64> = self
            .clients
            .keys()
            .chain(self.gateways.keys())
            .copied()
            .collect();
        for session in sessions {
            self.close(session, DisconnectReason::ServerShutdown, message);
        }
    }

    /// Tells the session to end; it unregisters itself as it closes.
    fn close(&mut self, session: u64, reason: DisconnectReason, message: &str) {
        let entry = self
            .clients
            .get(&session)
            .or_else(|| self.gateways.get(&session));
        let Some(entry) = entry else { return };
        let close = Outbound::Close {
            reason,
            message: message.to_string(),
        };
        if entry.outbound.try_send(close).is_err() {
            self.drop_stalled(session);
        }
    }

    /// A session whose device does not keep up loses its queue: dropping the sender ends it.
    fn drop_stalled(&mut self, session: u64) {
        tracing::warn!(session, "dropping a session whose device does not keep up");
        self.unregister(session);
    }

    fn next_boundary(&self) -> Option<DateTime<Utc>> {
        let loaded = self.loaded.as_ref()?;
        if self.clients.is_empty() && self.authorizations.is_empty() {
            return None;
        }
        let now = Utc::now();
        let boundary = postern_access::next_time_boundary(&loaded.snapshot, now, BOUNDARY_HORIZON);
        let expiry = self
            .authorizations
            .values()
            .map(|g| g.authorization.expires_at)
            .min();
        Some(match expiry {
            Some(expiry) if expiry < boundary => expiry,
            _ => boundary,
        })
    }

    fn sight_device(&mut self, kind: DeviceKind, hello: &Hello) -> Result<Device, SessionError> {
        let loaded = self.loaded.as_mut().ok_or(SessionError::Closed)?;
        let key = (kind, hello.params.id.clone());
        let now = Utc::now();
        let (id, created_at, tunnel) = match loaded.devices.get(&key) {
            Some(known) => (known.id, known.created_at, addresses_of(known)),
            None => {
                let device_key = format!("{}:{}", kind.as_str(), hello.params.id);
                let tunnel =
                    addresses::allocate(&device_key, &loaded.used_ipv4).ok_or_else(|| {
                        SessionError::Refused("the account has no tunnel addresses left".into())
                    })?;
                loaded.used_ipv4.insert(tunnel.ipv4);
                (postern_domain::new_id(), now, tunnel)
            }
        };
        let device = Device {
            id,
            account_id: self.account_id,
            kind,
            device_id: hello.params.id.clone(),
            actor_id: hello.principal.actor_id,
            site_id: hello.principal.site_id,
            token_id: Some(hello.principal.token_id),
            name: hello.params.name.clone(),
            version: Some(hello.params.version.clone()),
            public_key: hello.params.public_key.clone(),
            ipv4: tunnel.ipv4,
            ipv6: tunnel.ipv6,
            last_seen_ip: hello.source_ip.map(|ip| ip.to_string()),
            last_seen_at: now,
            created_at,
        };
        loaded.devices.insert(key, device.clone());
        self.store.record_device(device.clone());
        Ok(device)
    }

    async fn actor_name(&mut self, actor_id: Uuid) -> Result<String, SessionError> {
        if let Some(name) = self
            .loaded
            .as_ref()
            .and_then(|l| l.actor_names.get(&actor_id))
        {
            return Ok(name.clone());
        }
        let actor = self.store.get_actor(self.account_id, actor_id).await?;
        if let Some(loaded) = &mut self.loaded {
            loaded.actor_names.insert(actor_id, actor.name.clone());
        }
        Ok(actor.name)
    }

    async fn site_name(&mut self, site_id: Uuid) -> Result<String, SessionError> {
        if let Some(name) = self
            .loaded
            .as_ref()
            .and_then(|l| l.site_names.get(&site_id))
        {
            return Ok(name.clone());
        }
        let site = self.store.get_site(self.account_id, site_id).await?;
        if let Some(loaded) = &mut self.loaded {
            loaded.site_names.insert(site_id, site.name.clone());
        }
        Ok(site.name)
    }
}

/// A fresh 256-bit WireGuard preshared key for one client–gateway authorization (base64).
fn preshared_key() -> String {
    use base64::Engine;
    use rand::RngCore;
    let mut key = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut key);
    base64::engine::general_purpose::STANDARD.encode(key)
}

fn snapshot_of(data: postern_store::AccessData) -> AccessSnapshot {
    let mut snapshot = AccessSnapshot::new(data.resources, data.policies, data.memberships);
    snapshot.disabled_actors = data.disabled_actors.into_iter().collect();
    snapshot
}

fn addresses_of(device: &Device) -> TunnelAddresses {
    TunnelAddresses {
        ipv4: device.ipv4,
        ipv6: device.ipv6,
    }
}

async fn sleep_until(instant: Option<DateTime<Utc>>) {
    match instant {
        Some(instant) => {
            let wait = (instant - Utc::now()).to_std().unwrap_or_default();
            tokio::time::sleep(wait).await;
        }
        None => std::future::pending().await,
    }
}
