//! Input validation. Every error names the field it is about, so the API can answer a 4xx that
//! tells the caller exactly what to fix.

use ipnet::IpNet;
use std::net::IpAddr;

use crate::model::{ResourceType, INTERNET_ADDRESS};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    pub field: String,
    pub message: String,
}

impl ValidationError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

pub const MAX_NAME_LEN: usize = 255;
pub const MAX_DESCRIPTION_LEN: usize = 1024;

/// A display name: at most 255 characters as sent (the schema's `maxLength`), trimmed, not
/// empty, no control characters.
pub fn name(field: &str, value: &str) -> Result<String, ValidationError> {
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return Err(ValidationError::new(field, "must not be empty"));
    }
    if value.chars().count() > MAX_NAME_LEN {
        return Err(ValidationError::new(
            field,
            format!("must be at most {MAX_NAME_LEN} characters"),
        ));
    }
    if trimmed.chars().any(char::is_control) {
        return Err(ValidationError::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(trimmed.to_string())
}

/// The most networks one token's `allowed_source_cidrs` holds.
pub const MAX_SOURCE_CIDRS: usize = 64;
/// The highest `max_clients`.
pub const MAX_CLIENTS_LIMIT: u32 = 1_000_000;

/// A token's guardrails: `max_clients` from 1 to a million, at most 64 networks, each kept in
/// its canonical form (`10.1.2.3/8` is `10.0.0.0/8`) and once.
pub fn guardrails(
    guardrails: crate::TokenGuardrails,
) -> Result<crate::TokenGuardrails, ValidationError> {
    if let Some(max) = guardrails.max_clients {
        if max == 0 || max > MAX_CLIENTS_LIMIT {
            return Err(ValidationError::new(
                "max_clients",
                format!("must be from 1 to {MAX_CLIENTS_LIMIT} (or null for no limit)"),
            ));
        }
    }
    if guardrails.allowed_source_cidrs.len() > MAX_SOURCE_CIDRS {
        return Err(ValidationError::new(
            "allowed_source_cidrs",
            format!("must hold at most {MAX_SOURCE_CIDRS} networks"),
        ));
    }
    let mut networks: Vec<IpNet> = guardrails
        .allowed_source_cidrs
        .iter()
        .map(IpNet::trunc)
        .collect();
    networks.sort();
    networks.dedup();
    Ok(crate::TokenGuardrails {
        allowed_source_cidrs: networks,
        ..guardrails
    })
}

/// Networks as written by people: CIDR ranges or single addresses (`192.0.2.7` is
/// `192.0.2.7/32`).
pub fn source_networks(field: &str, values: &[String]) -> Result<Vec<IpNet>, ValidationError> {
    values
        .iter()
        .map(|value| {
            let text = value.trim();
            text.parse::<IpNet>()
                .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    ValidationError::new(
                        field,
                        format!("'{text}' is not an IP address or CIDR range (such as 10.0.0.0/8)"),
                    )
                })
        })
        .collect()
}

pub fn description(field: &str, value: Option<&str>) -> Result<Option<String>, ValidationError> {
    let Some(value) = value else { return Ok(None) };
    let trimmed = value.trim();
    if value.chars().count() > MAX_DESCRIPTION_LEN {
        return Err(ValidationError::new(
            field,
            format!("must be at most {MAX_DESCRIPTION_LEN} characters"),
        ));
    }
    if trimmed.is_empty() {
        return Ok(None);
    }
    Ok(Some(trimmed.to_string()))
}

/// An account slug: 1 to 63 lowercase letters, digits and dashes, starting with a letter.
pub fn slug(field: &str, value: &str) -> Result<String, ValidationError> {
    let ok = !value.is_empty()
        && value.len() <= 63
        && value.starts_with(|c: char| c.is_ascii_lowercase())
        && value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !ok {
        return Err(ValidationError::new(
            field,
            format!("'{value}' is not a valid slug: use 1-63 lowercase letters, digits and dashes, starting with a letter"),
        ));
    }
    Ok(value.to_string())
}

/// An email address, lowercased: one `@` with something on each side and a dot in the domain.
pub fn email(field: &str, value: &str) -> Result<String, ValidationError> {
    let value = value.trim().to_ascii_lowercase();
    let valid = match value.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !value.chars().any(|c| c.is_whitespace() || c.is_control())
                && value.len() <= MAX_NAME_LEN
        }
        None => false,
    };
    if !valid {
        return Err(ValidationError::new(
            field,
            format!("'{value}' is not an email address"),
        ));
    }
    Ok(value)
}

/// A resource address, checked against its type and returned in canonical form.
pub fn resource_address(
    field: &str,
    resource_type: ResourceType,
    value: &str,
) -> Result<String, ValidationError> {
    let value = value.trim();
    if value.is_empty() && resource_type != ResourceType::Internet {
        return Err(ValidationError::new(
            field,
            format!(
                "an address is required for a {} resource",
                resource_type.as_str()
            ),
        ));
    }
    match resource_type {
        ResourceType::Ip => {
            let ip = value.parse::<IpAddr>().map_err(|_| {
                ValidationError::new(field, format!("'{value}' is not an IP address"))
            })?;
            reachable(field, value, IpNet::from(ip))?;
            Ok(ip.to_string())
        }
        ResourceType::Cidr => {
            let net: IpNet = value.parse().map_err(|_| {
                ValidationError::new(
                    field,
                    format!("'{value}' is not a CIDR range such as 10.0.0.0/24"),
                )
            })?;
            if net.trunc() != net {
                return Err(ValidationError::new(
                    field,
                    format!("'{value}' has host bits set; did you mean {}?", net.trunc()),
                ));
            }
            reachable(field, value, net)?;
            Ok(net.to_string())
        }
        ResourceType::Dns => dns_name(field, value),
        ResourceType::Internet => {
            let compact: String = value.chars().filter(|c| !c.is_whitespace()).collect();
            if compact.is_empty() || compact == INTERNET_ADDRESS.replace(' ', "") {
                return Ok(INTERNET_ADDRESS.to_string());
            }
            Err(ValidationError::new(
                field,
                format!(
                    "an Internet resource covers every address ({INTERNET_ADDRESS}): leave the \
                     address out (or use a cidr resource for '{value}')"
                ),
            ))
        }
    }
}

/// Ranges no resource may cover or fall in: a gateway would hand its own host, its cloud's
/// metadata service or the tunnels themselves to whoever is granted the resource.
fn forbidden_ranges() -> [(IpNet, &'static str); 9] {
    use crate::model::*;
    let net = |text: &str| text.parse::<IpNet>().unwrap_or_default();
    let range = |address: std::net::IpAddr, len: u8| IpNet::new(address, len).unwrap_or_default();
    let tunnels = "the tunnel addresses of devices";
    let dns = "the DNS resolver and proxy addresses of clients";
    [
        (net("127.0.0.0/8"), "the gateway's loopback"),
        (net("::1/128"), "the gateway's loopback"),
        (
            net("169.254.0.0/16"),
            "link-local addresses and the cloud metadata service",
        ),
        (net("fe80::/10"), "link-local addresses"),
        (net("fd00:ec2::254/128"), "the cloud metadata service"),
        (
            range(TUNNEL_IPV4_NETWORK.into(), TUNNEL_IPV4_PREFIX_LEN),
            tunnels,
        ),
        (
            range(TUNNEL_IPV6_NETWORK.into(), TUNNEL_IPV6_PREFIX_LEN),
            tunnels,
        ),
        (range(DNS_IPV4_NETWORK.into(), DNS_IPV4_PREFIX_LEN), dns),
        (range(DNS_IPV6_NETWORK.into(), DNS_IPV6_PREFIX_LEN), dns),
    ]
}

/// Why no resource may lead to `address`, if none may: what a name resolved at a gateway
/// must not reach either.
pub fn forbidden_destination(address: IpAddr) -> Option<&'static str> {
    forbidden_ranges()
        .into_iter()
        .find(|(net, _)| net.contains(&address))
        .map(|(_, why)| why)
}

/// Refuses a range that covers everything, or overlaps a forbidden range.
fn reachable(field: &str, value: &str, net: IpNet) -> Result<(), ValidationError> {
    if net.prefix_len() == 0 {
        return Err(ValidationError::new(
            field,
            format!("'{value}' covers every address: narrow it to the networks the site serves"),
        ));
    }
    for (forbidden, what) in forbidden_ranges() {
        let overlaps = forbidden.contains(&net.network()) || net.contains(&forbidden.network());
        if overlaps {
            return Err(ValidationError::new(
                field,
                format!("'{value}' overlaps {forbidden} ({what}): no resource may reach it"),
            ));
        }
    }
    Ok(())
}

/// A DNS name or pattern (see [`crate::dns`]): `*` or `**` as the whole first label (one
/// label, any depth), `?` for one character of any label.
pub fn dns_name(field: &str, value: &str) -> Result<String, ValidationError> {
    let lower = value.trim_end_matches('.').to_ascii_lowercase();
    let invalid =
        |why: &str| ValidationError::new(field, format!("'{value}' is not a DNS name: {why}"));
    if lower.is_empty() {
        return Err(invalid("it is empty"));
    }
    if lower.len() > 253 {
        return Err(invalid("it is longer than 253 characters"));
    }
    let labels: Vec<&str> = lower.split('.').collect();
    for (index, label) in labels.iter().enumerate() {
        if index == 0 && (*label == "*" || *label == "**") {
            if labels.len() < 2 {
                return Err(invalid(
                    "a wildcard needs a domain after it, as in *.corp.example",
                ));
            }
            continue;
        }
        if label.is_empty() {
            return Err(invalid("it has an empty label"));
        }
        if label.len() > 63 {
            return Err(invalid("a label is longer than 63 characters"));
        }
        if label.contains('*') {
            return Err(invalid(
                "'*' and '**' may only be the whole first label, as in **.corp.example",
            ));
        }
        if !label
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '?')
        {
            return Err(invalid(
                "labels may hold only letters, digits, '-', '_' and '?' (one character)",
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(invalid("a label may not start or end with '-'"));
        }
    }
    Ok(lower)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any text is an error or networks, never a panic; a network kept is canonical, once,
        /// and contains the address that was written.
        #[test]
        fn source_networks_are_parsed_canonical_and_deduplicated(
            texts in proptest::collection::vec(
                prop_oneof![
                    any::<String>(),
                    (any::<[u8; 4]>(), 0u8..=32).prop_map(|(a, p)| format!("{}/{p}", std::net::Ipv4Addr::from(a))),
                    any::<[u8; 16]>().prop_map(|a| std::net::Ipv6Addr::from(a).to_string()),
                ],
                0..8,
            )
        ) {
            let Ok(networks) = source_networks("allowed_source_cidrs", &texts) else {
                return Ok(());
            };
            let written = networks.clone();
            let checked = guardrails(crate::TokenGuardrails {
                allowed_source_cidrs: networks,
                ..Default::default()
            })
            .expect("at most 8 networks");
            for (net, text) in written.iter().zip(&texts) {
                prop_assert!(checked.allowed_source_cidrs.contains(&net.trunc()), "{text}");
                prop_assert!(net.trunc().contains(&net.addr()));
            }
            let mut sorted = checked.allowed_source_cidrs.clone();
            sorted.dedup();
            prop_assert_eq!(sorted, checked.allowed_source_cidrs.clone());
        }
    }

    #[test]
    fn an_internet_resource_has_one_address_and_the_others_need_one() {
        for given in ["", "  ", "0.0.0.0/0, ::/0", "0.0.0.0/0,::/0"] {
            assert_eq!(
                resource_address("address", ResourceType::Internet, given).unwrap(),
                INTERNET_ADDRESS
            );
        }
        let narrower =
            resource_address("address", ResourceType::Internet, "10.0.0.0/8").unwrap_err();
        assert!(
            narrower.message.contains("cidr resource"),
            "{}",
            narrower.message
        );
        for kind in [ResourceType::Ip, ResourceType::Cidr, ResourceType::Dns] {
            let missing = resource_address("address", kind, " ").unwrap_err();
            assert!(missing.message.contains("required"), "{}", missing.message);
        }
    }

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(name("name", "  ci runner ").unwrap(), "ci runner");
        assert_eq!(name("name", "   ").unwrap_err().field, "name");
        assert!(name("name", &"x".repeat(256)).is_err());
        // The limit is on what was sent (the schema's maxLength), not on what is kept.
        assert!(name("name", &format!(" {}", "x".repeat(255))).is_err());
        assert!(name("name", &"x".repeat(255)).is_ok());
        assert!(name("name", "a\u{0}b").is_err());
    }

    #[test]
    fn cidr_must_be_a_network_address() {
        let t = ResourceType::Cidr;
        assert_eq!(
            resource_address("address", t, "10.0.0.0/8").unwrap(),
            "10.0.0.0/8"
        );
        let err = resource_address("address", t, "10.0.0.1/8").unwrap_err();
        assert!(err.message.contains("did you mean 10.0.0.0/8"), "{err}");
        assert!(resource_address("address", t, "10.0.0.0").is_err());
        assert_eq!(
            resource_address("address", t, "fd00::/64").unwrap(),
            "fd00::/64"
        );
    }

    #[test]
    fn resources_cannot_reach_the_gateway_metadata_tunnels_or_everything() {
        let refused = [
            (ResourceType::Cidr, "0.0.0.0/0", "every address"),
            (ResourceType::Cidr, "::/0", "every address"),
            (ResourceType::Cidr, "127.0.0.0/8", "loopback"),
            (ResourceType::Ip, "127.0.0.1", "loopback"),
            (ResourceType::Ip, "::1", "loopback"),
            (ResourceType::Ip, "169.254.169.254", "metadata"),
            (ResourceType::Cidr, "169.254.0.0/24", "link-local"),
            (ResourceType::Cidr, "128.0.0.0/1", "link-local"),
            (ResourceType::Ip, "fe80::1", "link-local"),
            (ResourceType::Ip, "fd00:ec2::254", "metadata"),
            (ResourceType::Cidr, "fd00::/16", "metadata"),
            (ResourceType::Cidr, "100.64.0.0/24", "tunnel"),
            (ResourceType::Cidr, "100.0.0.0/8", "tunnel"),
            (ResourceType::Ip, "100.127.255.254", "tunnel"),
            (ResourceType::Cidr, "fd70:6f73:7465:726e::/96", "tunnel"),
            (ResourceType::Cidr, "198.18.0.0/24", "DNS"),
            (ResourceType::Ip, "198.19.255.1", "DNS"),
            (ResourceType::Cidr, "fd70:6f73:7465:726f::/80", "DNS"),
        ];
        for (t, value, why) in refused {
            let err = resource_address("address", t, value).unwrap_err();
            assert_eq!(err.field, "address");
            assert!(err.message.contains(why), "{value}: {err}");
        }
        for (t, value) in [
            (ResourceType::Cidr, "10.0.0.0/8"),
            (ResourceType::Cidr, "100.128.0.0/16"),
            (ResourceType::Ip, "169.253.0.1"),
            (ResourceType::Cidr, "fd00::/64"),
            (ResourceType::Cidr, "2001:db8::/32"),
        ] {
            assert!(resource_address("address", t, value).is_ok(), "{value}");
        }
    }

    #[test]
    fn ip_addresses_are_canonical() {
        let t = ResourceType::Ip;
        assert_eq!(
            resource_address("address", t, " 10.1.2.3 ").unwrap(),
            "10.1.2.3"
        );
        assert_eq!(
            resource_address("address", t, "FD00::0001").unwrap(),
            "fd00::1"
        );
        assert!(resource_address("address", t, "10.1.2").is_err());
    }

    #[test]
    fn dns_names_and_wildcards() {
        let t = ResourceType::Dns;
        assert_eq!(
            resource_address("address", t, "Git.Corp.Example.").unwrap(),
            "git.corp.example"
        );
        assert_eq!(
            resource_address("address", t, "*.corp.example").unwrap(),
            "*.corp.example"
        );
        assert_eq!(
            resource_address("address", t, "**.Corp.example").unwrap(),
            "**.corp.example"
        );
        assert_eq!(
            resource_address("address", t, "web-?.corp.example").unwrap(),
            "web-?.corp.example"
        );
        for bad in [
            "*",
            "**",
            "***.corp.example",
            "a.*.example",
            "a.**.example",
            "*x.example",
            "a..b",
            "-a.example",
            "a b.example",
            "foo*.example",
        ] {
            assert!(
                resource_address("address", t, bad).is_err(),
                "{bad} accepted"
            );
        }
    }

    #[test]
    fn emails_and_slugs() {
        assert_eq!(
            email("email", " Ada@Example.COM ").unwrap(),
            "ada@example.com"
        );
        assert!(email("email", "ada@example").is_err());
        assert!(email("email", "example.com").is_err());
        assert_eq!(slug("slug", "acme-2").unwrap(), "acme-2");
        assert!(slug("slug", "Acme").is_err());
        assert!(slug("slug", "2acme").is_err());
    }
}
