//! The client's routing: which resource a packet read from the TUN is for, and through which
//! gateway it goes. A packet toward a resource without a grant is held (in a small bounded
//! queue) while access is requested, then released on the grant or dropped after a timeout.
//!
//! A DNS resource is reached through proxy addresses its stub resolver gave out
//! ([`postern_dns::StubResolver`]): each stands for one name, and a grant of the resource
//! covers only the names it lists. A packet to a name the grant does not list yet is held and
//! asks for that name, the grant's other names keep flowing.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::IpAddr;

use chrono::{DateTime, Duration, Utc};
use ipnet::IpNet;
use postern_dns::StubResolver;
use postern_protocol::{DnsTarget, ResourceView, TunnelAddresses};
use uuid::Uuid;

use crate::{internet_networks, packet, resource_network, WireGuardKey};

/// Packets held per destination (a resource, or one name of a DNS resource) while access is
/// requested.
pub const MAX_HELD_PER_RESOURCE: usize = 32;
/// Packets held in all.
pub const MAX_HELD: usize = 256;
/// Destinations waiting for access at once (each costs a request to the portal).
pub const MAX_WAITING: usize = 1024;
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
        request: Option<AccessRequest>,
    },
    Drop(ClientDrop),
}

/// What to ask the portal for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessRequest {
    pub resource_id: Uuid,
    /// For a DNS resource: the name and its proxy addresses.
    pub dns: Option<DnsTarget>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientDrop {
    Malformed,
    /// Not from the client's tunnel addresses (the kernel's own link-local traffic, or a
    /// packet sent before the addresses were set): a gateway would drop it as spoofed.
    NotOurSource,
    /// The destination is in no resource of the client (or is a proxy address of no name a
    /// reachable DNS resource covers).
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
    /// For a DNS resource: the names it covers.
    pub dns: Vec<DnsTarget>,
}

#[derive(Debug)]
struct Granted {
    gateway: WireGuardKey,
    expires_at: DateTime<Utc>,
    /// Proxy address → the name it stands for, in both families.
    names: HashMap<IpAddr, String>,
}

impl Granted {
    fn covers(&self, proxy: IpAddr, name: &str) -> bool {
        self.names.get(&proxy).is_some_and(|n| n == name)
    }
}

/// What held packets wait for: a resource, or one name of a DNS resource.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Waiting {
    resource_id: Uuid,
    name: Option<String>,
}

#[derive(Debug, Default)]
struct Held {
    packets: VecDeque<(DateTime<Utc>, Vec<u8>)>,
    requested_at: Option<DateTime<Utc>>,
    /// The name's proxy address (IPv4), to check a grant against.
    proxy: Option<IpAddr>,
}

#[derive(Debug, Default)]
pub struct ClientRouter {
    /// The client's tunnel addresses: the only sources a packet may have.
    addresses: Option<TunnelAddresses>,
    /// Most specific first.
    networks: Vec<(IpNet, Uuid)>,
    resources: HashSet<Uuid>,
    grants: HashMap<Uuid, Granted>,
    held: HashMap<Waiting, Held>,
    held_total: usize,
}

impl ClientRouter {
    /// The client's tunnel addresses, once the portal gave them.
    pub fn set_addresses(&mut self, addresses: Option<TunnelAddresses>) {
        self.addresses = addresses;
    }

    /// Replaces the resources; returns the networks to route into the TUN (an Internet
    /// resource, passed only when the client opted in, is the least specific of all and has
    /// no route of its own). Held packets of resources that are gone are dropped.
    pub fn set_resources<'a>(
        &mut self,
        resources: impl IntoIterator<Item = &'a ResourceView>,
    ) -> Vec<IpNet> {
        let mut networks = Vec::new();
        let mut routes = Vec::new();
        self.resources.clear();
        for resource in resources {
            self.resources.insert(resource.id);
            if resource.resource_type == "internet" {
                // Routed by policy rules, not by a route per network (see the client).
                networks.extend(internet_networks().map(|net| (net, resource.id)));
                continue;
            }
            if let Some(net) = resource_network(resource) {
                networks.push((net, resource.id));
                routes.push(net);
            }
        }
        networks.sort_by(|a, b| b.0.prefix_len().cmp(&a.0.prefix_len()).then(a.1.cmp(&b.1)));
        self.networks = networks;
        let known = &self.resources;
        self.grants.retain(|id, _| known.contains(id));
        let before = self.held.len();
        self.held
            .retain(|waiting, _| known.contains(&waiting.resource_id));
        if self.held.len() != before {
            self.held_total = self.held.values().map(|h| h.packets.len()).sum();
        }
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
            .map(|g| {
                let names = g
                    .dns
                    .into_iter()
                    .flat_map(|t| {
                        [
                            (IpAddr::V4(t.proxy_ipv4), t.name.clone()),
                            (IpAddr::V6(t.proxy_ipv6), t.name),
                        ]
                    })
                    .collect();
                let granted = Granted {
                    gateway: g.gateway,
                    expires_at: g.expires_at,
                    names,
                };
                (g.resource_id, granted)
            })
            .collect();
        let ready: Vec<Waiting> = self
            .held
            .iter()
            .filter(|(waiting, held)| {
                self.grants.get(&waiting.resource_id).is_some_and(|grant| {
                    match (&waiting.name, held.proxy) {
                        (Some(name), Some(proxy)) => grant.covers(proxy, name),
                        (None, _) => true,
                        (Some(_), None) => false,
                    }
                })
            })
            .map(|(waiting, _)| waiting.clone())
            .collect();
        let mut released = Vec::new();
        for waiting in ready {
            let (Some(held), Some(grant)) = (
                self.held.remove(&waiting),
                self.grants.get(&waiting.resource_id),
            ) else {
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

    /// The resource a destination belongs to (the most specific network), or for a proxy
    /// address, the DNS resource and name it stands for.
    fn destination(&self, dst: IpAddr, names: &StubResolver) -> Option<(Uuid, Option<ProxyName>)> {
        if postern_domain::dns::is_proxy_address(dst) {
            let target = names.proxy_target(dst)?;
            if !self.resources.contains(&target.resource_id) {
                return None;
            }
            let name = ProxyName {
                name: target.name.to_string(),
                ipv4: target.ipv4,
                ipv6: target.ipv6,
            };
            return Some((target.resource_id, Some(name)));
        }
        self.resource_of(dst).map(|id| (id, None))
    }

    /// The resource a destination belongs to (the most specific network).
    pub fn resource_of(&self, dst: IpAddr) -> Option<Uuid> {
        self.networks
            .iter()
            .find(|(net, _)| net.contains(&dst))
            .map(|(_, id)| *id)
    }

    /// The gateway an address's resource (or name) is granted through, if it is (for packets
    /// coming back: a gateway may only send what comes from the resources it serves).
    pub fn gateway_of(
        &self,
        address: IpAddr,
        names: &StubResolver,
        now: DateTime<Utc>,
    ) -> Option<WireGuardKey> {
        let granted =
            |resource_id: &Uuid| self.grants.get(resource_id).filter(|g| g.expires_at > now);
        if postern_domain::dns::is_proxy_address(address) {
            let target = names.proxy_target(address)?;
            return granted(&target.resource_id)
                .filter(|g| g.covers(address, target.name))
                .map(|g| g.gateway);
        }
        granted(&self.resource_of(address)?).map(|g| g.gateway)
    }

    /// Routes a packet read from the TUN; `names` knows what proxy addresses stand for.
    pub fn route(&mut self, packet: &[u8], names: &StubResolver, now: DateTime<Utc>) -> Route {
        let Ok((src, dst)) = packet::addresses(packet) else {
            return Route::Drop(ClientDrop::Malformed);
        };
        let ours = self.addresses.is_some_and(|own| match src {
            IpAddr::V4(v4) => v4 == own.ipv4,
            IpAddr::V6(v6) => v6 == own.ipv6,
        });
        if !ours {
            return Route::Drop(ClientDrop::NotOurSource);
        }
        if let Some(gateway) = self.gateway_of(dst, names, now) {
            return Route::Send(gateway);
        }
        let Some((resource_id, name)) = self.destination(dst, names) else {
            return Route::Drop(ClientDrop::NoResource);
        };
        let waiting = Waiting {
            resource_id,
            name: name.as_ref().map(|n| n.name.clone()),
        };
        if !self.held.contains_key(&waiting) && self.held.len() >= MAX_WAITING {
            return Route::Drop(ClientDrop::QueueFull);
        }
        let held = self.held.entry(waiting).or_default();
        held.proxy = name.as_ref().map(|n| IpAddr::V4(n.ipv4));
        let request = match held.requested_at {
            Some(at) if at + REQUEST_RETRY > now => None,
            _ => {
                held.requested_at = Some(now);
                Some(AccessRequest {
                    resource_id,
                    dns: name.map(|n| DnsTarget {
                        name: n.name,
                        proxy_ipv4: n.ipv4,
                        proxy_ipv6: n.ipv6,
                    }),
                })
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

    /// The portal refused access to a resource: drop what waits for it (every name of it).
    pub fn denied(&mut self, resource_id: Uuid) -> usize {
        let mut dropped = 0;
        for (waiting, held) in &mut self.held {
            if waiting.resource_id == resource_id {
                dropped += std::mem::take(&mut held.packets).len();
            }
        }
        self.held_total = self.held_total.saturating_sub(dropped);
        dropped
    }

    pub fn held(&self) -> usize {
        self.held_total
    }
}

/// A name behind a proxy address, owned (for a hold and a request).
#[derive(Debug)]
struct ProxyName {
    name: String,
    ipv4: std::net::Ipv4Addr,
    ipv6: std::net::Ipv6Addr,
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

    /// A router whose tunnel addresses are the test packets' sources.
    fn addressed() -> ClientRouter {
        let mut router = ClientRouter::default();
        router.set_addresses(Some(TunnelAddresses {
            ipv4: "100.64.0.1".parse().unwrap(),
            ipv6: "fd70:6f73:7465:726e::1".parse().unwrap(),
        }));
        router
    }

    fn router() -> ClientRouter {
        let mut router = addressed();
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
            dns: Vec::new(),
        }
    }

    fn no_names() -> StubResolver {
        StubResolver::default()
    }

    fn ask(resource_id: Uuid) -> AccessRequest {
        AccessRequest {
            resource_id,
            dns: None,
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
            router.route(&to("10.0.9.9"), &no_names(), now()),
            Route::Send(WireGuardKey::from_bytes([7; 32]))
        );
        assert_eq!(
            router.route(&to("10.0.3.4"), &no_names(), now()),
            Route::Send(WireGuardKey::from_bytes([8; 32]))
        );
        assert_eq!(
            router.gateway_of("10.0.3.4".parse().unwrap(), &no_names(), now()),
            Some(WireGuardKey::from_bytes([8; 32]))
        );
        assert_eq!(
            router.gateway_of(
                "10.0.3.4".parse().unwrap(),
                &no_names(),
                now() + Duration::hours(1)
            ),
            None
        );
        assert_eq!(
            router.gateway_of("10.9.3.4".parse().unwrap(), &no_names(), now()),
            None
        );
        assert_eq!(
            router.route(&to("192.168.0.1"), &no_names(), now()),
            Route::Drop(ClientDrop::NoResource)
        );
        assert_eq!(
            router.route(&[1, 2, 3], &no_names(), now()),
            Route::Drop(ClientDrop::Malformed)
        );
        let link_local = ip(
            "fe80::1".parse().unwrap(),
            "ff02::2".parse().unwrap(),
            58,
            &[133, 0, 0, 0],
        );
        assert_eq!(
            router.route(&link_local, &no_names(), now()),
            Route::Drop(ClientDrop::NotOurSource)
        );
        assert_eq!(
            ClientRouter::default().route(&to("10.0.9.9"), &no_names(), now()),
            Route::Drop(ClientDrop::NotOurSource),
            "nothing leaves before the addresses are known"
        );
    }

    #[test]
    fn packets_wait_for_the_grant_and_requests_are_not_repeated_too_often() {
        let mut router = router();
        let r1 = Uuid::from_u128(1);
        assert_eq!(
            router.route(&to("10.0.0.1"), &no_names(), now()),
            Route::Held {
                request: Some(ask(r1))
            }
        );
        assert_eq!(
            router.route(&to("10.0.0.2"), &no_names(), now() + Duration::seconds(1)),
            Route::Held { request: None }
        );
        assert_eq!(
            router.route(&to("10.0.0.3"), &no_names(), now() + Duration::seconds(3)),
            Route::Held {
                request: Some(ask(r1))
            }
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
            let route = router.route(
                &to("10.0.0.1"),
                &no_names(),
                now() + Duration::milliseconds(n as i64),
            );
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
        router.route(&to("10.0.3.4"), &no_names(), now());
        assert_eq!(router.denied(Uuid::from_u128(2)), 1);
        assert_eq!(router.held(), 0);
    }

    #[test]
    fn grants_expire_and_follow_their_resources() {
        let mut router = router();
        router.set_grants([grant(1, 7, 1)], now());
        let later = now() + Duration::minutes(2);
        assert_eq!(
            router.route(&to("10.0.0.1"), &no_names(), later),
            Route::Held {
                request: Some(ask(Uuid::from_u128(1)))
            }
        );
        router.set_resources(&[crate::tests::resource(2, "ip", "10.0.3.4")]);
        assert_eq!(
            router.held(),
            0,
            "held packets of a removed resource are dropped"
        );
        assert_eq!(
            router.route(&to("10.0.0.1"), &no_names(), later),
            Route::Drop(ClientDrop::NoResource)
        );
    }

    fn named(resolver: &mut StubResolver, name: &str) -> DnsTarget {
        match resolver.resolve(name) {
            postern_dns::Resolution::Proxies { ipv4, ipv6 } => DnsTarget {
                name: name.into(),
                proxy_ipv4: ipv4,
                proxy_ipv6: ipv6,
            },
            other => panic!("{name} not resolved: {other:?}"),
        }
    }

    fn dns_router() -> (ClientRouter, StubResolver) {
        let mut router = addressed();
        let resources = [
            crate::tests::resource(1, "cidr", "10.0.0.0/16"),
            crate::tests::resource(3, "dns", "*.svc.internal"),
        ];
        assert_eq!(
            router.set_resources(&resources).len(),
            1,
            "names have no route"
        );
        let mut names = StubResolver::default();
        names.set_resources([(Uuid::from_u128(3), "*.svc.internal")]);
        (router, names)
    }

    #[test]
    fn each_name_of_a_dns_resource_is_asked_for_and_released_on_its_own() {
        let (mut router, mut names) = dns_router();
        let db = named(&mut names, "db.svc.internal");
        let web = named(&mut names, "web.svc.internal");
        let r3 = Uuid::from_u128(3);
        let to_db = to(&db.proxy_ipv4.to_string());
        assert_eq!(
            router.route(&to_db, &names, now()),
            Route::Held {
                request: Some(AccessRequest {
                    resource_id: r3,
                    dns: Some(db.clone())
                })
            }
        );
        let to_web = to(&web.proxy_ipv4.to_string());
        let Route::Held {
            request: Some(asked),
        } = router.route(&to_web, &names, now())
        else {
            panic!("a second name of the same resource asks for itself");
        };
        assert_eq!(asked.dns, Some(web.clone()));

        // A grant that lists only db releases db's packets; web's keep waiting.
        let mut covering_db = grant(3, 7, 5);
        covering_db.dns = vec![db.clone()];
        let released = router.set_grants([covering_db.clone()], now());
        assert_eq!(
            released,
            vec![(WireGuardKey::from_bytes([7; 32]), to_db.clone())]
        );
        assert_eq!(router.held(), 1);
        assert_eq!(
            router.route(&to_db, &names, now()),
            Route::Send(WireGuardKey::from_bytes([7; 32]))
        );
        assert_eq!(
            router.route(&to_web, &names, now() + Duration::seconds(1)),
            Route::Held { request: None },
            "asked a moment ago"
        );
        let db_v6: IpAddr = IpAddr::V6(db.proxy_ipv6);
        assert_eq!(
            router.gateway_of(db_v6, &names, now()),
            Some(WireGuardKey::from_bytes([7; 32]))
        );
        assert_eq!(
            router.gateway_of(IpAddr::V4(web.proxy_ipv4), &names, now()),
            None,
            "a gateway may not answer for a name it was not granted"
        );

        let mut both = covering_db;
        both.dns.push(web.clone());
        assert_eq!(router.set_grants([both], now()).len(), 2);
        assert_eq!(router.held(), 0);
    }

    #[test]
    fn a_grant_naming_another_name_at_a_proxy_address_does_not_cover_it() {
        let (mut router, mut names) = dns_router();
        let db = named(&mut names, "db.svc.internal");
        // Left from a run that numbered its names differently.
        let mut stale = grant(3, 7, 5);
        stale.dns = vec![DnsTarget {
            name: "old.svc.internal".into(),
            ..db.clone()
        }];
        router.set_grants([stale], now());
        assert!(matches!(
            router.route(&to(&db.proxy_ipv4.to_string()), &names, now()),
            Route::Held { request: Some(_) }
        ));
    }

    #[test]
    fn a_proxy_address_of_no_reachable_name_goes_nowhere() {
        let (mut router, mut names) = dns_router();
        let db = named(&mut names, "db.svc.internal");
        let unknown = postern_dns::proxy_addresses(500).0;
        assert_eq!(
            router.route(&to(&unknown.to_string()), &names, now()),
            Route::Drop(ClientDrop::NoResource)
        );
        names.set_resources([]);
        assert_eq!(
            router.route(&to(&db.proxy_ipv4.to_string()), &names, now()),
            Route::Drop(ClientDrop::NoResource),
            "the resource was withdrawn"
        );
    }

    #[test]
    fn destinations_waiting_at_once_are_bounded() {
        let mut router = addressed();
        router.set_resources(&[crate::tests::resource(3, "dns", "**.internal")]);
        let mut names = StubResolver::default();
        names.set_resources([(Uuid::from_u128(3), "**.internal")]);
        for n in 0..MAX_WAITING + 10 {
            let target = named(&mut names, &format!("n{n}.internal"));
            let route = router.route(&to(&target.proxy_ipv4.to_string()), &names, now());
            if n >= MAX_WAITING {
                assert_eq!(route, Route::Drop(ClientDrop::QueueFull));
            }
        }
        assert!(router.held() <= MAX_HELD);
    }

    #[test]
    fn the_internet_resource_takes_what_no_other_resource_covers() {
        let mut router = addressed();
        let routes = router.set_resources(&[
            crate::tests::resource(1, "cidr", "10.0.0.0/16"),
            crate::tests::resource(9, "internet", "0.0.0.0/0, ::/0"),
        ]);
        assert_eq!(
            routes,
            vec!["10.0.0.0/16".parse::<IpNet>().unwrap()],
            "no route for it"
        );
        router.set_grants([grant(1, 7, 5), grant(9, 8, 5)], now());
        assert_eq!(
            router.route(&to("10.0.3.3"), &no_names(), now()),
            Route::Send(WireGuardKey::from_bytes([7; 32])),
            "a more specific resource wins"
        );
        assert_eq!(
            router.route(&to("93.184.216.34"), &no_names(), now()),
            Route::Send(WireGuardKey::from_bytes([8; 32]))
        );
        assert_eq!(
            router.gateway_of("2001:db8::1".parse().unwrap(), &no_names(), now()),
            Some(WireGuardKey::from_bytes([8; 32]))
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
                let _ = router.route(&bytes, &no_names(), now());
                let _ = router.route(&to("10.0.0.1"), &no_names(), now());
                proptest::prop_assert!(router.held() <= MAX_HELD);
            }
        }
    }
}
