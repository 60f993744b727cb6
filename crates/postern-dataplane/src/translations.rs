//! The gateway's view of its DNS translations, for the packet path: a client's packet to a
//! proxy address goes on only once the gateway has translated that proxy address for that
//! client (the name resolved, the DNAT entry in place). Until then it waits in a small bounded
//! queue — the portal tells gateway and client of a grant at the same moment, so the first
//! packet often arrives while the name is still being looked up — and a name that does not
//! resolve at the gateway is answered with an ICMP "host unreachable", so the client's
//! connection fails at once instead of timing out, and the client learns why.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::hold::HoldQueue;
use crate::{packet, WireGuardKey};

/// Packets held per (client, proxy address) while its translation is set up.
pub const MAX_HELD_PER_TARGET: usize = 32;
/// Packets held in all.
pub const MAX_HELD: usize = 1024;
/// How long a packet may wait for its translation (a lookup times out sooner).
pub const HOLD_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a client's proxy address stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Translation {
    /// Translated: packets go on to the real address.
    Ready,
    /// The name has no address of this family at the gateway.
    Unresolvable,
}

/// One change of a (client, proxy address) pair: `None` when it is no longer translated.
pub type TranslationChange = (Pair, Option<Translation>);

/// What to do with a client's packet to a proxy address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyVerdict {
    /// Into the TUN: the kernel translates it.
    Deliver,
    /// Kept until the translation is ready (or dropped, past the bounds).
    Held,
    /// Send this ICMP error back to the client instead.
    Unreachable(Vec<u8>),
    /// Dropped: the queue is full.
    Dropped,
}

/// A client's tunnel address and a proxy address.
type Pair = (IpAddr, IpAddr);

#[derive(Debug)]
pub struct Translations {
    states: HashMap<Pair, Translation>,
    /// Packets waiting, each with the peer it came from.
    held: HoldQueue<Pair, (WireGuardKey, Vec<u8>)>,
    released: VecDeque<Release>,
}

impl Default for Translations {
    fn default() -> Self {
        Self {
            states: HashMap::new(),
            held: HoldQueue::new(MAX_HELD_PER_TARGET, MAX_HELD, HOLD_TIMEOUT),
            released: VecDeque::new(),
        }
    }
}

/// A packet that waited, on its way now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Release {
    /// Translated: into the TUN.
    Tun(Vec<u8>),
    /// Cannot be translated: this ICMP error goes back to the peer it came from.
    Peer(WireGuardKey, Vec<u8>),
}

impl Translations {
    /// Takes in changes from the DNS translation; packets waiting for a pair that is ready now
    /// come out of [`Self::poll_release`], and for those of a pair that cannot be translated,
    /// an ICMP error each (so that a connection fails at once, as a fresh one would).
    pub fn handle_changes(
        &mut self,
        changes: impl IntoIterator<Item = TranslationChange>,
        now: Instant,
    ) {
        for (pair, state) in changes {
            match state {
                Some(state) => {
                    self.states.insert(pair, state);
                }
                None => {
                    self.states.remove(&pair);
                }
            }
            let Some(state) = state else {
                continue;
            };
            let waiting = self.held.take(&pair, now);
            self.released.extend(
                waiting
                    .into_iter()
                    .filter_map(|(peer, packet)| match state {
                        Translation::Ready => Some(Release::Tun(packet)),
                        Translation::Unresolvable => {
                            packet::host_unreachable(&packet).map(|icmp| Release::Peer(peer, icmp))
                        }
                    }),
            );
        }
    }

    /// Decides about a packet from `peer` (`src` its tunnel address) to the proxy address
    /// `dst`, already allowed by the gateway's policy.
    pub fn route(
        &mut self,
        peer: &WireGuardKey,
        src: IpAddr,
        dst: IpAddr,
        packet: &[u8],
        now: Instant,
    ) -> ProxyVerdict {
        match self.states.get(&(src, dst)) {
            Some(Translation::Ready) => ProxyVerdict::Deliver,
            Some(Translation::Unresolvable) => match packet::host_unreachable(packet) {
                Some(icmp) => ProxyVerdict::Unreachable(icmp),
                None => ProxyVerdict::Dropped,
            },
            None => match self.held.push(&(src, dst), (*peer, packet.to_vec()), now) {
                true => ProxyVerdict::Held,
                false => ProxyVerdict::Dropped,
            },
        }
    }

    /// A packet that waited and may go now, or the ICMP error that answers it.
    pub fn poll_release(&mut self) -> Option<Release> {
        self.released.pop_front()
    }

    /// Drops packets that waited too long; returns how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        self.held.expire(now)
    }

    pub fn held(&self) -> usize {
        self.held.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::build::{ip, ports};
    use crate::packet::{parse, Transport, PROTO_TCP};

    const CLIENT: &str = "100.64.0.7";
    const PROXY: &str = "198.18.1.0";

    fn pair() -> (IpAddr, IpAddr) {
        (CLIENT.parse().unwrap(), PROXY.parse().unwrap())
    }

    fn peer() -> WireGuardKey {
        WireGuardKey::from_bytes([9; 32])
    }

    fn syn(n: u16) -> Vec<u8> {
        let (src, dst) = pair();
        ip(src, dst, PROTO_TCP, &ports(40_000 + n, 80))
    }

    #[test]
    fn packets_wait_for_their_translation_and_leave_in_order() {
        let mut table = Translations::default();
        let (src, dst) = pair();
        let now = Instant::now();
        assert_eq!(
            table.route(&peer(), src, dst, &syn(1), now),
            ProxyVerdict::Held
        );
        assert_eq!(
            table.route(&peer(), src, dst, &syn(2), now),
            ProxyVerdict::Held
        );
        assert_eq!(table.poll_release(), None);
        table.handle_changes([((src, dst), Some(Translation::Ready))], now);
        assert_eq!(table.poll_release(), Some(Release::Tun(syn(1))));
        assert_eq!(table.poll_release(), Some(Release::Tun(syn(2))));
        assert_eq!(table.poll_release(), None);
        assert_eq!(table.held(), 0);
        assert_eq!(
            table.route(&peer(), src, dst, &syn(3), now),
            ProxyVerdict::Deliver
        );

        // Withdrawn: waits again (the policy decides first whether it may at all).
        table.handle_changes([((src, dst), None)], now);
        assert_eq!(
            table.route(&peer(), src, dst, &syn(4), now),
            ProxyVerdict::Held
        );
    }

    #[test]
    fn an_unresolvable_name_is_answered_with_host_unreachable_quoting_the_packet() {
        let mut table = Translations::default();
        let (src, dst) = pair();
        let now = Instant::now();
        table.route(&peer(), src, dst, &syn(1), now);
        table.handle_changes([((src, dst), Some(Translation::Unresolvable))], now);
        assert_eq!(table.held(), 0);
        let Some(Release::Peer(to, waited)) = table.poll_release() else {
            panic!("what waited is answered too");
        };
        assert_eq!(
            (to, packet::host_unreachable(&syn(1))),
            (peer(), Some(waited))
        );
        let ProxyVerdict::Unreachable(icmp) = table.route(&peer(), src, dst, &syn(2), now) else {
            panic!("not answered");
        };
        let info = parse(&icmp).unwrap();
        assert_eq!((info.src, info.dst), (dst, src), "from the proxy address");
        let Transport::IcmpError {
            kind: 3,
            code: 1,
            quoted: Some(quoted),
        } = info.transport
        else {
            panic!("not a host unreachable: {:?}", info.transport);
        };
        assert_eq!(
            (quoted.src, quoted.dst, quoted.src_port),
            (src, dst, Some(40_002))
        );
    }

    #[test]
    fn held_packets_are_bounded_and_time_out() {
        let mut table = Translations::default();
        let (src, dst) = pair();
        let now = Instant::now();
        for n in 0..MAX_HELD_PER_TARGET as u16 + 3 {
            let verdict = table.route(&peer(), src, dst, &syn(n), now);
            let expected = if usize::from(n) < MAX_HELD_PER_TARGET {
                ProxyVerdict::Held
            } else {
                ProxyVerdict::Dropped
            };
            assert_eq!(verdict, expected);
        }
        assert_eq!(table.expire(now + Duration::from_secs(1)), 0);
        assert_eq!(
            table.expire(now + HOLD_TIMEOUT),
            MAX_HELD_PER_TARGET,
            "all timed out"
        );
        assert_eq!(table.held(), 0);
        for n in 0..MAX_HELD + 10 {
            let proxy = crate::tests::proxy(n);
            let _ = table.route(&peer(), src, proxy, &syn(1), now);
            assert!(table.held() <= MAX_HELD);
        }
    }
}
