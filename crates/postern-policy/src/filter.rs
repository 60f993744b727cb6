//! Resource traffic filters: which protocols and destination ports a
//! resource accepts.
//!
//! JSON form: `{"protocol":"tcp","ports":"80,443,8000-8100"}`. `ports` may be
//! omitted or empty to mean every port of the protocol; ICMP takes no ports.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::json::Object;
use utoipa::openapi::schema::Schema;
use utoipa::openapi::RefOr;
use utoipa::{PartialSchema, ToSchema};

/// A transport protocol a filter applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    Icmp,
}

/// An inclusive range of ports, `start..=end`, with `1 <= start <= end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortRange {
    pub start: u16,
    pub end: u16,
}

/// Traffic allowed to a resource for one protocol. An empty `ports` list means
/// every port of that protocol.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "Object<FilterRepr>", into = "FilterRepr")]
pub struct Filter {
    pub protocol: Protocol,
    pub ports: Vec<PortRange>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("'{0}' is not a port number")]
    NotAPortNumber(String),
    #[error("'{0}' is not a port range (expected e.g. '8000-8100')")]
    MalformedRange(String),
    #[error("port 0 is not allowed")]
    PortZero,
    #[error("port {0} is out of range (1-65535)")]
    PortOutOfRange(String),
    #[error("port range '{0}' has its start after its end")]
    StartAfterEnd(String),
    #[error("the port list '{0}' has an empty entry")]
    EmptyEntry(String),
    #[error("icmp filters cannot list ports (got '{0}')")]
    IcmpWithPorts(String),
}

/// Parses a comma-separated port list such as `"80, 443,8000-8100"`.
///
/// An empty (or all-whitespace) string yields an empty list, meaning "all
/// ports". The order of the entries is kept.
pub fn parse_ports(s: &str) -> Result<Vec<PortRange>, FilterError> {
    if s.trim().is_empty() {
        return Ok(Vec::new());
    }
    s.split(',')
        .map(|piece| {
            let piece = piece.trim();
            if piece.is_empty() {
                return Err(FilterError::EmptyEntry(s.trim().to_owned()));
            }
            piece.parse()
        })
        .collect()
}

/// Whether traffic of `protocol` to `dst_port` passes `filters`.
///
/// No filters at all allows everything. ICMP ignores ports. A TCP/UDP packet
/// without a known destination port only passes a filter that allows every
/// port of its protocol.
pub fn filters_allow(filters: &[Filter], protocol: Protocol, dst_port: Option<u16>) -> bool {
    filters.is_empty() || filters.iter().any(|f| f.allows(protocol, dst_port))
}

/// Formats ranges in the canonical string form used by the JSON API, e.g.
/// `"80,443,8000-8100"`.
pub fn format_ports(ports: &[PortRange]) -> String {
    ports
        .iter()
        .map(PortRange::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

impl Filter {
    /// Checks every port range and that ICMP filters list no ports.
    pub fn validate(&self) -> Result<(), FilterError> {
        if self.protocol == Protocol::Icmp && !self.ports.is_empty() {
            return Err(FilterError::IcmpWithPorts(format_ports(&self.ports)));
        }
        self.ports.iter().try_for_each(PortRange::validate)
    }

    /// Whether this single filter lets the traffic through.
    pub fn allows(&self, protocol: Protocol, dst_port: Option<u16>) -> bool {
        if self.protocol != protocol {
            return false;
        }
        if protocol == Protocol::Icmp || self.ports.is_empty() {
            return true;
        }
        dst_port.is_some_and(|port| self.ports.iter().any(|r| r.contains(port)))
    }
}

impl PortRange {
    pub fn single(port: u16) -> Self {
        Self {
            start: port,
            end: port,
        }
    }

    pub fn validate(&self) -> Result<(), FilterError> {
        if self.start == 0 || self.end == 0 {
            return Err(FilterError::PortZero);
        }
        if self.start > self.end {
            return Err(FilterError::StartAfterEnd(self.to_string()));
        }
        Ok(())
    }

    pub fn contains(&self, port: u16) -> bool {
        (self.start..=self.end).contains(&port)
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.start == self.end {
            write!(f, "{}", self.start)
        } else {
            write!(f, "{}-{}", self.start, self.end)
        }
    }
}

impl FromStr for PortRange {
    type Err = FilterError;

    /// Parses `"80"` or `"8000-8100"` (whitespace around the dash allowed).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let range = match s.split_once('-') {
            None => PortRange::single(parse_port(s)?),
            Some((start, end)) => {
                let (start, end) = (start.trim(), end.trim());
                if start.is_empty() || end.is_empty() || end.contains('-') {
                    return Err(FilterError::MalformedRange(s.to_owned()));
                }
                PortRange {
                    start: parse_port(start)?,
                    end: parse_port(end)?,
                }
            }
        };
        if range.start > range.end {
            return Err(FilterError::StartAfterEnd(s.to_owned()));
        }
        Ok(range)
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Icmp => "icmp",
        })
    }
}

impl PartialSchema for Filter {
    fn schema() -> RefOr<Schema> {
        FilterRepr::schema()
    }
}

impl ToSchema for Filter {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("Filter")
    }

    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        FilterRepr::schemas(schemas);
    }
}

fn parse_port(s: &str) -> Result<u16, FilterError> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(FilterError::NotAPortNumber(s.to_owned()));
    }
    let digits = s.trim_start_matches('0');
    if digits.is_empty() {
        return Err(FilterError::PortZero);
    }
    digits
        .parse::<u16>()
        .map_err(|_| FilterError::PortOutOfRange(digits.to_owned()))
}

/// Wire form of [`Filter`].
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(description = "Traffic allowed to a resource for one protocol.")]
struct FilterRepr {
    protocol: Protocol,
    /// Comma-separated ports and inclusive ranges; omitted or empty means all
    /// ports. Not allowed for icmp.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "80,443,8000-8100")]
    ports: Option<String>,
}

impl TryFrom<Object<FilterRepr>> for Filter {
    type Error = FilterError;

    fn try_from(Object(repr): Object<FilterRepr>) -> Result<Self, Self::Error> {
        repr.try_into()
    }
}

impl TryFrom<FilterRepr> for Filter {
    type Error = FilterError;

    fn try_from(repr: FilterRepr) -> Result<Self, Self::Error> {
        let filter = Filter {
            protocol: repr.protocol,
            ports: parse_ports(repr.ports.as_deref().unwrap_or(""))?,
        };
        filter.validate()?;
        Ok(filter)
    }
}

impl From<Filter> for FilterRepr {
    fn from(filter: Filter) -> Self {
        FilterRepr {
            protocol: filter.protocol,
            ports: (!filter.ports.is_empty()).then(|| format_ports(&filter.ports)),
        }
    }
}
