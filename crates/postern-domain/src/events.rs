//! Change events: what an operation changed, as data. Storage emits them after a commit; later
//! layers push them to connected clients and gateways and to other portal nodes.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::model::{Device, StoredAuthorization};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ChangeEvent {
    TokenCreated {
        account_id: Uuid,
        token_id: Uuid,
    },
    /// A token's name or guardrails changed.
    TokenUpdated {
        account_id: Uuid,
        token_id: Uuid,
    },
    /// A token was rotated: it now stops working at `expires_at` (the end of the overlap
    /// window), and `successor_id` replaces it. Sessions with it are cut to `expires_at` at
    /// once, without a read, on every node.
    TokenRotated {
        account_id: Uuid,
        token_id: Uuid,
        successor_id: Uuid,
        expires_at: chrono::DateTime<chrono::Utc>,
    },
    /// The tokens no longer authenticate: revoked, or deleted with their actor or site.
    TokensRevoked {
        account_id: Uuid,
        token_ids: Vec<Uuid>,
    },
    ActorCreated {
        account_id: Uuid,
        actor_id: Uuid,
    },
    ActorUpdated {
        account_id: Uuid,
        actor_id: Uuid,
    },
    ActorDisabled {
        account_id: Uuid,
        actor_id: Uuid,
    },
    ActorEnabled {
        account_id: Uuid,
        actor_id: Uuid,
    },
    ActorDeleted {
        account_id: Uuid,
        actor_id: Uuid,
    },
    GroupCreated {
        account_id: Uuid,
        group_id: Uuid,
    },
    GroupUpdated {
        account_id: Uuid,
        group_id: Uuid,
    },
    GroupDeleted {
        account_id: Uuid,
        group_id: Uuid,
    },
    MembershipChanged {
        account_id: Uuid,
        group_id: Uuid,
        added: Vec<Uuid>,
        removed: Vec<Uuid>,
    },
    SiteCreated {
        account_id: Uuid,
        site_id: Uuid,
    },
    SiteUpdated {
        account_id: Uuid,
        site_id: Uuid,
    },
    SiteDeleted {
        account_id: Uuid,
        site_id: Uuid,
    },
    ResourceCreated {
        account_id: Uuid,
        resource_id: Uuid,
    },
    /// `address_or_site_changed` tells whether existing authorizations must be withdrawn.
    ResourceUpdated {
        account_id: Uuid,
        resource_id: Uuid,
        address_or_site_changed: bool,
    },
    ResourceDeleted {
        account_id: Uuid,
        resource_id: Uuid,
    },
    PolicyCreated {
        account_id: Uuid,
        policy_id: Uuid,
    },
    PolicyUpdated {
        account_id: Uuid,
        policy_id: Uuid,
    },
    PolicyDeleted {
        account_id: Uuid,
        policy_id: Uuid,
    },
    AccountUpdated {
        account_id: Uuid,
    },
    /// An administrator blocked one client device (its id and key): its sessions end, its
    /// grants go, and it is refused from now on; the token keeps working for the others.
    DeviceBlocked {
        account_id: Uuid,
        device_id: String,
    },
    DeviceUnblocked {
        account_id: Uuid,
        device_id: String,
    },
    /// Devices removed: ephemeral ones that stopped or vanished, others unseen for long. Their
    /// addresses are free again; a session one of them holds meanwhile is told to reconnect.
    DevicesRemoved {
        account_id: Uuid,
        kind: crate::DeviceKind,
        device_ids: Vec<String>,
    },
    /// An administrator approved a client device that waited for it (its token requires
    /// approval): it is granted what its policies allow from now on.
    DeviceApproved {
        account_id: Uuid,
        device_id: String,
    },
    /// Authorizations a portal node saved or deleted. Only in the change feed: the node that
    /// wrote them knows already, the others keep their copies of the account's grants in step.
    AuthorizationsWritten {
        account_id: Uuid,
        saved: Vec<StoredAuthorization>,
        deleted: Vec<Uuid>,
    },
    /// New devices' rows a portal node claimed (their ids, keys and tunnel addresses are
    /// taken). Only in the change feed, for the other nodes.
    DevicesClaimed {
        account_id: Uuid,
        devices: Vec<Device>,
    },
    /// A gateway's first session on a portal node began (`online`), or its last one there
    /// ended. Only in the change feed, for the other nodes.
    GatewayPresence {
        account_id: Uuid,
        node_id: Uuid,
        gateway: Box<Device>,
        endpoint: Option<String>,
        online: bool,
    },
}

impl ChangeEvent {
    pub fn account_id(&self) -> Uuid {
        match self {
            ChangeEvent::TokenCreated { account_id, .. }
            | ChangeEvent::TokenUpdated { account_id, .. }
            | ChangeEvent::TokenRotated { account_id, .. }
            | ChangeEvent::TokensRevoked { account_id, .. }
            | ChangeEvent::ActorCreated { account_id, .. }
            | ChangeEvent::ActorUpdated { account_id, .. }
            | ChangeEvent::ActorDisabled { account_id, .. }
            | ChangeEvent::ActorEnabled { account_id, .. }
            | ChangeEvent::ActorDeleted { account_id, .. }
            | ChangeEvent::GroupCreated { account_id, .. }
            | ChangeEvent::GroupUpdated { account_id, .. }
            | ChangeEvent::GroupDeleted { account_id, .. }
            | ChangeEvent::MembershipChanged { account_id, .. }
            | ChangeEvent::SiteCreated { account_id, .. }
            | ChangeEvent::SiteUpdated { account_id, .. }
            | ChangeEvent::SiteDeleted { account_id, .. }
            | ChangeEvent::DeviceBlocked { account_id, .. }
            | ChangeEvent::DeviceUnblocked { account_id, .. }
            | ChangeEvent::DeviceApproved { account_id, .. }
            | ChangeEvent::DevicesRemoved { account_id, .. }
            | ChangeEvent::ResourceCreated { account_id, .. }
            | ChangeEvent::ResourceUpdated { account_id, .. }
            | ChangeEvent::ResourceDeleted { account_id, .. }
            | ChangeEvent::PolicyCreated { account_id, .. }
            | ChangeEvent::PolicyUpdated { account_id, .. }
            | ChangeEvent::PolicyDeleted { account_id, .. }
            | ChangeEvent::AccountUpdated { account_id }
            | ChangeEvent::AuthorizationsWritten { account_id, .. }
            | ChangeEvent::DevicesClaimed { account_id, .. }
            | ChangeEvent::GatewayPresence { account_id, .. } => *account_id,
        }
    }
}
