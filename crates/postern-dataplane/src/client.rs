//! The client's routing: which resource a packet read from the TUN is for, and through which
//! gateway it goes. A packet toward a resource without a grant is held (in a small bounded
//! queue) while access is requested, then released on the grant or dropped after a timeout.

use std::collections::{HashMap, VecDeque};

use chrono::{DateTime, Duration, Utc};
use ipnet::IpNet;
use postern_protocol::ResourceView;
use uuid::Uuid;

use crate::{packet, resource_network, WireGuardKey};

/// Packets held per resource while access is requested.
pub const MAX_HELD_PER_RESOURCE: usize = 32;
/// Packets held in all.
pub const MAX_HELD: usize = 256;
/// How long a packet may wait for a grant.
pub const HOLD_TIMEOUT: Duration = Duration::seconds(5);
/// How long to wait for an answer before asking again.
pub const REQUEST_RETRY: Duration = Duration::seconds(2);

/// Where a packet goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Through the gateway with this key.
    Send(WireGuardKey),
    /// Held; `request` is set when access must be asked for now.
    Held {
        request: Option<Uuid>,
    },
    Drop(ClientDrop),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientDrop {
    Malformed,
    /// The destination is in no resource of the client.
    NoResource,
    /// The hold queue is full.
    QueueFull,
}

/// A grant as the router needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteGrant {
    pub resource_id: Uuid,
    pub gateway: WireGuardKey,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Default)]
struct Held {
    packets: VecDeque<(DateTime<Utc>, Vec<u8>)>,
    requested_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Default)]
pub struct ClientRouter {
    /// Most specific first.
    networks: Vec<(IpNet, Uuid)>,
    grants: HashMap<Uuid, RouteGrant>,
    held: HashMap<Uuid, Held>,
    held_total: usize,
}

impl ClientRouter {
    /// Replaces the resources; returns the networks to route into the TUN. Held packets of
    /// resources that are gone are dropped.
    pub fn set_resources<'a>(
        &mut self,
        resources: impl IntoIterator<Item = &'a ResourceView>,
    ) -> Vec<IpNet> {
        let mut networks: Vec<(IpNet, Uuid)> = resources
            .into_iter()
            .filter_map(|r| resource_network(r).map(|net| (net, r.id)))
            .collect();
        networks.sort_by(|a, b| b.0.prefix_len().cmp(&a.0.prefix_len()).then(a.1.cmp(&b.1)));
        self.networks = networks;
        let known: std::collections::HashSet<Uuid> =
            self.networks.iter().map(|(_, id)| *id).collect();
        self.grants.retain(|id, _| known.contains(id));
        let before = self.held.len();
        self.held.retain(|id, _| known.contains(id));
        if self.held.len() != before {
            self.held_total = self.held.values().map(|h| h.packets.len()).sum();
        }
        let mut routes: Vec<IpNet> = self.networks.iter().map(|(net, _)| *net).collect();
        routes.sort();
        routes.dedup();
        routes
    }

    /// Replaces the grants; returns the held packets that can go now, with their gateway.
    pub fn set_grants(
        &mut self,
        grants: impl IntoIterator<Item = RouteGrant>,
        now: DateTime<Utc>,
    ) -> Vec<(WireGuardKey, Vec<u8>)> {
        self.grants = grants
            .into_iter()
            .filter(|g| g.expires_at > now)
            .map(|g| (g.resource_id, g))
            .collect();
        let mut released = Vec::new();
        let granted: Vec<Uuid> = self
            .held
            .keys()
            .filter(|id| self.grants.contains_key(id))
            .copied()
            .collect();
        for id in granted {
            let (Some(held), Some(grant)) = (self.held.remove(&id), self.grants.get(&id)) else {
                continue;
            };
            self.held_total = self.held_total.saturating_sub(held.packets.len());
            released.extend(
                held.packets
                    .into_iter()
                    .filter(|(at, _)| *at + HOLD_TIMEOUT > now)
                    .map(|(_, packet)| (grant.gateway, packet)),
            );
        }
        released
    }

    /// The resource a destination belongs to (the most specific network).
    pub fn resource_of(&self, dst: std::net::IpAddr) -> Option<Uuid> {
        self.networks
            .iter()
            .find(|(net, _)| net.contains(&dst))
            .map(|(_, id)| *id)
    }

    /// The gateway an address's resource is granted through, if it is (for packets coming
    /// back: a gateway may only send what comes from the resources it serves).
    pub fn gateway_of(
        &self,
        address: std::net::IpAddr,
        now: DateTime<Utc>,
    ) -> Option<WireGuardKey> {
        let resource_id = self.resource_of(address)?;
        self.grants
            .get(&resource_id)
            .filter(|g| g.expires_at > now)
            .map(|g| g.gateway)
    }

    /// Routes a packet read from the TUN.
    pub fn route(&mut self, packet: &[u8], now: DateTime<Utc>) -> Route {
        let Ok((_, dst)) = packet::addresses(packet) else {
            return Route::Drop(ClientDrop::Malformed);
        };
        let Some(resource_id) = self.resource_of(dst) else {
            return Route::Drop(ClientDrop::NoResource);
        };
        if let Some(grant) = self.grants.get(&resource_id) {
            if grant.expires_at > now {
                return Route::Send(grant.gateway);
            }
        }
        let held = self.held.entry(resource_id).or_default();
        let request = match held.requested_at {
            Some(at) if at + REQUEST_RETRY > now => None,
            _ => {
                held.requested_at = Some(now);
                Some(resource_id)
            }
        };
        if held.packets.len() >= MAX_HELD_PER_RESOURCE || self.held_total >= MAX_HELD {
            return match request {
                Some(_) => Route::Held { request },
                None => Route::Drop(ClientDrop::QueueFull),
            };
        }
        held.packets.push_back((now, packet.to_vec()));
        self.held_total += 1;
        Route::Held { request }
    }

    /// Drops held packets older than the timeout; returns how many.
    pub fn expire(&mut self, now: DateTime<Utc>) -> usize {
        let mut dropped = 0;
        for held in self.held.values_mut() {
            while held
                .packets
                .front()
                .is_some_and(|(at, _)| *at + HOLD_TIMEOUT <= now)
            {
                held.packets.pop_front();
                dropped += 1;
            }
        }
        self.held.retain(|_, h| {
            !h.packets.is_empty() || h.requested_at.is_some_and(|at| at + HOLD_TIMEOUT > now)
        });
        self.held_total = self.held_total.saturating_sub(dropped);
        dropped
    }

    /// The portal refused access: drop what waits for it.
    pub fn denied(&mut self, resource_id: Uuid) -> usize {
        let dropped = self
            .held
            .get_mut(&resource_id)
            .map_or(0, |h| std::mem::take(&mut h.packets).len());
        self.held_total = self.held_total.saturating_sub(dropped);
        dropped
    }

    pub fn held(&self) -> usize {
        self.held_total
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::build::{ip, ports};
    use crate::packet::PROTO_TCP;

    fn now() -> DateTime<Utc> {
        "2026-03-01T12:00:00Z".parse().unwrap()
    }

    fn to(dst: &str) -> Vec<u8> {
        ip(
            "100.64.0.1".parse().unwrap(),
            dst.parse().unwrap(),
            PROTO_TCP,
            &ports(1, 80),
        )
    }

    fn router() -> ClientRouter {
        let mut router = ClientRouter::default();
        let resources = [
            crate::tests::resource(1, "cidr", "10.0.0.0/16"),
            crate::tests::resource(2, "ip", "10.0.3.4"),
            crate::tests::resource(3, "dns", "db.internal"),
        ];
        let routes = router.set_resources(&resources);
        assert_eq!(
            routes,
            vec![
                "10.0.0.0/16".parse::<IpNet>().unwrap(),
                "10.0.3.4/32".parse().unwrap()
            ]
        );
        router
    }

    fn grant(id: u128, gateway: u8, minutes: i64) -> RouteGrant {
        RouteGrant {
            resource_id: Uuid::from_u128(id),
            gateway: WireGuardKey::from_bytes([gateway; 32]),
            expires_at: now() + Duration::minutes(minutes),
        }
    }

    #[test]
    fn most_specific_resource_wins_and_granted_packets_go_to_their_gateway() {
        let mut router = router();
        assert_eq!(
            router.resource_of("10.0.3.4".parse().unwrap()),
            Some(Uuid::from_u128(2))
        );
        assert_eq!(
            router.resource_of("10.0.3.5".parse().unwrap()),
            Some(Uuid::from_u128(1))
        );
        assert!(router
            .set_grants([grant(1, 7, 5), grant(2, 8, 5)], now())
            .is_empty());
        assert_eq!(
            router.route(&to("10.0.9.9"), now()),
            Route::Send(WireGuardKey::from_bytes([7; 32]))
        );
        assert_eq!(
            router.route(&to("10.0.3.4"), now()),
            Route::Send(WireGuardKey::from_bytes([8; 32]))
        );
        assert_eq!(
            router.gateway_of("10.0.3.4".parse().unwrap(), now()),
            Some(WireGuardKey::from_bytes([8; 32]))
        );
        assert_eq!(
            router.gateway_of("10.0.3.4".parse().unwrap(), now() + Duration::hours(1)),
            None
        );
        assert_eq!(router.gateway_of("10.9.3.4".parse().unwrap(), now()), None);
        assert_eq!(
            router.route(&to("192.168.0.1"), now()),
            Route::Drop(ClientDrop::NoResource)
        );
        assert_eq!(
            router.route(&[1, 2, 3], now()),
            Route::Drop(ClientDrop::Malformed)
        );
    }

    #[test]
    fn packets_wait_for_the_grant_and_requests_are_not_repeated_too_often() {
        let mut router = router();
        let r1 = Uuid::from_u128(1);
        assert_eq!(
            router.route(&to("10.0.0.1"), now()),
            Route::Held { request: Some(r1) }
        );
        assert_eq!(
            router.route(&to("10.0.0.2"), now() + Duration::seconds(1)),
            Route::Held { request: None }
        );
        assert_eq!(
            router.route(&to("10.0.0.3"), now() + Duration::seconds(3)),
            Route::Held { request: Some(r1) }
        );
        assert_eq!(router.held(), 3);
        let released = router.set_grants([grant(1, 7, 5)], now() + Duration::seconds(3));
        assert_eq!(released.len(), 3);
        assert!(released
            .iter()
            .all(|(key, _)| *key == WireGuardKey::from_bytes([7; 32])));
        assert_eq!(released[0].1, to("10.0.0.1"));
        assert_eq!(router.held(), 0);
    }

    #[test]
    fn held_packets_time_out_and_the_queue_is_bounded() {
        let mut router = router();
        for n in 0..MAX_HELD_PER_RESOURCE + 5 {
            let route = router.route(&to("10.0.0.1"), now() + Duration::milliseconds(n as i64));
            if n >= MAX_HELD_PER_RESOURCE {
                assert_eq!(route, Route::Drop(ClientDrop::QueueFull));
            }
        }
        assert_eq!(router.held(), MAX_HELD_PER_RESOURCE);
        assert_eq!(router.expire(now() + Duration::seconds(1)), 0);
        assert_eq!(
            router.expire(now() + HOLD_TIMEOUT + Duration::seconds(1)),
            MAX_HELD_PER_RESOURCE
        );
        assert_eq!(router.held(), 0);
        router.route(&to("10.0.3.4"), now());
        assert_eq!(router.denied(Uuid::from_u128(2)), 1);
        assert_eq!(router.held(), 0);
    }

    #[test]
    fn grants_expire_and_follow_their_resources() {
        let mut router = router();
        router.set_grants([grant(1, 7, 1)], now());
        let later = now() + Duration::minutes(2);
        assert_eq!(
            router.route(&to("10.0.0.1"), later),
            Route::Held {
                request: Some(Uuid::from_u128(1))
            }
        );
        router.set_resources(&[crate::tests::resource(2, "ip", "10.0.3.4")]);
        assert_eq!(
            router.held(),
            0,
            "held packets of a removed resource are dropped"
        );
        assert_eq!(
            router.route(&to("10.0.0.1"), later),
            Route::Drop(ClientDrop::NoResource)
        );
    }

    proptest::proptest! {
        #[test]
        fn routing_never_panics_and_the_queue_stays_bounded(
            packets in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..60), 0..400)
        ) {
            let mut router = router();
            for packet in &packets {
                let mut bytes = packet.clone();
                if let Some(first) = bytes.first_mut() { *first = 0x45; }
                let _ = router.route(&bytes, now());
                let _ = router.route(&to("10.0.0.1"), now());
                proptest::prop_assert!(router.held() <= MAX_HELD);
            }
        }
    }
}
