//! A client and a gateway as the devices run them, without TUN or sockets: the client's
//! `ClientRouter` and `PeerTable` on one side, the gateway's `PeerTable` and `GatewayPolicy` on
//! the other, datagrams carried between them in memory. The gateway's verdicts are reached
//! through the same path a packet takes on a real gateway: decrypted by the peer table, judged
//! by the policy.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use boringtun::x25519::{PublicKey, StaticSecret};
use chrono::{DateTime, Duration, Utc};
use postern_dataplane::client::{ClientRouter, Route, RouteGrant};
use postern_dataplane::gateway::{DropReason, GatewayPolicy};
use postern_dataplane::packet::build::{ip, ports};
use postern_dataplane::packet::PROTO_TCP;
use postern_dataplane::peers::{PeerConfig, PeerTable, Received, Refused};
use postern_dataplane::WireGuardKey;
use postern_dns::StubResolver;
use postern_policy::{Filter, PortRange, Protocol};
use postern_protocol::{Authorization, PresharedKey, ResourceView, TunnelAddresses};
use uuid::Uuid;

const CLIENT_AT: &str = "192.0.2.10:40000";
const GATEWAY_AT: &str = "198.51.100.1:51820";
const CLIENT_IP: &str = "100.64.0.7";

fn now() -> DateTime<Utc> {
    "2026-12-02T12:00:00Z".parse().unwrap()
}

fn resource() -> ResourceView {
    ResourceView {
        id: Uuid::from_u128(1),
        name: "db".into(),
        resource_type: "cidr".into(),
        address: "10.20.0.0/24".into(),
        description: None,
        filters: vec![Filter {
            protocol: Protocol::Tcp,
            ports: vec![PortRange::single(5432)],
        }],
        site_id: Uuid::nil(),
        access_until: None,
    }
}

fn tcp(src: &str, dst: &str, dst_port: u16) -> Vec<u8> {
    let (src, dst): (IpAddr, IpAddr) = (src.parse().unwrap(), dst.parse().unwrap());
    ip(src, dst, PROTO_TCP, &ports(40_000, dst_port))
}

struct Devices {
    router: ClientRouter,
    names: StubResolver,
    client: PeerTable,
    gateway: PeerTable,
    policy: GatewayPolicy,
    client_key: WireGuardKey,
    gateway_key: WireGuardKey,
    authorization: Authorization,
}

impl Devices {
    fn new() -> Self {
        let (client_secret, gateway_secret) =
            (StaticSecret::from([1; 32]), StaticSecret::from([2; 32]));
        let client_key = WireGuardKey::from_bytes(PublicKey::from(&client_secret).to_bytes());
        let gateway_key = WireGuardKey::from_bytes(PublicKey::from(&gateway_secret).to_bytes());
        let psk = PresharedKey::from_bytes([7; 32]);
        let authorization = Authorization {
            id: Uuid::from_u128(10),
            client_device_id: "device".into(),
            actor_id: Uuid::nil(),
            client_public_key: Some(client_key),
            client_addresses: TunnelAddresses {
                ipv4: CLIENT_IP.parse().unwrap(),
                ipv6: "fd70:6f73:7465:726e::7".parse().unwrap(),
            },
            resource: resource(),
            expires_at: now() + Duration::minutes(10),
            preshared_key: Some(psk.clone()),
            dns: Vec::new(),
        };
        let mut devices = Devices {
            router: ClientRouter::default(),
            names: StubResolver::default(),
            client: PeerTable::new(client_secret, 1),
            gateway: PeerTable::new(gateway_secret, 2),
            policy: GatewayPolicy::default(),
            client_key,
            gateway_key,
            authorization,
        };
        devices.router.set_resources(&[resource()]);
        devices
            .router
            .set_addresses(Some(devices.authorization.client_addresses));
        devices.authorize();
        devices.client.upsert(
            PeerConfig {
                key: gateway_key,
                preshared_key: Some(psk),
                endpoint: Some(GATEWAY_AT.parse().unwrap()),
                keepalive: Some(25),
            },
            Instant::now(),
        );
        devices
    }

    /// What the gateway's forwarding does with an `authorize`: the policy, then the peer.
    fn authorize(&mut self) {
        let mut touched = BTreeSet::new();
        self.policy
            .upsert(&self.authorization, &mut touched)
            .unwrap();
        self.reconcile(touched);
    }

    fn revoke(&mut self) {
        let mut touched = BTreeSet::new();
        self.policy.remove(self.authorization.id, &mut touched);
        self.reconcile(touched);
    }

    fn reconcile(&mut self, touched: BTreeSet<WireGuardKey>) {
        for key in touched {
            match self.policy.peer(&key) {
                Some(peer) => {
                    self.gateway.upsert(
                        PeerConfig {
                            key,
                            preshared_key: peer.preshared_key.clone(),
                            endpoint: None,
                            keepalive: None,
                        },
                        Instant::now(),
                    );
                }
                None => {
                    self.gateway.remove(&key);
                }
            }
        }
    }

    /// A packet from the client's TUN, through the router and the tunnel; what the gateway
    /// decided for each packet that came out of its peer table.
    fn send(&mut self, packet: &[u8]) -> Vec<Result<(), DropReason>> {
        let route = self.router.route(packet, &self.names, now());
        let Route::Send(key) = route else {
            panic!("the router did not send the packet: {route:?}");
        };
        self.seal_and_judge(&key, packet)
    }

    /// A packet through the tunnel as a modified client would send it, past its router.
    fn send_unrouted(&mut self, packet: &[u8]) -> Vec<Result<(), DropReason>> {
        let key = self.gateway_key;
        self.seal_and_judge(&key, packet)
    }

    fn seal_and_judge(&mut self, key: &WireGuardKey, packet: &[u8]) -> Vec<Result<(), DropReason>> {
        let key = *key;
        let mut out = vec![0u8; 2048];
        let first = self
            .client
            .encapsulate(&key, packet, Instant::now(), &mut out)
            .map(|(_, d)| d.to_vec());
        let mut datagrams: Vec<Vec<u8>> = first.into_iter().collect();
        let mut verdicts = Vec::new();
        for _ in 0..8 {
            for datagram in std::mem::take(&mut datagrams) {
                let mut plain = vec![0u8; 2048];
                match self.gateway.handle_network_input(
                    CLIENT_AT.parse().unwrap(),
                    &datagram,
                    Instant::now(),
                    &mut plain,
                ) {
                    Received::Packet { peer, packet } => {
                        verdicts.push(self.policy.check_inbound(&peer, packet, now()));
                    }
                    Received::Handled { .. } => {}
                    Received::Refused(why) => verdicts.push(Err(refusal(why))),
                }
            }
            while let Some(t) = self.gateway.poll_transmit() {
                let mut plain = vec![0u8; 2048];
                self.client.handle_network_input(
                    GATEWAY_AT.parse().unwrap(),
                    &t.datagram,
                    Instant::now(),
                    &mut plain,
                );
            }
            datagrams
                .extend(std::iter::from_fn(|| self.client.poll_transmit()).map(|t| t.datagram));
            if datagrams.is_empty() {
                break;
            }
        }
        verdicts
    }

    /// A reply from the resource, through the gateway's policy and tunnel to the client.
    fn reply(&mut self, packet: &[u8]) -> Option<IpAddr> {
        let key = self.policy.route_reply(packet, now()).ok()?;
        let mut out = vec![0u8; 2048];
        let (to, datagram) = self
            .gateway
            .encapsulate(&key, packet, Instant::now(), &mut out)
            .map(|(to, d)| (to, d.to_vec()))?;
        assert_eq!(to, CLIENT_AT.parse::<SocketAddr>().unwrap());
        let mut plain = vec![0u8; 2048];
        let Received::Packet { peer, packet } = self.client.handle_network_input(
            GATEWAY_AT.parse().unwrap(),
            &datagram,
            Instant::now(),
            &mut plain,
        ) else {
            return None;
        };
        let (src, _) = postern_dataplane::packet::addresses(packet).ok()?;
        (self.router.gateway_of(src, &self.names, now()) == Some(peer)).then_some(src)
    }
}

fn refusal(why: Refused) -> DropReason {
    match why {
        Refused::UnknownPeer => DropReason::UnknownPeer,
        Refused::UnderLoad => DropReason::HandshakeUnderLoad,
        Refused::NotForUs | Refused::Rejected => DropReason::BadHandshake,
    }
}

#[test]
fn a_granted_flow_passes_both_ways_and_every_other_packet_gets_its_verdict() {
    let mut devices = Devices::new();
    assert!(
        devices
            .router
            .set_grants(
                [RouteGrant {
                    resource_id: Uuid::from_u128(1),
                    gateway: devices.gateway_key,
                    expires_at: now() + Duration::minutes(10),
                    dns: Vec::new(),
                }],
                now(),
            )
            .is_empty(),
        "nothing was held"
    );
    assert_eq!(devices.send(&tcp(CLIENT_IP, "10.20.0.5", 5432)), [Ok(())]);
    assert_eq!(
        devices.reply(&tcp("10.20.0.5", CLIENT_IP, 40_000)),
        Some("10.20.0.5".parse().unwrap()),
        "the reply reaches the client from the granted resource"
    );
    assert_eq!(
        devices.send(&tcp(CLIENT_IP, "10.20.0.5", 22)),
        [Err(DropReason::Filtered)],
        "a port the resource's filters do not allow"
    );
    assert_eq!(
        devices.router.route(
            &tcp("100.64.0.99", "10.20.0.5", 5432),
            &devices.names,
            now()
        ),
        Route::Drop(postern_dataplane::client::ClientDrop::NotOurSource),
        "the client's router sends only its own"
    );
    assert_eq!(
        devices.send_unrouted(&tcp("100.64.0.99", "10.20.0.5", 5432)),
        [Err(DropReason::SpoofedSource)],
        "another client's address, from a client that does not route it"
    );
    assert!(devices.gateway.contains(&devices.client_key));

    devices.revoke();
    assert!(
        devices.gateway.is_empty(),
        "the last authorization took the peer with it"
    );
    assert_eq!(
        devices.send(&tcp(CLIENT_IP, "10.20.0.5", 5432)),
        [Err(DropReason::UnknownPeer)],
        "after revocation the tunnel itself is gone"
    );
    assert_eq!(devices.reply(&tcp("10.20.0.5", CLIENT_IP, 40_000)), None);

    // Granted again: the client, whose grant was withdrawn too, starts a new session.
    devices.client.remove(&devices.gateway_key);
    devices.authorize();
    devices.client.upsert(
        PeerConfig {
            key: devices.gateway_key,
            preshared_key: Some(PresharedKey::from_bytes([7; 32])),
            endpoint: Some(GATEWAY_AT.parse().unwrap()),
            keepalive: Some(25),
        },
        Instant::now(),
    );
    assert_eq!(devices.send(&tcp(CLIENT_IP, "10.20.0.5", 5432)), [Ok(())]);
}
