//! The names a `dns` resource covers, and which resource a queried name belongs to.
//!
//! A resource's address is a name or a pattern (validated and lowercased by
//! [`crate::validate::dns_name`]):
//!
//! | Pattern | Matches | Does not match |
//! |---|---|---|
//! | `app.corp.example` | `app.corp.example` | `x.app.corp.example` |
//! | `web-?.corp.example` | `web-1.corp.example`, `web-a.corp.example` | `web-10.corp.example`, `web-.corp.example` |
//! | `*.corp.example` | `git.corp.example` | `corp.example`, `a.git.corp.example` |
//! | `**.corp.example` | `corp.example`, `git.corp.example`, `a.git.corp.example` | `corpx.example` |
//!
//! `?` stands for one character of a label (never a dot), `*` for exactly one whole label,
//! `**` for any number of labels, none included. When several resources match a name the most
//! specific wins: an exact name, then one with `?`, then `*`, then `**`; among patterns of one
//! kind, the one naming more labels.

use std::cmp::Ordering;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::model::{DNS_IPV4_NETWORK, DNS_IPV4_PREFIX_LEN, DNS_IPV6_NETWORK};

/// A validated `dns` resource address, ready to match queried names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamePattern {
    lead: Lead,
    /// The labels after the leading wildcard (all of them without one); `?` in them matches
    /// any one character.
    labels: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lead {
    /// No leading wildcard: the name has exactly these labels.
    None,
    /// `*.`: one more label in front, any.
    OneLabel,
    /// `**.`: any number of labels in front, none included.
    AnyDepth,
}

/// How specific a pattern is; greater is more specific. Compare with [`Ord`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Specificity {
    kind: u8,
    labels: usize,
    /// Fewer `?` is more specific.
    fixed_characters: usize,
}

impl NamePattern {
    /// Reads a resource address that [`crate::validate::dns_name`] accepted; `None` for
    /// anything else (an address stored by a bug must match nothing rather than everything).
    pub fn parse(address: &str) -> Option<Self> {
        let (lead, rest) = if let Some(rest) = address.strip_prefix("**.") {
            (Lead::AnyDepth, rest)
        } else if let Some(rest) = address.strip_prefix("*.") {
            (Lead::OneLabel, rest)
        } else {
            (Lead::None, address)
        };
        let labels: Vec<String> = rest.split('.').map(str::to_string).collect();
        let well_formed = labels
            .iter()
            .all(|label| !label.is_empty() && !label.contains('*'));
        well_formed.then_some(Self { lead, labels })
    }

    /// Whether `name` (a queried name; any case, with or without the final dot) is covered.
    pub fn matches(&self, name: &str) -> bool {
        let name = name.strip_suffix('.').unwrap_or(name);
        if name.is_empty() {
            return false;
        }
        let queried: Vec<&str> = name.split('.').collect();
        let Some(extra) = queried.len().checked_sub(self.labels.len()) else {
            return false;
        };
        let depth_fits = match self.lead {
            Lead::None => extra == 0,
            Lead::OneLabel => extra == 1 && queried.first().is_some_and(|l| !l.is_empty()),
            Lead::AnyDepth => queried[..extra].iter().all(|l| !l.is_empty()),
        };
        depth_fits
            && queried[extra..]
                .iter()
                .zip(&self.labels)
                .all(|(label, pattern)| label_matches(pattern, label))
    }

    /// The longest domain every name it matches ends with: the routing domain split DNS
    /// sends to the stub resolver (`*.svc.example` → `svc.example`, `web-?.corp.example` →
    /// `corp.example`, `app.example` → `app.example`). `None` when every label has a `?`.
    pub fn suffix(&self) -> Option<String> {
        let fixed = self
            .labels
            .iter()
            .rposition(|label| label.contains('?'))
            .map_or(0, |last| last + 1);
        let labels = self.labels.get(fixed..).filter(|l| !l.is_empty())?;
        Some(labels.join("."))
    }

    pub fn specificity(&self) -> Specificity {
        let questions: usize = self.labels.iter().map(|l| l.matches('?').count()).sum();
        let kind = match self.lead {
            Lead::None if questions == 0 => 3,
            Lead::None => 2,
            Lead::OneLabel => 1,
            Lead::AnyDepth => 0,
        };
        let characters: usize = self.labels.iter().map(String::len).sum();
        Specificity {
            kind,
            labels: self.labels.len(),
            fixed_characters: characters - questions,
        }
    }
}

/// `pattern` holds `?` for any one character; labels compare without regard to case.
fn label_matches(pattern: &str, label: &str) -> bool {
    pattern.len() == label.len()
        && pattern
            .bytes()
            .zip(label.bytes())
            .all(|(p, l)| p == b'?' || p == l.to_ascii_lowercase())
}

/// The item whose pattern covers `name` most specifically; a tie goes to the first of the
/// tied items in `key` order, so every caller picks the same one.
pub fn most_specific<'a, T, K: Ord>(
    items: impl IntoIterator<Item = (&'a NamePattern, T)>,
    name: &str,
    key: impl Fn(&T) -> K,
) -> Option<T> {
    items
        .into_iter()
        .filter(|(pattern, _)| pattern.matches(name))
        .max_by(
            |(a, x), (b, y)| match a.specificity().cmp(&b.specificity()) {
                Ordering::Equal => key(y).cmp(&key(x)),
                other => other,
            },
        )
        .map(|(_, item)| item)
}

/// Proxy addresses start past the first /24 of the range (and its first 256 IPv6 addresses),
/// which the resolver keeps for itself.
const FIRST_PROXY_HOST: u32 = 256;

/// How many names can hold proxy addresses at once: the IPv4 range past its first /24 (the
/// IPv6 range numbers its addresses alike).
pub const PROXY_ADDRESSES: u32 = (1 << (32 - DNS_IPV4_PREFIX_LEN)) - FIRST_PROXY_HOST;

/// The proxy addresses of index `index` in both families (`index < PROXY_ADDRESSES`).
pub fn proxy_addresses(index: u32) -> (Ipv4Addr, Ipv6Addr) {
    let host = FIRST_PROXY_HOST + index;
    let ipv4 = Ipv4Addr::from(u32::from(DNS_IPV4_NETWORK) + host);
    let ipv6 = Ipv6Addr::from(u128::from(DNS_IPV6_NETWORK) + u128::from(host));
    (ipv4, ipv6)
}

/// The index of a proxy address (the inverse of [`proxy_addresses`]); `None` for any other
/// address, the resolver's own first /24 included.
pub fn proxy_index(address: IpAddr) -> Option<u32> {
    let host = match address {
        IpAddr::V4(ip) => u32::from(ip).checked_sub(u32::from(DNS_IPV4_NETWORK))?,
        IpAddr::V6(ip) => {
            u32::try_from(u128::from(ip).checked_sub(u128::from(DNS_IPV6_NETWORK))?).ok()?
        }
    };
    let index = host.checked_sub(FIRST_PROXY_HOST)?;
    (index < PROXY_ADDRESSES).then_some(index)
}

/// Whether `address` is one a stub resolver gives a name.
pub fn is_proxy_address(address: IpAddr) -> bool {
    proxy_index(address).is_some()
}

/// Whether `name` is a plain host name, as queried and resolved: lowercase letters, digits,
/// `-` and `_`, labels of 1 to 63 characters, at most 253 in all, no final dot.
pub fn is_plain_name(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::dns_name;
    use proptest::prelude::*;

    fn pattern(text: &str) -> NamePattern {
        let valid = dns_name("address", text).unwrap();
        NamePattern::parse(&valid).unwrap()
    }

    #[test]
    fn proxy_addresses_and_plain_names() {
        for (address, proxy) in [
            ("198.18.1.0", true),
            ("198.19.255.255", true),
            ("198.18.0.53", false),
            ("198.20.0.0", false),
            ("10.0.0.1", false),
            ("fd70:6f73:7465:726f::100", true),
            ("fd70:6f73:7465:726f::53", false),
            ("fd70:6f73:7465:726e::100", false),
        ] {
            assert_eq!(
                is_proxy_address(address.parse().unwrap()),
                proxy,
                "{address}"
            );
        }
        assert!(is_plain_name("db.svc.internal.test"));
        assert!(is_plain_name("_sip._tcp.example.com"));
        for name in [
            "",
            "a..b",
            "*.example.com",
            "A.example",
            "a.example.",
            "x?.example",
        ] {
            assert!(!is_plain_name(name), "{name}");
        }
        assert!(!is_plain_name(&format!("{}.example", "a".repeat(64))));
    }

    #[test]
    fn the_documented_examples_hold() {
        let cases: [(&str, &[&str], &[&str]); 4] = [
            (
                "app.corp.example",
                &["app.corp.example", "APP.corp.example."],
                &["x.app.corp.example", "corp.example"],
            ),
            (
                "web-?.corp.example",
                &["web-1.corp.example", "web-a.corp.example"],
                &[
                    "web-10.corp.example",
                    "web-.corp.example",
                    "web-1.x.corp.example",
                ],
            ),
            (
                "*.corp.example",
                &["git.corp.example"],
                &["corp.example", "a.git.corp.example", ".corp.example"],
            ),
            (
                "**.corp.example",
                &["corp.example", "git.corp.example", "a.git.corp.example"],
                &["corpx.example", "example", "a..corp.example"],
            ),
        ];
        for (text, yes, no) in cases {
            let p = pattern(text);
            for name in yes {
                assert!(p.matches(name), "{text} should match {name}");
            }
            for name in no {
                assert!(!p.matches(name), "{text} should not match {name}");
            }
        }
    }

    #[test]
    fn routing_domains_are_the_fixed_end_of_a_pattern() {
        for (text, suffix) in [
            ("app.corp.example", Some("app.corp.example")),
            ("*.svc.corp.example", Some("svc.corp.example")),
            ("**.corp.example", Some("corp.example")),
            ("web-?.corp.example", Some("corp.example")),
            ("a.b?.example", Some("example")),
            ("x?", None),
        ] {
            assert_eq!(pattern(text).suffix().as_deref(), suffix, "{text}");
        }
    }

    #[test]
    fn the_most_specific_resource_wins() {
        let patterns = [
            pattern("**.corp.example"),
            pattern("*.corp.example"),
            pattern("gi?.corp.example"),
            pattern("git.corp.example"),
            pattern("**.git.corp.example"),
        ];
        let pick = |name: &str| {
            most_specific(
                patterns.iter().enumerate().map(|(i, p)| (p, i)),
                name,
                |i| *i,
            )
        };
        assert_eq!(pick("git.corp.example"), Some(3));
        assert_eq!(pick("gik.corp.example"), Some(2));
        assert_eq!(pick("wiki.corp.example"), Some(1));
        assert_eq!(pick("corp.example"), Some(0));
        assert_eq!(pick("a.wiki.corp.example"), Some(0));
        assert_eq!(
            pick("a.git.corp.example"),
            Some(4),
            "more labels named wins among `**`"
        );
        assert_eq!(pick("example.org"), None);
    }

    #[test]
    fn a_tie_goes_to_the_lowest_key_whatever_the_order() {
        let a = pattern("*.corp.example");
        let b = pattern("*.corp.example");
        for items in [vec![(&a, 7), (&b, 2)], vec![(&b, 2), (&a, 7)]] {
            assert_eq!(most_specific(items, "x.corp.example", |k| *k), Some(2));
        }
    }

    #[test]
    fn what_validation_refuses_does_not_parse_into_a_catch_all() {
        assert_eq!(NamePattern::parse("a.*.example"), None);
        assert_eq!(NamePattern::parse("*"), None);
        assert_eq!(NamePattern::parse("**."), None);
    }

    proptest! {
        #[test]
        fn an_exact_name_matches_itself_and_nothing_longer(
            labels in prop::collection::vec("[a-z0-9]{1,8}", 1..5),
            front in "[a-z0-9]{1,8}",
        ) {
            let name = labels.join(".");
            let longer = format!("{front}.{name}");
            let exact = pattern(&name);
            let any_depth = pattern(&format!("**.{name}"));
            let one_label = pattern(&format!("*.{name}"));
            prop_assert!(exact.matches(&name));
            prop_assert!(!exact.matches(&longer));
            prop_assert!(any_depth.matches(&longer) && any_depth.matches(&name));
            prop_assert!(one_label.matches(&longer) && !one_label.matches(&name));
        }

        #[test]
        fn every_proxy_address_maps_back_to_its_index(index in 0..PROXY_ADDRESSES) {
            let (ipv4, ipv6) = proxy_addresses(index);
            prop_assert_eq!(proxy_index(IpAddr::V4(ipv4)), Some(index));
            prop_assert_eq!(proxy_index(IpAddr::V6(ipv6)), Some(index));
        }

        #[test]
        fn no_queried_name_panics_the_matcher(name in "\\PC{0,80}") {
            for p in ["**.corp.example", "*.corp.example", "w?b.corp.example", "corp.example"] {
                let _ = pattern(p).matches(&name);
            }
        }
    }
}
