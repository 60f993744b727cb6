//! The gateway's data-plane metrics (see `postern_metrics`): packets and bytes each way,
//! counted on the data-plane thread through handles taken once; drops, handshakes, peers and
//! authorizations published every few seconds from what the forwarding keeps anyway.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use metrics::{counter, gauge, Counter};
use postern_dataplane::gateway::{DropCounters, DropReason};
use postern_dataplane::peers::PeerTable;
use postern_dataplane::WireGuardKey;

/// A handshake completes when a peer's last one moves by more than this.
const HANDSHAKE_MOVED: Duration = Duration::from_secs(1);

pub struct DataPlaneMetrics {
    packets_from_clients: Counter,
    bytes_from_clients: Counter,
    packets_to_clients: Counter,
    bytes_to_clients: Counter,
    /// The drop counts already added to the metric.
    exported: DropCounters,
    /// Each peer's last completed handshake, as last seen.
    handshakes: HashMap<WireGuardKey, Instant>,
}

impl Default for DataPlaneMetrics {
    fn default() -> Self {
        use postern_metrics::{GATEWAY_BYTES, GATEWAY_PACKETS};
        Self {
            packets_from_clients: counter!(GATEWAY_PACKETS, "direction" => "from_clients"),
            bytes_from_clients: counter!(GATEWAY_BYTES, "direction" => "from_clients"),
            packets_to_clients: counter!(GATEWAY_PACKETS, "direction" => "to_clients"),
            bytes_to_clients: counter!(GATEWAY_BYTES, "direction" => "to_clients"),
            exported: DropCounters::default(),
            handshakes: HashMap::new(),
        }
    }
}

impl DataPlaneMetrics {
    /// A packet out of a client's tunnel, let through to the network.
    pub fn count_from_client(&self, len: usize) {
        self.packets_from_clients.increment(1);
        self.bytes_from_clients.increment(len as u64);
    }

    /// A packet from the network into a client's tunnel.
    pub fn count_to_client(&self, len: usize) {
        self.packets_to_clients.increment(1);
        self.bytes_to_clients.increment(len as u64);
    }

    /// Publishes the drops counted since the last call, the handshakes completed since, and
    /// how many peers and authorizations there are.
    pub fn publish(
        &mut self,
        drops: &DropCounters,
        peers: &PeerTable,
        keys: impl Iterator<Item = WireGuardKey>,
        authorizations: usize,
        now: Instant,
    ) {
        for reason in DropReason::ALL {
            let delta = drops.get(reason).saturating_sub(self.exported.get(reason));
            if delta > 0 {
                counter!(postern_metrics::GATEWAY_DROPS, "reason" => reason.as_str())
                    .increment(delta);
            }
        }
        self.exported = *drops;
        let refused = [
            (DropReason::BadHandshake, "refused_bad"),
            (DropReason::HandshakeUnderLoad, "refused_under_load"),
        ];
        for (reason, outcome) in refused {
            // Registered at 0 so that a dashboard sees the series before the first refusal.
            counter!(postern_metrics::GATEWAY_HANDSHAKES, "outcome" => outcome)
                .absolute(drops.get(reason));
        }
        let mut completed = 0u64;
        let mut current = HashMap::new();
        for key in keys {
            let Some(at) = peers
                .stats(&key)
                .and_then(|stats| stats.since_handshake)
                .and_then(|since| now.checked_sub(since))
            else {
                continue;
            };
            let moved = self
                .handshakes
                .get(&key)
                .is_none_or(|before| at.saturating_duration_since(*before) > HANDSHAKE_MOVED);
            if moved {
                completed += 1;
            }
            current.insert(key, at);
        }
        self.handshakes = current;
        counter!(postern_metrics::GATEWAY_HANDSHAKES, "outcome" => "completed")
            .increment(completed);
        gauge!(postern_metrics::GATEWAY_PEERS).set(peers.len() as f64);
        gauge!(postern_metrics::GATEWAY_AUTHORIZATIONS).set(authorizations as f64);
    }
}
