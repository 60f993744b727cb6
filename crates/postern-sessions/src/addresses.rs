//! Tunnel addresses: each device of an account gets a stable IPv4 address from the shared
//! address space 100.64.0.0/10 and the matching IPv6 address in a ULA /64.

use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::net::{Ipv4Addr, Ipv6Addr};

use postern_protocol::TunnelAddresses;

use postern_domain::{TUNNEL_IPV4_NETWORK, TUNNEL_IPV4_PREFIX_LEN, TUNNEL_IPV6_NETWORK};

const IPV4_BASE: u32 = u32::from_be_bytes(TUNNEL_IPV4_NETWORK.octets());
/// Host numbers 1 ..= 2^22 - 2 of 100.64.0.0/10.
const IPV4_HOSTS: u32 = (1 << (32 - TUNNEL_IPV4_PREFIX_LEN as u32)) - 2;
/// The ULA /64; the low 32 bits are the IPv4 address.
const IPV6_PREFIX: u128 = u128::from_be_bytes(TUNNEL_IPV6_NETWORK.octets());

/// Picks a free address pair for `device_key`: a hash of the key, then the next free host.
/// `None` only when all four million addresses are taken.
pub fn allocate(device_key: &str, used: &HashSet<Ipv4Addr>) -> Option<TunnelAddresses> {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    device_key.hash(&mut hasher);
    let start = (hasher.finish() % u64::from(IPV4_HOSTS)) as u32;
    (0..IPV4_HOSTS)
        .map(|step| IPV4_BASE + 1 + (start + step) % IPV4_HOSTS)
        .map(Ipv4Addr::from)
        .find(|ip| !used.contains(ip))
        .map(pair)
}

/// The key a device's first-choice address is drawn from.
pub fn device_key(kind: postern_domain::DeviceKind, device_id: &str) -> String {
    format!("{}:{device_id}", kind.as_str())
}

/// `count` pairs of client device ids (`PREFIX-N`) offered the same address first: two portal
/// nodes that meet such a pair at the same moment race for one address (for tests and tools).
pub fn colliding_client_ids(prefix: &str, count: usize) -> Vec<(String, String)> {
    let empty = HashSet::new();
    let mut by_address: std::collections::HashMap<Ipv4Addr, String> = Default::default();
    let mut pairs = Vec::with_capacity(count);
    let mut n = 0u64;
    while pairs.len() < count {
        let id = format!("{prefix}-{n}");
        n += 1;
        let key = device_key(postern_domain::DeviceKind::Client, &id);
        let Some(first) = allocate(&key, &empty) else {
            break;
        };
        match by_address.remove(&first.ipv4) {
            Some(other) => pairs.push((other, id)),
            None => {
                by_address.insert(first.ipv4, id);
            }
        }
    }
    pairs
}

/// The IPv6 address that goes with an IPv4 tunnel address.
pub fn pair(ipv4: Ipv4Addr) -> TunnelAddresses {
    TunnelAddresses {
        ipv4,
        ipv6: Ipv6Addr::from(IPV6_PREFIX | u128::from(u32::from(ipv4))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_distinct_and_in_range() {
        let mut used = HashSet::new();
        let first = allocate("client:a", &used).unwrap();
        assert_eq!(allocate("client:a", &used), Some(first), "stable");
        used.insert(first.ipv4);
        let again = allocate("client:a", &used).unwrap();
        assert_ne!(again.ipv4, first.ipv4, "a taken address is skipped");
        for ip in [first.ipv4, again.ipv4] {
            let octets = ip.octets();
            assert_eq!(octets[0], 100);
            assert!((64..128).contains(&octets[1]));
            assert_ne!(ip, Ipv4Addr::new(100, 64, 0, 0));
        }
        assert!(first.ipv6.to_string().starts_with("fd70:6f73:7465:726e:"));
    }

    #[test]
    fn colliding_ids_are_offered_the_same_address_first() {
        let empty = HashSet::new();
        let pairs = colliding_client_ids("runner", 3);
        assert_eq!(pairs.len(), 3);
        for (a, b) in pairs {
            assert_ne!(a, b);
            let first = |id: &str| {
                allocate(&device_key(postern_domain::DeviceKind::Client, id), &empty)
                    .unwrap()
                    .ipv4
            };
            assert_eq!(first(&a), first(&b));
        }
    }
}
