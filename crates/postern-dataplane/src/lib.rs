//! The data plane without I/O: IP packet parsing ([`packet`]), the WireGuard peers of a device
//! ([`peers`]), the gateway's per-packet verdict ([`gateway`]) and the client's routing with
//! its hold queue ([`client`]). The binaries own the sockets and the TUN devices.

pub mod client;
pub mod gateway;
pub mod hold;
pub mod packet;
pub mod peers;
pub mod translations;

use std::net::IpAddr;

use ipnet::IpNet;
use postern_protocol::ResourceView;

pub use postern_protocol::{PresharedKey, WireGuardKey};

/// The network a resource covers: a `cidr` resource's range, an `ip` resource's single
/// address. `dns` resources have no fixed network (not routed by this version).
pub fn resource_network(resource: &ResourceView) -> Option<IpNet> {
    match resource.resource_type.as_str() {
        "cidr" => resource
            .address
            .parse::<IpNet>()
            .ok()
            .map(|net| net.trunc()),
        "ip" => resource.address.parse::<IpAddr>().ok().map(IpNet::from),
        _ => None,
    }
}

/// What an Internet resource covers: every address of both families (less the ranges no
/// resource may reach, which the gateway refuses on its own).
pub fn internet_networks() -> [IpNet; 2] {
    [
        IpNet::V4(ipnet::Ipv4Net::default()),
        IpNet::V6(ipnet::Ipv6Net::default()),
    ]
}

/// The destinations an authorization opens: its resource's network, or for a DNS resource the
/// proxy addresses of the names the client asked for (each checked against the pattern again:
/// a gateway never trusts that the portal did).
pub fn authorized_networks(authorization: &postern_protocol::Authorization) -> Vec<IpNet> {
    let resource = &authorization.resource;
    if resource.resource_type == "internet" {
        return internet_networks().to_vec();
    }
    if resource.resource_type != "dns" {
        return resource_network(resource).into_iter().collect();
    }
    authorization
        .covered_targets()
        .flat_map(|target| {
            [
                IpNet::from(IpAddr::V4(target.proxy_ipv4)),
                IpNet::from(IpAddr::V6(target.proxy_ipv6)),
            ]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The IPv4 proxy address of index `n`.
    pub(crate) fn proxy(n: usize) -> IpAddr {
        IpAddr::V4(postern_domain::dns::proxy_addresses(u32::try_from(n).unwrap()).0)
    }

    pub(crate) fn resource(id: u128, kind: &str, address: &str) -> ResourceView {
        ResourceView {
            id: uuid::Uuid::from_u128(id),
            name: format!("r{id}"),
            resource_type: kind.into(),
            address: address.into(),
            description: None,
            filters: vec![],
            site_id: uuid::Uuid::nil(),
            access_until: None,
        }
    }

    #[test]
    fn networks_of_resources() {
        assert_eq!(
            resource_network(&resource(1, "cidr", "10.0.0.7/24")),
            Some("10.0.0.0/24".parse().unwrap())
        );
        assert_eq!(
            resource_network(&resource(1, "ip", "fd00::5")),
            Some("fd00::5/128".parse().unwrap())
        );
        assert_eq!(resource_network(&resource(1, "dns", "db.internal")), None);
        assert_eq!(resource_network(&resource(1, "cidr", "nonsense")), None);
    }
}
