//! The client's address behind trusted reverse proxies.
//!
//! Every decision that uses the caller's address (source-IP policy conditions, rate limits,
//! audit, a token's last use) reads [`ClientAddr`], which the listener sets on each request.
//! Without trusted proxies it is the TCP peer. When the peer is a trusted proxy, the chain of
//! addresses in the configured header (`X-Forwarded-For` or RFC 7239 `Forwarded`) is read
//! from the right — each proxy appends the address it received the request from — skipping
//! trusted proxies; the first address that is not one is the client. A header from any other
//! peer is ignored, since anyone can send one. Only one header is read: a proxy that sets
//! `X-Forwarded-For` passes a client's forged `Forwarded` through untouched.

use std::net::{IpAddr, SocketAddr};

use axum::http::request::Parts;
use axum::http::HeaderMap;
use ipnet::IpNet;

/// The address a request is attributed to: the client's, as far as trusted proxies say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

/// Which header trusted proxies put the client's address in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, …` (nginx, HAProxy, Caddy, most load balancers)
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client, for=proxy1`
    Forwarded,
}

impl std::str::FromStr for ForwardedHeader {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        match name.to_ascii_lowercase().as_str() {
            "x-forwarded-for" => Ok(Self::XForwardedFor),
            "forwarded" => Ok(Self::Forwarded),
            other => Err(format!(
                "unknown forwarding header '{other}': use x-forwarded-for or forwarded"
            )),
        }
    }
}

/// The reverse proxies whose forwarding headers are believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    networks: Vec<IpNet>,
    header: ForwardedHeader,
}

impl TrustedProxies {
    pub fn new(networks: Vec<IpNet>, header: ForwardedHeader) -> Self {
        Self { networks, header }
    }

    fn trusts(&self, address: IpAddr) -> bool {
        let address = canonical(address);
        self.networks.iter().any(|net| net.contains(&address))
    }

    /// The client's address for a request from `peer` with `headers`.
    pub fn client_address(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = canonical(peer);
        if !self.trusts(peer) {
            return peer;
        }
        let name = match self.header {
            ForwardedHeader::XForwardedFor => "x-forwarded-for",
            ForwardedHeader::Forwarded => "forwarded",
        };
        // Several header lines form one list, in order.
        let mut entries: Vec<&str> = Vec::new();
        for value in headers.get_all(name) {
            let Ok(value) = value.to_str() else {
                return peer;
            };
            entries.extend(value.split(','));
        }
        let mut client = peer;
        for entry in entries.iter().rev() {
            let parsed = match self.header {
                ForwardedHeader::XForwardedFor => parse_node(entry.trim()),
                ForwardedHeader::Forwarded => forwarded_for(entry),
            };
            // "unknown", an obfuscated name or garbage: the proxy that wrote it does not know
            // either, so the request stays attributed to that proxy.
            let Some(address) = parsed else {
                return client;
            };
            client = canonical(address);
            if !self.trusts(client) {
                return client;
            }
        }
        client
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is, so limits and conditions see one.
fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// The `for=` node of one `Forwarded` element (`for=192.0.2.1;proto=https;by=…`).
fn forwarded_for(element: &str) -> Option<IpAddr> {
    let value = element.split(';').find_map(|pair| {
        let (name, value) = pair.trim().split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("for")
            .then_some(value.trim())
    })?;
    let value = match value.strip_prefix('"') {
        Some(quoted) => quoted.strip_suffix('"')?,
        None => value,
    };
    parse_node(value)
}

/// An address as proxies write it: `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1`,
/// `[2001:db8::1]` or `[2001:db8::1]:4711`.
fn parse_node(node: &str) -> Option<IpAddr> {
    if let Ok(address) = node.parse::<IpAddr>() {
        return Some(address);
    }
    if let Ok(socket) = node.parse::<SocketAddr>() {
        return Some(socket.ip());
    }
    let inner = node.strip_prefix('[')?.strip_suffix(']')?;
    inner.parse::<std::net::Ipv6Addr>().ok().map(IpAddr::V6)
}

/// The address a request is attributed to: [`ClientAddr`] set by the listener, else the TCP
/// peer (routers served some other way, as in tests).
pub fn source_ip(parts: &Parts) -> Option<IpAddr> {
    if let Some(ClientAddr(address)) = parts.extensions.get::<ClientAddr>() {
        return Some(*address);
    }
    parts
        .extensions
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
        .map(|info| canonical(info.0.ip()))
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for ClientAddr {
    type Rejection = (axum::http::StatusCode, &'static str);

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        source_ip(parts).map(ClientAddr).ok_or((
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "the listener did not record the peer's address",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use proptest::prelude::*;

    fn trusted(nets: &[&str], header: ForwardedHeader) -> TrustedProxies {
        TrustedProxies::new(nets.iter().map(|n| n.parse().unwrap()).collect(), header)
    }

    fn headers(name: &'static str, values: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for value in values {
            map.append(name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_sends() {
        let proxies = trusted(&["10.0.0.0/8"], ForwardedHeader::XForwardedFor);
        let sent = headers("x-forwarded-for", &["192.0.2.7"]);
        assert_eq!(
            proxies.client_address(ip("203.0.113.5"), &sent),
            ip("203.0.113.5")
        );
        let none = TrustedProxies::default();
        assert_eq!(none.client_address(ip("10.1.1.1"), &sent), ip("10.1.1.1"));
    }

    #[test]
    fn the_rightmost_untrusted_address_is_the_client() {
        let proxies = trusted(&["10.0.0.0/8"], ForwardedHeader::XForwardedFor);
        // The client forged the first entry; the proxy appended what it saw.
        let sent = headers("x-forwarded-for", &["198.51.100.1, 203.0.113.9, 10.0.0.3"]);
        assert_eq!(
            proxies.client_address(ip("10.0.0.2"), &sent),
            ip("203.0.113.9")
        );
        let split = headers("x-forwarded-for", &["198.51.100.1", "203.0.113.9"]);
        assert_eq!(
            proxies.client_address(ip("10.0.0.2"), &split),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn a_trusted_peer_without_the_header_is_the_client() {
        let proxies = trusted(&["10.0.0.0/8"], ForwardedHeader::XForwardedFor);
        assert_eq!(
            proxies.client_address(ip("10.0.0.2"), &HeaderMap::new()),
            ip("10.0.0.2")
        );
    }

    #[test]
    fn unknown_entries_leave_the_request_with_the_proxy_that_wrote_them() {
        let proxies = trusted(&["10.0.0.0/8"], ForwardedHeader::XForwardedFor);
        let sent = headers("x-forwarded-for", &["203.0.113.9, unknown, 10.0.0.3"]);
        assert_eq!(
            proxies.client_address(ip("10.0.0.2"), &sent),
            ip("10.0.0.3")
        );
    }

    #[test]
    fn only_the_configured_header_is_read() {
        let proxies = trusted(&["10.0.0.0/8"], ForwardedHeader::XForwardedFor);
        let sent = headers("forwarded", &["for=198.51.100.1"]);
        assert_eq!(
            proxies.client_address(ip("10.0.0.2"), &sent),
            ip("10.0.0.2")
        );
    }

    #[test]
    fn forwarded_elements_with_ports_quotes_and_other_parameters() {
        let proxies = trusted(&["10.0.0.0/8", "fd00::/8"], ForwardedHeader::Forwarded);
        let sent = headers(
            "forwarded",
            &[
                r#"for=198.51.100.1, For="[2001:db8:cafe::17]:4711";proto=https, by=10.0.0.9;for=10.0.0.3"#,
            ],
        );
        assert_eq!(
            proxies.client_address(ip("10.0.0.2"), &sent),
            ip("2001:db8:cafe::17")
        );
        let obfuscated = headers("forwarded", &["for=198.51.100.1, for=_hidden"]);
        assert_eq!(
            proxies.client_address(ip("10.0.0.2"), &obfuscated),
            ip("10.0.0.2")
        );
    }

    #[test]
    fn ipv4_mapped_peers_and_entries_are_ipv4() {
        let proxies = trusted(&["10.0.0.0/8"], ForwardedHeader::XForwardedFor);
        let sent = headers("x-forwarded-for", &["::ffff:203.0.113.9"]);
        assert_eq!(
            proxies.client_address(ip("::ffff:10.0.0.2"), &sent),
            ip("203.0.113.9")
        );
    }

    proptest! {
        /// Whatever a client puts in the header, behind one trusted proxy the answer is the
        /// address that proxy appended.
        #[test]
        fn a_client_cannot_choose_its_address(forged in "[ -~]{0,80}", client in any::<[u8; 4]>()) {
            let proxies = trusted(&["10.0.0.0/8"], ForwardedHeader::XForwardedFor);
            let client = IpAddr::from(client);
            prop_assume!(!proxies.trusts(client));
            let Ok(value) = HeaderValue::from_str(&format!("{forged}, {client}")) else {
                return Ok(());
            };
            let mut map = HeaderMap::new();
            map.insert("x-forwarded-for", value);
            prop_assert_eq!(proxies.client_address(ip("10.0.0.2"), &map), client);
        }

        #[test]
        fn any_header_text_is_safe(value in "[ -~]{0,200}") {
            let proxies = trusted(&["0.0.0.0/0"], ForwardedHeader::Forwarded);
            if let Ok(value) = HeaderValue::from_str(&value) {
                let mut map = HeaderMap::new();
                map.insert("forwarded", value);
                let _ = proxies.client_address(ip("10.0.0.2"), &map);
            }
        }
    }
}
