//! The gateway's per-packet decision. A decrypted packet from a client passes only when its
//! source is that client's tunnel address, its destination lies in a resource of one of the
//! client's unexpired authorizations, and its protocol and port pass that resource's filters.
//! Replies go back only to a client still authorized for the resource they come from.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;

use chrono::{DateTime, Utc};
use ipnet::IpNet;
use postern_policy::{filters_allow, Filter, Protocol};
use postern_protocol::{Authorization, TunnelAddresses};
use uuid::Uuid;

use crate::packet::{self, Transport};
use crate::{authorized_networks, resource_network, PresharedKey, WireGuardKey};

/// Why a packet was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Not a well-formed IPv4/IPv6 packet.
    Malformed,
    /// From a WireGuard peer with no authorization at all.
    UnknownPeer,
    /// The source is not the client's tunnel address.
    SpoofedSource,
    /// The destination is in no resource the client is authorized for.
    NotAuthorized,
    /// The authorization for that resource has expired.
    Expired,
    /// The resource's filters refuse this protocol or port.
    Filtered,
    /// Not a WireGuard message, or a handshake whose MAC does not name this device: dropped
    /// before any Diffie-Hellman.
    BadHandshake,
    /// A handshake over the rate limit without a valid cookie: answered with a cookie reply,
    /// not processed.
    HandshakeUnderLoad,
    /// An IPv4 source-route option or an IPv6 routing header.
    SourceRouted,
    /// An ICMP error that is not about a flow the client may have with that resource, or an
    /// ICMP redirect.
    IcmpNotAboutAFlow,
    /// To a DNS resource's name that does not resolve at the gateway (answered with ICMP
    /// host unreachable), or that waited too long for its translation.
    Unresolved,
}

impl DropReason {
    pub const ALL: [DropReason; 11] = [
        DropReason::Malformed,
        DropReason::UnknownPeer,
        DropReason::SpoofedSource,
        DropReason::NotAuthorized,
        DropReason::Expired,
        DropReason::Filtered,
        DropReason::BadHandshake,
        DropReason::HandshakeUnderLoad,
        DropReason::SourceRouted,
        DropReason::IcmpNotAboutAFlow,
        DropReason::Unresolved,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::UnknownPeer => "unknown_peer",
            DropReason::SpoofedSource => "spoofed_source",
            DropReason::NotAuthorized => "not_authorized",
            DropReason::Expired => "expired",
            DropReason::Filtered => "filtered",
            DropReason::BadHandshake => "bad_handshake",
            DropReason::HandshakeUnderLoad => "handshake_under_load",
            DropReason::SourceRouted => "source_routed",
            DropReason::IcmpNotAboutAFlow => "icmp_not_about_a_flow",
            DropReason::Unresolved => "unresolved",
        }
    }

    fn index(self) -> usize {
        match self {
            DropReason::Malformed => 0,
            DropReason::UnknownPeer => 1,
            DropReason::SpoofedSource => 2,
            DropReason::NotAuthorized => 3,
            DropReason::Expired => 4,
            DropReason::Filtered => 5,
            DropReason::BadHandshake => 6,
            DropReason::HandshakeUnderLoad => 7,
            DropReason::SourceRouted => 8,
            DropReason::IcmpNotAboutAFlow => 9,
            DropReason::Unresolved => 10,
        }
    }
}

/// Dropped packets, counted by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DropCounters {
    counts: [u64; DropReason::ALL.len()],
}

impl DropCounters {
    pub fn record(&mut self, reason: DropReason) {
        self.record_many(reason, 1);
    }

    pub fn record_many(&mut self, reason: DropReason, count: u64) {
        let slot = &mut self.counts[reason.index()];
        *slot = slot.saturating_add(count);
    }

    pub fn get(&self, reason: DropReason) -> u64 {
        self.counts[reason.index()]
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().fold(0u64, |a, b| a.saturating_add(*b))
    }

    /// `(reason, count)` for every reason with a non-zero count.
    pub fn non_zero(&self) -> Vec<(&'static str, u64)> {
        DropReason::ALL
            .iter()
            .filter(|r| self.get(**r) > 0)
            .map(|r| (r.as_str(), self.get(*r)))
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    authorization_id: Uuid,
    /// One network, a DNS resource's proxy addresses, or for the Internet resource everything.
    networks: Vec<IpNet>,
    /// The Internet resource: every address but the ranges no resource may reach (the
    /// gateway's loopback, link-local and metadata addresses, the tunnel and proxy ranges).
    internet: bool,
    filters: Vec<Filter>,
    expires_at: DateTime<Utc>,
}

impl Rule {
    fn covers(&self, address: IpAddr) -> bool {
        if self.internet {
            return postern_domain::validate::forbidden_destination(address).is_none();
        }
        self.networks.iter().any(|net| net.contains(&address))
    }
}

/// One client device as the gateway knows it: its key, addresses and what it may reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientPeer {
    pub key: WireGuardKey,
    pub addresses: TunnelAddresses,
    pub preshared_key: Option<PresharedKey>,
    rules: Vec<Rule>,
}

impl ClientPeer {
    /// An unexpired authorization for the Internet resource.
    fn has_internet(&self, now: DateTime<Utc>) -> bool {
        self.rules.iter().any(|r| r.internet && r.expires_at > now)
    }

    fn owns(&self, address: IpAddr) -> bool {
        match address {
            IpAddr::V4(v4) => v4 == self.addresses.ipv4,
            IpAddr::V6(v6) => v6 == self.addresses.ipv6,
        }
    }
}

/// Authorizations the table could not use (missing or malformed public key, a resource
/// without a fixed network).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub authorization_id: Uuid,
    pub why: &'static str,
}

/// The decision table. One authorization change is applied on its own ([`Self::upsert`],
/// [`Self::remove`]), touching only its client's peer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GatewayPolicy {
    peers: HashMap<WireGuardKey, ClientPeer>,
    by_address: HashMap<IpAddr, WireGuardKey>,
    /// Which peer each authorization's rule belongs to.
    by_id: HashMap<Uuid, WireGuardKey>,
}

impl GatewayPolicy {
    /// The table of these authorizations (the latest of a pair decides its preshared key).
    pub fn new<'a>(
        authorizations: impl IntoIterator<Item = &'a Authorization>,
    ) -> (Self, Vec<Skipped>) {
        let mut policy = GatewayPolicy::default();
        let mut skipped = Vec::new();
        let mut sorted: Vec<&Authorization> = authorizations.into_iter().collect();
        sorted.sort_by_key(|a| (a.expires_at, a.id));
        let mut touched = BTreeSet::new();
        for authorization in sorted {
            if let Err(skip) = policy.upsert(authorization, &mut touched) {
                skipped.push(skip);
            }
        }
        (policy, skipped)
    }

    /// Adds an authorization, or replaces the one with its id. The peers whose tunnel may
    /// have to change (created, re-keyed, emptied) are added to `touched`.
    pub fn upsert(
        &mut self,
        authorization: &Authorization,
        touched: &mut BTreeSet<WireGuardKey>,
    ) -> Result<(), Skipped> {
        // An update that cannot be served must not leave its old rule behind.
        self.remove(authorization.id, touched);
        let skip = |why| Skipped {
            authorization_id: authorization.id,
            why,
        };
        let key = authorization
            .client_public_key
            .ok_or_else(|| skip("the client sent no WireGuard public key"))?;
        let kind = authorization.resource.resource_type.as_str();
        let internet = kind == "internet";
        if !internet && kind != "dns" && resource_network(&authorization.resource).is_none() {
            return Err(skip("the resource has no address the gateway can route"));
        }
        let networks = authorized_networks(authorization);
        let preshared_key = authorization.preshared_key.clone();
        let peer = self.peers.entry(key).or_insert_with(|| ClientPeer {
            key,
            addresses: authorization.client_addresses,
            preshared_key: preshared_key.clone(),
            rules: Vec::new(),
        });
        if peer.addresses != authorization.client_addresses {
            let old = peer.addresses;
            peer.addresses = authorization.client_addresses;
            for address in [IpAddr::V4(old.ipv4), IpAddr::V6(old.ipv6)] {
                if self.by_address.get(&address) == Some(&key) {
                    self.by_address.remove(&address);
                }
            }
        }
        if preshared_key.is_some() {
            peer.preshared_key = preshared_key;
        }
        let rule = Rule {
            authorization_id: authorization.id,
            networks,
            internet,
            filters: authorization.resource.filters.clone(),
            expires_at: authorization.expires_at,
        };
        let at = peer
            .rules
            .partition_point(|r| r.authorization_id < authorization.id);
        peer.rules.insert(at, rule);
        self.by_address.insert(peer.addresses.ipv4.into(), key);
        self.by_address.insert(peer.addresses.ipv6.into(), key);
        self.by_id.insert(authorization.id, key);
        touched.insert(key);
        Ok(())
    }

    /// Removes an authorization; its peer goes with its last one. The peer is added to
    /// `touched`.
    pub fn remove(&mut self, id: Uuid, touched: &mut BTreeSet<WireGuardKey>) {
        let Some(key) = self.by_id.remove(&id) else {
            return;
        };
        touched.insert(key);
        let Some(peer) = self.peers.get_mut(&key) else {
            return;
        };
        peer.rules.retain(|r| r.authorization_id != id);
        if !peer.rules.is_empty() {
            return;
        }
        let addresses = peer.addresses;
        self.peers.remove(&key);
        for address in [IpAddr::V4(addresses.ipv4), IpAddr::V6(addresses.ipv6)] {
            if self.by_address.get(&address) == Some(&key) {
                self.by_address.remove(&address);
            }
        }
    }

    /// Every authorization in the table, by id.
    pub fn authorization_ids(&self) -> impl Iterator<Item = Uuid> + '_ {
        self.by_id.keys().copied()
    }

    pub fn peers(&self) -> impl Iterator<Item = &ClientPeer> {
        self.peers.values()
    }

    pub fn peer(&self, key: &WireGuardKey) -> Option<&ClientPeer> {
        self.peers.get(key)
    }

    /// The verdict on a packet decrypted from the peer `from`.
    pub fn check_inbound(
        &self,
        from: &WireGuardKey,
        packet: &[u8],
        now: DateTime<Utc>,
    ) -> Result<(), DropReason> {
        let peer = self.peers.get(from).ok_or(DropReason::UnknownPeer)?;
        let info = packet::parse(packet).map_err(|_| DropReason::Malformed)?;
        if !peer.owns(info.src) {
            return Err(DropReason::SpoofedSource);
        }
        if info.source_routed {
            return Err(DropReason::SourceRouted);
        }
        // The gateway's resolver serves its Internet resource's clients: DNS only, whatever
        // the resource's filters (they are about the Internet, not the gateway).
        if postern_domain::is_gateway_resolver(info.dst) {
            let dns = matches!(
                info.transport,
                Transport::Udp { dst_port: 53, .. } | Transport::Tcp { dst_port: 53, .. }
            );
            return match dns && peer.has_internet(now) {
                true => Ok(()),
                false => Err(DropReason::NotAuthorized),
            };
        }
        let (protocol, port) = match info.transport {
            Transport::Tcp { dst_port, .. } => (Some(Protocol::Tcp), Some(dst_port)),
            Transport::Udp { dst_port, .. } => (Some(Protocol::Udp), Some(dst_port)),
            Transport::Icmp { .. } => (Some(Protocol::Icmp), None),
            Transport::IcmpError { kind, quoted, .. } => {
                // Judged by the flow it is about: a packet the resource sent to this client.
                let redirect = kind == 5 && info.dst.is_ipv4() || kind == 137 && info.dst.is_ipv6();
                let Some(quoted) =
                    quoted.filter(|q| !redirect && q.src == info.dst && peer.owns(q.dst))
                else {
                    return Err(DropReason::IcmpNotAboutAFlow);
                };
                match quoted.protocol {
                    packet::PROTO_TCP => (Some(Protocol::Tcp), quoted.src_port),
                    packet::PROTO_UDP => (Some(Protocol::Udp), quoted.src_port),
                    packet::PROTO_ICMP | packet::PROTO_ICMPV6 => (Some(Protocol::Icmp), None),
                    _ => (None, None),
                }
            }
            Transport::Fragment { .. } | Transport::Other { .. } => (None, None),
        };
        let mut reason = DropReason::NotAuthorized;
        for rule in peer.rules.iter().filter(|r| r.covers(info.dst)) {
            if rule.expires_at <= now {
                reason = reason_max(reason, DropReason::Expired);
                continue;
            }
            let allowed = match protocol {
                Some(protocol) => filters_allow(&rule.filters, protocol, port),
                // Without a transport header to check, only an unfiltered resource passes.
                None => rule.filters.is_empty(),
            };
            if allowed {
                return Ok(());
            }
            reason = DropReason::Filtered;
        }
        Err(reason)
    }

    /// The peer a packet read from the gateway's TUN (a reply, after NAT) goes to: the owner
    /// of its destination address, if still authorized for the resource it comes from.
    pub fn route_reply(
        &self,
        packet: &[u8],
        now: DateTime<Utc>,
    ) -> Result<WireGuardKey, DropReason> {
        let (src, dst) = packet::addresses(packet).map_err(|_| DropReason::Malformed)?;
        let key = self.by_address.get(&dst).ok_or(DropReason::UnknownPeer)?;
        let peer = self.peers.get(key).ok_or(DropReason::UnknownPeer)?;
        if postern_domain::is_gateway_resolver(src) {
            return match peer.has_internet(now) {
                true => Ok(*key),
                false => Err(DropReason::NotAuthorized),
            };
        }
        let mut reason = DropReason::NotAuthorized;
        for rule in peer.rules.iter().filter(|r| r.covers(src)) {
            if rule.expires_at > now {
                return Ok(*key);
            }
            reason = DropReason::Expired;
        }
        Err(reason)
    }

    /// The authorizations in force at `now`, by id.
    pub fn live_authorizations(&self, now: DateTime<Utc>) -> Vec<Uuid> {
        self.peers
            .values()
            .flat_map(|p| p.rules.iter())
            .filter(|r| r.expires_at > now)
            .map(|r| r.authorization_id)
            .collect()
    }
}

/// `Filtered` is more telling than `Expired`, which is more telling than `NotAuthorized`.
fn reason_max(a: DropReason, b: DropReason) -> DropReason {
    let rank = |r: DropReason| match r {
        DropReason::Filtered => 2,
        DropReason::Expired => 1,
        _ => 0,
    };
    if rank(b) > rank(a) {
        b
    } else {
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::build::{ip, ports};
    use crate::packet::{PROTO_ICMP, PROTO_TCP, PROTO_UDP};
    use postern_policy::PortRange;

    fn addr(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn now() -> DateTime<Utc> {
        "2026-03-01T12:00:00Z".parse().unwrap()
    }

    fn authorization(
        id: u128,
        key: u8,
        client: &str,
        kind: &str,
        address: &str,
        filters: Vec<Filter>,
        minutes: i64,
    ) -> Authorization {
        let mut resource = crate::tests::resource(id + 100, kind, address);
        resource.filters = filters;
        let ipv4: std::net::Ipv4Addr = client.parse().unwrap();
        Authorization {
            id: Uuid::from_u128(id),
            client_device_id: format!("dev{key}"),
            actor_id: Uuid::nil(),
            client_public_key: Some(WireGuardKey::from_bytes([key; 32])),
            client_addresses: TunnelAddresses {
                ipv4,
                ipv6: format!("fd00::{key}").parse().unwrap(),
            },
            resource,
            expires_at: now() + chrono::Duration::minutes(minutes),
            preshared_key: Some(PresharedKey::from_bytes([id as u8; 32])),
            dns: Vec::new(),
        }
    }

    fn tcp_filter(port: u16) -> Filter {
        Filter {
            protocol: Protocol::Tcp,
            ports: vec![PortRange {
                start: port,
                end: port,
            }],
        }
    }

    #[test]
    fn the_decision_checks_source_destination_expiry_and_filters() {
        let auths = [
            authorization(
                1,
                1,
                "100.64.0.1",
                "cidr",
                "10.0.0.0/24",
                vec![tcp_filter(80)],
                5,
            ),
            authorization(2, 1, "100.64.0.1", "ip", "10.1.0.9", vec![], -1),
            authorization(3, 2, "100.64.0.2", "ip", "10.1.0.9", vec![], 5),
        ];
        let (policy, skipped) = GatewayPolicy::new(&auths);
        assert!(skipped.is_empty());
        let a = WireGuardKey::from_bytes([1; 32]);
        let b = WireGuardKey::from_bytes([2; 32]);
        let tcp =
            |src: &str, dst: &str, port| ip(addr(src), addr(dst), PROTO_TCP, &ports(5000, port));
        let check = |key: &WireGuardKey, packet: Vec<u8>| policy.check_inbound(key, &packet, now());

        assert_eq!(check(&a, tcp("100.64.0.1", "10.0.0.7", 80)), Ok(()));
        assert_eq!(
            check(&a, tcp("100.64.0.1", "10.0.0.7", 81)),
            Err(DropReason::Filtered)
        );
        let udp = ip(
            addr("100.64.0.1"),
            addr("10.0.0.7"),
            PROTO_UDP,
            &ports(1, 80),
        );
        assert_eq!(check(&a, udp), Err(DropReason::Filtered));
        assert_eq!(
            check(&a, tcp("100.64.0.2", "10.0.0.7", 80)),
            Err(DropReason::SpoofedSource)
        );
        assert_eq!(
            check(&a, tcp("100.64.0.1", "10.9.0.7", 80)),
            Err(DropReason::NotAuthorized)
        );
        assert_eq!(
            check(&a, tcp("100.64.0.1", "10.1.0.9", 80)),
            Err(DropReason::Expired)
        );
        assert_eq!(check(&b, tcp("100.64.0.2", "10.1.0.9", 9)), Ok(()));
        assert_eq!(
            check(&b, tcp("100.64.0.2", "10.0.0.7", 80)),
            Err(DropReason::NotAuthorized)
        );
        assert_eq!(
            check(
                &WireGuardKey::from_bytes([9; 32]),
                tcp("100.64.0.9", "10.0.0.7", 80)
            ),
            Err(DropReason::UnknownPeer)
        );
        assert_eq!(check(&a, vec![0x45, 0]), Err(DropReason::Malformed));
        let icmp = ip(
            addr("100.64.0.2"),
            addr("10.1.0.9"),
            PROTO_ICMP,
            &[8, 0, 0, 0],
        );
        assert_eq!(check(&b, icmp), Ok(()));

        // Replies: back to the owner of the destination, while authorized for the source.
        let reply = tcp("10.0.0.7", "100.64.0.1", 5000);
        assert_eq!(policy.route_reply(&reply, now()), Ok(a));
        let late = now() + chrono::Duration::minutes(10);
        assert_eq!(policy.route_reply(&reply, late), Err(DropReason::Expired));
        assert_eq!(
            policy.route_reply(&tcp("10.0.0.7", "100.64.0.2", 1), now()),
            Err(DropReason::NotAuthorized)
        );
        assert_eq!(
            policy.route_reply(&tcp("10.0.0.7", "100.64.0.3", 1), now()),
            Err(DropReason::UnknownPeer)
        );
        assert_eq!(policy.live_authorizations(now()).len(), 2);
    }

    /// An ICMP error from the client, quoting `quoted` (a packet it received).
    fn icmp_error(client: &str, resource: &str, kind: u8, quoted: &[u8]) -> Vec<u8> {
        let mut payload = vec![kind, 0, 0, 0, 0, 0, 0, 0];
        payload.extend_from_slice(quoted);
        ip(addr(client), addr(resource), PROTO_ICMP, &payload)
    }

    #[test]
    fn icmp_errors_are_judged_by_the_flow_they_quote() {
        // TCP 80 only: no ICMP of its own.
        let auths = [authorization(
            1,
            1,
            "100.64.0.1",
            "cidr",
            "10.0.0.0/24",
            vec![tcp_filter(80)],
            5,
        )];
        let (policy, _) = GatewayPolicy::new(&auths);
        let a = WireGuardKey::from_bytes([1; 32]);
        let check = |packet: Vec<u8>| policy.check_inbound(&a, &packet, now());
        let from_resource = |port: u16| {
            ip(
                addr("10.0.0.7"),
                addr("100.64.0.1"),
                PROTO_TCP,
                &ports(port, 5000),
            )
        };
        // "Fragmentation needed" about a reply of the allowed flow passes (path MTU discovery).
        assert_eq!(
            check(icmp_error("100.64.0.1", "10.0.0.7", 3, &from_resource(80))),
            Ok(())
        );
        // About a flow the filters do not allow, about a packet from elsewhere or to someone
        // else, with nothing quoted, or a redirect: dropped.
        assert_eq!(
            check(icmp_error("100.64.0.1", "10.0.0.7", 3, &from_resource(22))),
            Err(DropReason::Filtered)
        );
        let other_source = ip(
            addr("10.0.0.8"),
            addr("100.64.0.1"),
            PROTO_TCP,
            &ports(80, 5000),
        );
        assert_eq!(
            check(icmp_error("100.64.0.1", "10.0.0.7", 3, &other_source)),
            Err(DropReason::IcmpNotAboutAFlow)
        );
        let to_someone_else = ip(
            addr("10.0.0.7"),
            addr("100.64.0.9"),
            PROTO_TCP,
            &ports(80, 5000),
        );
        assert_eq!(
            check(icmp_error("100.64.0.1", "10.0.0.7", 11, &to_someone_else)),
            Err(DropReason::IcmpNotAboutAFlow)
        );
        assert_eq!(
            check(icmp_error("100.64.0.1", "10.0.0.7", 3, &[])),
            Err(DropReason::IcmpNotAboutAFlow)
        );
        assert_eq!(
            check(icmp_error("100.64.0.1", "10.0.0.7", 5, &from_resource(80))),
            Err(DropReason::IcmpNotAboutAFlow)
        );
        // A plain ICMP echo is still judged as ICMP: not allowed here.
        let echo = ip(
            addr("100.64.0.1"),
            addr("10.0.0.7"),
            PROTO_ICMP,
            &[8, 0, 0, 0],
        );
        assert_eq!(check(echo), Err(DropReason::Filtered));
    }

    #[test]
    fn source_routed_packets_are_dropped() {
        let auths = [authorization(
            1,
            1,
            "100.64.0.1",
            "cidr",
            "10.0.0.0/24",
            vec![],
            5,
        )];
        let (policy, _) = GatewayPolicy::new(&auths);
        let a = WireGuardKey::from_bytes([1; 32]);
        let mut v4 = ip(
            addr("100.64.0.1"),
            addr("10.0.0.7"),
            PROTO_TCP,
            &ports(5000, 80),
        );
        assert_eq!(policy.check_inbound(&a, &v4, now()), Ok(()));
        // IHL 6: a loose source route option (131, length 3, pointer) and an end-of-list.
        v4[0] = 0x46;
        v4.splice(20..20, [131u8, 3, 4, 0]);
        let total = v4.len() as u16;
        v4[2..4].copy_from_slice(&total.to_be_bytes());
        assert_eq!(
            policy.check_inbound(&a, &v4, now()),
            Err(DropReason::SourceRouted)
        );

        let v6_auths = [authorization(
            2,
            2,
            "100.64.0.2",
            "cidr",
            "fd00:10::/64",
            vec![],
            5,
        )];
        let (policy, _) = GatewayPolicy::new(&v6_auths);
        let b = WireGuardKey::from_bytes([2; 32]);
        // A routing header (43) of 8 octets in front of TCP.
        let mut payload = vec![crate::packet::PROTO_TCP, 0, 0, 0, 0, 0, 0, 0];
        payload.extend_from_slice(&ports(5000, 80));
        let routed = ip(addr("fd00::2"), addr("fd00:10::7"), 43, &payload);
        assert_eq!(
            policy.check_inbound(&b, &routed, now()),
            Err(DropReason::SourceRouted)
        );
        let plain = ip(
            addr("fd00::2"),
            addr("fd00:10::7"),
            PROTO_TCP,
            &ports(5000, 80),
        );
        assert_eq!(policy.check_inbound(&b, &plain, now()), Ok(()));
    }

    #[test]
    fn unusable_authorizations_are_reported() {
        let mut no_key = authorization(1, 1, "100.64.0.1", "ip", "10.0.0.1", vec![], 5);
        no_key.client_public_key = None;
        let (policy, skipped) = GatewayPolicy::new(&[no_key]);
        assert_eq!(skipped.len(), 1);
        assert_eq!(policy.peers().count(), 0);
    }

    #[test]
    fn a_dns_authorization_opens_only_the_proxy_addresses_of_its_names() {
        let mut dns = authorization(2, 1, "100.64.0.1", "dns", "*.internal", vec![], 5);
        dns.dns = vec![
            postern_protocol::DnsTarget {
                name: "db.internal".into(),
                proxy_ipv4: "198.18.1.0".parse().unwrap(),
                proxy_ipv6: "fd70:6f73:7465:726f::100".parse().unwrap(),
            },
            // Outside the pattern: the gateway does not trust that the portal checked.
            postern_protocol::DnsTarget {
                name: "evil.example".into(),
                proxy_ipv4: "198.18.1.1".parse().unwrap(),
                proxy_ipv6: "fd70:6f73:7465:726f::101".parse().unwrap(),
            },
        ];
        let (policy, skipped) = GatewayPolicy::new(&[dns]);
        assert!(skipped.is_empty());
        let key = WireGuardKey::from_bytes([1; 32]);
        let to = |dst: &str| ip(addr("100.64.0.1"), addr(dst), PROTO_TCP, &ports(5000, 80));
        assert_eq!(policy.check_inbound(&key, &to("198.18.1.0"), now()), Ok(()));
        for refused in ["198.18.1.1", "10.0.0.1"] {
            assert_eq!(
                policy.check_inbound(&key, &to(refused), now()),
                Err(DropReason::NotAuthorized),
                "{refused}"
            );
        }
    }

    #[test]
    fn the_internet_resource_opens_everything_but_what_no_resource_may_reach() {
        let internet = authorization(3, 1, "100.64.0.1", "internet", "0.0.0.0/0, ::/0", vec![], 5);
        let (policy, skipped) = GatewayPolicy::new(&[internet]);
        assert!(skipped.is_empty());
        let key = WireGuardKey::from_bytes([1; 32]);
        let to = |dst: &str| {
            let src = if dst.contains(':') {
                "fd70:6f73:7465:726e::1"
            } else {
                "100.64.0.1"
            };
            ip(addr(src), addr(dst), PROTO_TCP, &ports(5000, 443))
        };
        let mut client = authorization(3, 1, "100.64.0.1", "internet", "", vec![], 5);
        client.client_addresses.ipv6 = "fd70:6f73:7465:726e::1".parse().unwrap();
        let (policy6, _) = GatewayPolicy::new(&[client]);
        for allowed in ["1.1.1.1", "10.9.9.9"] {
            assert_eq!(
                policy.check_inbound(&key, &to(allowed), now()),
                Ok(()),
                "{allowed}"
            );
        }
        assert_eq!(
            policy6.check_inbound(&key, &to("2001:db8::1"), now()),
            Ok(())
        );
        for refused in ["127.0.0.1", "169.254.169.254", "100.64.0.2", "198.18.1.0"] {
            assert_eq!(
                policy.check_inbound(&key, &to(refused), now()),
                Err(DropReason::NotAuthorized),
                "{refused}"
            );
        }
        assert_eq!(
            policy6.check_inbound(&key, &to("fd00:ec2::254"), now()),
            Err(DropReason::NotAuthorized)
        );
        let reply = ip(
            addr("1.1.1.1"),
            addr("100.64.0.1"),
            PROTO_TCP,
            &ports(443, 5000),
        );
        assert_eq!(policy.route_reply(&reply, now()), Ok(key));
    }

    #[test]
    fn counters_count_by_reason() {
        let mut counters = DropCounters::default();
        counters.record(DropReason::Filtered);
        counters.record(DropReason::Filtered);
        counters.record(DropReason::SpoofedSource);
        assert_eq!(counters.get(DropReason::Filtered), 2);
        assert_eq!(counters.total(), 3);
        assert_eq!(
            counters.non_zero(),
            vec![("spoofed_source", 1), ("filtered", 2)]
        );
    }

    proptest::proptest! {
        /// Applying changes one by one gives the table a full rebuild from what remains would.
        #[test]
        fn one_change_at_a_time_equals_a_rebuild(
            changes in proptest::collection::vec((0u128..12, 0u8..4, proptest::prelude::any::<bool>(), 0u8..3), 0..60)
        ) {
            let mut incremental = GatewayPolicy::default();
            let mut current: std::collections::BTreeMap<Uuid, Authorization> = Default::default();
            let mut touched = BTreeSet::new();
            for (id, key, keep, variant) in changes {
                if keep {
                    // The portal keeps one preshared key and one address pair per client.
                    let address = format!("100.64.0.{}", key + 1);
                    let kind = if variant == 2 { "dns" } else { "cidr" };
                    let target = if variant == 2 { "db.internal".to_string() } else { format!("10.{variant}.{id}.0/24") };
                    let mut a = authorization(id, key + 1, &address, kind, &target, vec![], 5 + variant as i64);
                    a.preshared_key = Some(PresharedKey::from_bytes([key + 1; 32]));
                    if variant == 1 {
                        a.resource.filters = vec![tcp_filter(443)];
                    }
                    let served = incremental.upsert(&a, &mut touched).is_ok();
                    proptest::prop_assert!(served);
                    current.insert(a.id, a);
                } else {
                    incremental.remove(Uuid::from_u128(id), &mut touched);
                    current.remove(&Uuid::from_u128(id));
                }
            }
            let (rebuilt, _) = GatewayPolicy::new(current.values());
            proptest::prop_assert_eq!(incremental, rebuilt);
        }

        #[test]
        fn arbitrary_bytes_never_pass(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..100)) {
            let auths = [authorization(1, 1, "100.64.0.1", "cidr", "0.0.0.0/0", vec![], 5)];
            let (policy, _) = GatewayPolicy::new(&auths);
            // Whatever the bytes, a pass implies the source check held.
            if policy.check_inbound(&WireGuardKey::from_bytes([1; 32]), &bytes, now()).is_ok() {
                let (src, _) = packet::addresses(&bytes).unwrap();
                proptest::prop_assert_eq!(src, addr("100.64.0.1"));
            }
            let _ = policy.route_reply(&bytes, now());
        }
    }
}

#[cfg(test)]
mod redaction_tests {
    use super::*;

    #[test]
    fn a_client_peer_does_not_show_its_preshared_key() {
        let key_bytes = [0xab_u8; 32];
        let authorization = Authorization {
            id: Uuid::nil(),
            client_device_id: "c".into(),
            actor_id: Uuid::nil(),
            client_public_key: Some(WireGuardKey::from_bytes([7; 32])),
            client_addresses: TunnelAddresses {
                ipv4: "100.64.0.2".parse().unwrap(),
                ipv6: "fd70::2".parse().unwrap(),
            },
            resource: postern_protocol::ResourceView {
                id: Uuid::nil(),
                name: "db".into(),
                resource_type: "cidr".into(),
                address: "10.0.0.0/24".into(),
                description: None,
                filters: vec![],
                site_id: Uuid::nil(),
                access_until: None,
            },
            expires_at: chrono::Utc::now() + chrono::Duration::hours(1),
            preshared_key: Some(PresharedKey::from_bytes(key_bytes)),
            dns: Vec::new(),
        };
        let mut policy = GatewayPolicy::default();
        policy
            .upsert(&authorization, &mut Default::default())
            .expect("a valid authorization");
        let shown = format!("{policy:?}");
        assert!(shown.contains("ClientPeer"), "{shown}");
        // 0xab as Debug shows a byte array (a bare "171" may be part of a timestamp).
        assert!(
            !shown.contains("171, 171"),
            "the key's bytes are shown: {shown}"
        );
        let encoded = serde_json::to_string(&PresharedKey::from_bytes(key_bytes)).unwrap();
        assert!(!shown.contains(encoded.trim_matches('"')), "{shown}");
    }
}
