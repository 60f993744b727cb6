//! What the client's stub resolver shows: its server (`postern_device::dns_server`, on
//! 198.18.0.53 and fd70:6f73:7465:726f::53 on loopback), how the system is pointed at it, where
//! other names go, and the names a gateway could not resolve.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use postern_device::dns_server::DnsServer;
use serde::{Deserialize, Serialize};
use tracing::info;

/// What the DNS side of the client shows in its status, shared with the role.
#[derive(Debug, Default)]
pub struct DnsState {
    /// The resolver and its counters, shared with the data plane (which routes by its names).
    pub server: Arc<DnsServer>,
    pub info: Mutex<DnsInfo>,
    /// Something shown in the status changed since the status was last written.
    pub dirty: AtomicBool,
    /// Some name is marked unresolvable (checked on the packet path before the lock).
    pub any_unresolvable: AtomicBool,
}

/// How the system's DNS is pointed at the stub resolver, and where everything else goes.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DnsInfo {
    /// `systemd-resolved`, `resolv-conf` or `disabled`.
    pub mode: String,
    /// Where the stub resolver listens.
    pub listen: Vec<SocketAddr>,
    /// Where queries for other names go.
    pub upstreams: Vec<SocketAddr>,
    /// Routing domains given to systemd-resolved (split DNS).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub domains: Vec<String>,
    /// Names a gateway said it cannot resolve, `NAME` for IPv4 and `NAME (IPv6)` for IPv6
    /// (→ the gateway's word).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub unresolvable: BTreeMap<String, String>,
}

/// At most this many unresolvable names are remembered for the status.
const MAX_UNRESOLVABLE_SHOWN: usize = 64;

impl DnsState {
    /// A gateway answered a packet to `name`'s proxy address of one family with "host
    /// unreachable": the name has no address of that family there (or none at all).
    pub fn note_unresolvable(&self, name: &str, ipv6: bool, gateway: &str) {
        let key = unresolvable_key(name, ipv6);
        let mut info = self.info.lock();
        if info.unresolvable.contains_key(&key) {
            return;
        }
        let family = if ipv6 { "IPv6" } else { "IPv4" };
        info!(
            "{name} has no {family} address at gateway {gateway}: connections to it over \
             {family} fail"
        );
        if info.unresolvable.len() >= MAX_UNRESOLVABLE_SHOWN {
            if let Some(first) = info.unresolvable.keys().next().cloned() {
                info.unresolvable.remove(&first);
            }
        }
        info.unresolvable
            .insert(key, format!("no {family} address at gateway {gateway}"));
        self.any_unresolvable.store(true, Ordering::Relaxed);
        self.dirty.store(true, Ordering::Relaxed);
    }

    /// A packet came back from `name`'s proxy address of one family: it resolves there now.
    pub fn note_resolvable(&self, name: &str, ipv6: bool) {
        let mut info = self.info.lock();
        if info
            .unresolvable
            .remove(&unresolvable_key(name, ipv6))
            .is_some()
        {
            info!("{name} resolves at its gateway again");
            self.any_unresolvable
                .store(!info.unresolvable.is_empty(), Ordering::Relaxed);
            self.dirty.store(true, Ordering::Relaxed);
        }
    }
}

/// `name` for IPv4, `name (IPv6)` for IPv6: the keys of [`DnsInfo::unresolvable`].
fn unresolvable_key(name: &str, ipv6: bool) -> String {
    if ipv6 {
        format!("{name} (IPv6)")
    } else {
        name.to_string()
    }
}

impl DnsState {
    /// Whether the status must be written again (and from now on, not until the next change).
    pub fn take_changed(&self) -> bool {
        let names = self.server.names_changed.swap(false, Ordering::Relaxed);
        self.dirty.swap(false, Ordering::Relaxed) || names
    }
}
