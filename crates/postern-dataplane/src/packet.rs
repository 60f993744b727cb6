//! IPv4 and IPv6 header parsing: just what the data plane decides on (addresses, protocol,
//! ports, ICMP type). Never panics: every input is either parsed or refused with a reason.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;

/// How many IPv6 extension headers are walked before giving up.
const MAX_EXTENSION_HEADERS: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("empty packet")]
    Empty,
    #[error("IP version {0} is neither 4 nor 6")]
    Version(u8),
    #[error("truncated packet")]
    Truncated,
    #[error("bad header length")]
    HeaderLength,
    #[error("too many IPv6 extension headers")]
    TooManyExtensions,
}

/// The transport part of a packet, as far as the decision needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp {
        src_port: u16,
        dst_port: u16,
    },
    Udp {
        src_port: u16,
        dst_port: u16,
    },
    /// ICMP (IPv4) or ICMPv6, other than errors.
    Icmp {
        kind: u8,
        code: u8,
    },
    /// An ICMP or ICMPv6 error (destination unreachable, packet too big, time exceeded,
    /// parameter problem, source quench) or redirect, with the start of the packet it is about.
    IcmpError {
        kind: u8,
        code: u8,
        /// `None` when the quoted packet is too short to read.
        quoted: Option<Quoted>,
    },
    /// A fragment other than the first: it carries no transport header.
    Fragment {
        protocol: u8,
    },
    Other {
        protocol: u8,
    },
}

impl Transport {
    pub fn dst_port(&self) -> Option<u16> {
        match self {
            Transport::Tcp { dst_port, .. } | Transport::Udp { dst_port, .. } => Some(*dst_port),
            _ => None,
        }
    }
}

/// The packet an ICMP error quotes: its addresses, protocol and, for TCP and UDP, ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quoted {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub protocol: u8,
    pub src_port: Option<u16>,
    pub dst_port: Option<u16>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketInfo {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub transport: Transport,
    /// An IPv4 loose or strict source-route option, or an IPv6 routing header: the sender
    /// asks for a path of its choosing.
    pub source_routed: bool,
}

/// ICMP types that carry the packet they are about: unreachable, source quench, redirect,
/// time exceeded, parameter problem.
const ICMP_QUOTING: [u8; 5] = [3, 4, 5, 11, 12];
/// ICMPv6: unreachable, packet too big, time exceeded, parameter problem; redirect (137).
const ICMPV6_QUOTING: [u8; 5] = [1, 2, 3, 4, 137];
/// IPv4 options: loose and strict source route.
const OPTION_LSRR: u8 = 131;
const OPTION_SSRR: u8 = 137;

/// The source and destination addresses only (cheaper than [`parse`]).
pub fn addresses(packet: &[u8]) -> Result<(IpAddr, IpAddr), ParseError> {
    let first = *packet.first().ok_or(ParseError::Empty)?;
    match first >> 4 {
        4 => {
            let src: [u8; 4] = array(packet, 12)?;
            let dst: [u8; 4] = array(packet, 16)?;
            Ok((Ipv4Addr::from(src).into(), Ipv4Addr::from(dst).into()))
        }
        6 => {
            let src: [u8; 16] = array(packet, 8)?;
            let dst: [u8; 16] = array(packet, 24)?;
            Ok((Ipv6Addr::from(src).into(), Ipv6Addr::from(dst).into()))
        }
        version => Err(ParseError::Version(version)),
    }
}

pub fn parse(packet: &[u8]) -> Result<PacketInfo, ParseError> {
    let first = *packet.first().ok_or(ParseError::Empty)?;
    match first >> 4 {
        4 => parse_v4(packet),
        6 => parse_v6(packet),
        version => Err(ParseError::Version(version)),
    }
}

fn array<const N: usize>(packet: &[u8], at: usize) -> Result<[u8; N], ParseError> {
    packet
        .get(at..at.saturating_add(N))
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or(ParseError::Truncated)
}

fn u16_at(packet: &[u8], at: usize) -> Result<u16, ParseError> {
    array::<2>(packet, at).map(u16::from_be_bytes)
}

fn parse_v4(packet: &[u8]) -> Result<PacketInfo, ParseError> {
    let header_len = usize::from(packet[0] & 0x0f) * 4;
    if header_len < 20 {
        return Err(ParseError::HeaderLength);
    }
    let total_len = usize::from(u16_at(packet, 2)?);
    if total_len < header_len || total_len > packet.len() {
        return Err(ParseError::Truncated);
    }
    let packet = &packet[..total_len];
    let fragment_offset = u16_at(packet, 6)? & 0x1fff;
    let protocol = *packet.get(9).ok_or(ParseError::Truncated)?;
    let src: [u8; 4] = array(packet, 12)?;
    let dst: [u8; 4] = array(packet, 16)?;
    let transport = if fragment_offset != 0 {
        Transport::Fragment { protocol }
    } else {
        transport(protocol, &packet[header_len..], PROTO_ICMP)?
    };
    Ok(PacketInfo {
        src: Ipv4Addr::from(src).into(),
        dst: Ipv4Addr::from(dst).into(),
        transport,
        source_routed: v4_source_routed(&packet[20..header_len]),
    })
}

/// Whether IPv4 options ask for a source route; options that cannot be read count as one.
fn v4_source_routed(mut options: &[u8]) -> bool {
    while let Some(&kind) = options.first() {
        match kind {
            0 => return false,
            1 => options = &options[1..],
            OPTION_LSRR | OPTION_SSRR => return true,
            _ => {
                let Some(&len) = options.get(1) else {
                    return true;
                };
                let len = usize::from(len);
                if len < 2 || len > options.len() {
                    return true;
                }
                options = &options[len..];
            }
        }
    }
    false
}

fn parse_v6(packet: &[u8]) -> Result<PacketInfo, ParseError> {
    let payload_len = usize::from(u16_at(packet, 4)?);
    let end = 40usize.saturating_add(payload_len);
    if packet.len() < end {
        return Err(ParseError::Truncated);
    }
    let packet = &packet[..end];
    let src: [u8; 16] = array(packet, 8)?;
    let dst: [u8; 16] = array(packet, 24)?;
    let mut next = packet[6];
    let mut at = 40usize;
    let mut transport_kind = None;
    let mut source_routed = false;
    for _ in 0..MAX_EXTENSION_HEADERS {
        match next {
            // Hop-by-hop, routing, destination options: length in 8-octet units, not counting
            // the first 8.
            0 | 43 | 60 => {
                source_routed |= next == 43;
                let len = usize::from(*packet.get(at + 1).ok_or(ParseError::Truncated)?);
                next = packet[at];
                at = at.saturating_add((len + 1) * 8);
            }
            44 => {
                let header: [u8; 8] = array(packet, at)?;
                next = header[0];
                at += 8;
                let offset = u16::from_be_bytes([header[2], header[3]]) >> 3;
                if offset != 0 {
                    transport_kind = Some(Transport::Fragment { protocol: next });
                    break;
                }
            }
            // Authentication header: length in 4-octet units, minus 2.
            51 => {
                let len = usize::from(*packet.get(at + 1).ok_or(ParseError::Truncated)?);
                next = packet[at];
                at = at.saturating_add((len + 2) * 4);
            }
            protocol => {
                let rest = packet.get(at..).ok_or(ParseError::Truncated)?;
                transport_kind = Some(transport(protocol, rest, PROTO_ICMPV6)?);
                break;
            }
        }
    }
    let transport = transport_kind.ok_or(ParseError::TooManyExtensions)?;
    Ok(PacketInfo {
        src: Ipv6Addr::from(src).into(),
        dst: Ipv6Addr::from(dst).into(),
        transport,
        source_routed,
    })
}

/// The start of a packet quoted by an ICMP error (its length fields may exceed what is
/// quoted): addresses, protocol and ports when they are there.
fn quoted(bytes: &[u8]) -> Option<Quoted> {
    let first = *bytes.first()?;
    let (src, dst, protocol, rest): (IpAddr, IpAddr, u8, &[u8]) = match first >> 4 {
        4 => {
            let header_len = usize::from(first & 0x0f) * 4;
            if header_len < 20 {
                return None;
            }
            let src: [u8; 4] = array(bytes, 12).ok()?;
            let dst: [u8; 4] = array(bytes, 16).ok()?;
            let fragment_offset = u16_at(bytes, 6).ok()? & 0x1fff;
            let rest = if fragment_offset == 0 {
                bytes.get(header_len..).unwrap_or_default()
            } else {
                &[]
            };
            (
                Ipv4Addr::from(src).into(),
                Ipv4Addr::from(dst).into(),
                *bytes.get(9)?,
                rest,
            )
        }
        6 => {
            let src: [u8; 16] = array(bytes, 8).ok()?;
            let dst: [u8; 16] = array(bytes, 24).ok()?;
            // Extension headers in a quoted packet are not walked: its ports stay unknown.
            (
                Ipv6Addr::from(src).into(),
                Ipv6Addr::from(dst).into(),
                *bytes.get(6)?,
                bytes.get(40..)?,
            )
        }
        _ => return None,
    };
    let ports = match protocol {
        PROTO_TCP | PROTO_UDP => u16_at(rest, 0).ok().zip(u16_at(rest, 2).ok()),
        _ => None,
    };
    Some(Quoted {
        src,
        dst,
        protocol,
        src_port: ports.map(|p| p.0),
        dst_port: ports.map(|p| p.1),
    })
}

fn transport(protocol: u8, payload: &[u8], icmp: u8) -> Result<Transport, ParseError> {
    match protocol {
        PROTO_TCP | PROTO_UDP => {
            let src_port = u16_at(payload, 0)?;
            let dst_port = u16_at(payload, 2)?;
            Ok(if protocol == PROTO_TCP {
                Transport::Tcp { src_port, dst_port }
            } else {
                Transport::Udp { src_port, dst_port }
            })
        }
        p if p == icmp => {
            let header: [u8; 2] = array(payload, 0)?;
            let (kind, code) = (header[0], header[1]);
            let quoting = if icmp == PROTO_ICMP {
                &ICMP_QUOTING
            } else {
                &ICMPV6_QUOTING
            };
            if quoting.contains(&kind) {
                return Ok(Transport::IcmpError {
                    kind,
                    code,
                    quoted: payload.get(8..).and_then(quoted),
                });
            }
            Ok(Transport::Icmp { kind, code })
        }
        protocol => Ok(Transport::Other { protocol }),
    }
}

/// An ICMP "host unreachable" (ICMPv6 "address unreachable") for `packet`, from its
/// destination to its source, quoting it as RFC 792 and RFC 4443 ask (the IPv4 header and 8
/// bytes; IPv6: as much as fits in 1280 bytes). `None` for a packet that does not parse or is
/// itself an ICMP error (never answered, RFC 1122).
pub fn host_unreachable(packet: &[u8]) -> Option<Vec<u8>> {
    use etherparse::{icmpv4, icmpv6, Icmpv4Type, Icmpv6Type, PacketBuilder};
    const TTL: u8 = 64;
    const IPV6_MIN_MTU: usize = 1280;
    let info = parse(packet).ok()?;
    if matches!(info.transport, Transport::IcmpError { .. }) {
        return None;
    }
    let mut out = Vec::new();
    match (info.src, info.dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            let header_len = usize::from(packet.first()? & 0x0f) * 4;
            let quoted = packet.get(..(header_len + 8).min(packet.len()))?;
            PacketBuilder::ipv4(dst.octets(), src.octets(), TTL)
                .icmpv4(Icmpv4Type::DestinationUnreachable(
                    icmpv4::DestUnreachableHeader::Host,
                ))
                .write(&mut out, quoted)
                .ok()?;
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            let room = IPV6_MIN_MTU - 40 - 8;
            let quoted = packet.get(..room.min(packet.len()))?;
            PacketBuilder::ipv6(dst.octets(), src.octets(), TTL)
                .icmpv6(Icmpv6Type::DestinationUnreachable(
                    icmpv6::DestUnreachableCode::Address,
                ))
                .write(&mut out, quoted)
                .ok()?;
        }
        _ => return None,
    }
    Some(out)
}

/// Test and benchmark helpers: minimal well-formed packets.
pub mod build {
    use std::net::IpAddr;

    /// An IPv4 or IPv6 packet (both addresses of the same family) with `protocol` and
    /// `payload`; checksums are left zero (the decision never reads them).
    pub fn ip(src: IpAddr, dst: IpAddr, protocol: u8, payload: &[u8]) -> Vec<u8> {
        match (src, dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                let total = 20 + payload.len();
                let mut packet = vec![0u8; 20];
                packet[0] = 0x45;
                packet[2..4].copy_from_slice(&(total as u16).to_be_bytes());
                packet[8] = 64;
                packet[9] = protocol;
                packet[12..16].copy_from_slice(&src.octets());
                packet[16..20].copy_from_slice(&dst.octets());
                packet.extend_from_slice(payload);
                packet
            }
            (IpAddr::V6(src), IpAddr::V6(dst)) => {
                let mut packet = vec![0u8; 40];
                packet[0] = 0x60;
                packet[4..6].copy_from_slice(&(payload.len() as u16).to_be_bytes());
                packet[6] = protocol;
                packet[7] = 64;
                packet[8..24].copy_from_slice(&src.octets());
                packet[24..40].copy_from_slice(&dst.octets());
                packet.extend_from_slice(payload);
                packet
            }
            _ => Vec::new(),
        }
    }

    /// Eight bytes of a TCP or UDP header start: the ports, then zeros.
    pub fn ports(src_port: u16, dst_port: u16) -> Vec<u8> {
        let mut header = vec![0u8; 8];
        header[0..2].copy_from_slice(&src_port.to_be_bytes());
        header[2..4].copy_from_slice(&dst_port.to_be_bytes());
        header
    }
}

#[cfg(test)]
mod tests {
    use super::build::{ip, ports};
    use super::*;
    use proptest::prelude::*;

    fn v4(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn tcp_udp_icmp_over_v4_and_v6() {
        let tcp = ip(
            v4("100.64.0.1"),
            v4("10.0.0.5"),
            PROTO_TCP,
            &ports(40000, 443),
        );
        let info = parse(&tcp).unwrap();
        assert_eq!(info.src, v4("100.64.0.1"));
        assert_eq!(info.dst, v4("10.0.0.5"));
        assert_eq!(
            info.transport,
            Transport::Tcp {
                src_port: 40000,
                dst_port: 443
            }
        );
        let udp = ip(v4("fd00::1"), v4("fd00::2"), PROTO_UDP, &ports(5353, 53));
        assert_eq!(parse(&udp).unwrap().transport.dst_port(), Some(53));
        let echo = ip(v4("fd00::1"), v4("fd00::2"), PROTO_ICMPV6, &[128, 0, 0, 0]);
        assert_eq!(
            parse(&echo).unwrap().transport,
            Transport::Icmp { kind: 128, code: 0 }
        );
        let echo4 = ip(v4("1.1.1.1"), v4("2.2.2.2"), PROTO_ICMP, &[8, 0, 0, 0]);
        assert_eq!(
            parse(&echo4).unwrap().transport,
            Transport::Icmp { kind: 8, code: 0 }
        );
        let gre = ip(v4("1.1.1.1"), v4("2.2.2.2"), 47, &[]);
        assert_eq!(
            parse(&gre).unwrap().transport,
            Transport::Other { protocol: 47 }
        );
    }

    #[test]
    fn fragments_and_extension_headers() {
        let mut fragment = ip(v4("1.1.1.1"), v4("2.2.2.2"), PROTO_UDP, &[0; 16]);
        fragment[6..8].copy_from_slice(&100u16.to_be_bytes());
        assert_eq!(
            parse(&fragment).unwrap().transport,
            Transport::Fragment {
                protocol: PROTO_UDP
            }
        );
        // Hop-by-hop (8 bytes) then TCP.
        let mut payload = vec![PROTO_TCP, 0, 0, 0, 0, 0, 0, 0];
        payload.extend(ports(1, 22));
        let packet = ip(v4("fd00::1"), v4("fd00::2"), 0, &payload);
        assert_eq!(parse(&packet).unwrap().transport.dst_port(), Some(22));
        // Fragment header with a non-zero offset.
        let payload = [PROTO_TCP, 0, 0x01, 0x00, 0, 0, 0, 1];
        let packet = ip(v4("fd00::1"), v4("fd00::2"), 44, &payload);
        assert_eq!(
            parse(&packet).unwrap().transport,
            Transport::Fragment {
                protocol: PROTO_TCP
            }
        );
    }

    #[test]
    fn malformed_packets_are_refused() {
        assert_eq!(parse(&[]), Err(ParseError::Empty));
        assert_eq!(parse(&[0x50]), Err(ParseError::Version(5)));
        assert_eq!(parse(&[0x45, 0, 0]), Err(ParseError::Truncated));
        let mut short_ihl = ip(v4("1.1.1.1"), v4("2.2.2.2"), PROTO_TCP, &ports(1, 2));
        short_ihl[0] = 0x44;
        assert_eq!(parse(&short_ihl), Err(ParseError::HeaderLength));
        let tcp = ip(v4("1.1.1.1"), v4("2.2.2.2"), PROTO_TCP, &ports(1, 2));
        assert_eq!(parse(&tcp[..22]), Err(ParseError::Truncated));
        let tcp_no_ports = ip(v4("1.1.1.1"), v4("2.2.2.2"), PROTO_TCP, &[0, 1]);
        assert_eq!(parse(&tcp_no_ports), Err(ParseError::Truncated));
        let loop6 = ip(
            v4("fd00::1"),
            v4("fd00::2"),
            60,
            &[60, 0, 0, 0, 0, 0, 0, 0].repeat(9),
        );
        assert_eq!(parse(&loop6), Err(ParseError::TooManyExtensions));
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse(&bytes);
            let _ = addresses(&bytes);
        }

        #[test]
        fn never_panics_on_plausible_headers(
            version in prop_oneof![Just(0x45u8), Just(0x46u8), Just(0x60u8)],
            rest in proptest::collection::vec(any::<u8>(), 0..120),
        ) {
            let mut bytes = vec![version];
            bytes.extend(rest);
            let _ = parse(&bytes);
        }

        #[test]
        fn ports_round_trip(src in any::<u16>(), dst in any::<u16>(), v6 in any::<bool>()) {
            let (a, b) = if v6 { (v4("fd00::1"), v4("fd00::2")) } else { (v4("1.2.3.4"), v4("5.6.7.8")) };
            let info = parse(&ip(a, b, PROTO_UDP, &ports(src, dst))).unwrap();
            prop_assert_eq!(info.transport, Transport::Udp { src_port: src, dst_port: dst });
            prop_assert_eq!((info.src, info.dst), addresses(&ip(a, b, PROTO_UDP, &ports(src, dst))).unwrap());
        }
    }
}
