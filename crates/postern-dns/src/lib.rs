//! The client's stub resolver, sans-IO: a DNS query for a name that a DNS resource the client
//! may reach covers is answered here with **proxy addresses**; every other query goes to the
//! upstream resolvers unchanged (the resource list is not a blocklist).
//!
//! A proxy address stands for one name while the client runs: the same name always gets the
//! same IPv4 and IPv6 address (index `n` of the proxy ranges in both families), so connections
//! survive a re-resolution. The first packet to a proxy address tells the client which name and
//! resource it is for ([`StubResolver::proxy_target`]); the gateway resolves the real name.
//! Answers carry a short TTL, so that a withdrawn resource stops being answered soon.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{RData, Record, RecordType};
pub use postern_domain::dns::proxy_addresses;
use postern_domain::dns::{most_specific, proxy_index, NamePattern, PROXY_ADDRESSES};
use uuid::Uuid;

/// TTL of a locally answered record (seconds).
pub const ANSWER_TTL: u32 = 10;
/// Names that hold proxy addresses at once, by default (a bound, not a target: a client
/// reaching this many names answers SERVFAIL for new ones until it restarts).
pub const DEFAULT_MAX_NAMES: usize = 65_536;
/// The UDP payload size announced when a query carried EDNS (the DNS flag day's value).
const EDNS_PAYLOAD: u16 = 1232;

/// What to do with one query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Send these bytes back to the asker.
    Answer(Vec<u8>),
    /// Send the query as it is to the upstream resolvers, and their answer back.
    Forward,
    /// Not a DNS message: nothing to answer.
    Drop,
}

/// The name and resource a proxy address stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyTarget<'a> {
    pub name: &'a str,
    pub resource_id: Uuid,
    /// The name's proxy addresses in both families.
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
}

/// The DNS resources a client may reach, and the proxy addresses given out for their names.
#[derive(Debug)]
pub struct StubResolver {
    resources: Vec<(NamePattern, Uuid)>,
    /// Lowercased name without the final dot → its proxy index.
    indexes: HashMap<String, u32>,
    /// Proxy index → name, and the resource that covers it now (kept current by
    /// [`StubResolver::set_resources`], so that a packet's lookup matches no pattern).
    names: Vec<(String, Option<Uuid>)>,
    max_names: usize,
}

impl Default for StubResolver {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_NAMES)
    }
}

impl StubResolver {
    pub fn new(max_names: usize) -> Self {
        let room = usize::try_from(PROXY_ADDRESSES).unwrap_or(usize::MAX);
        Self {
            resources: Vec::new(),
            indexes: HashMap::new(),
            names: Vec::new(),
            max_names: max_names.min(room),
        }
    }

    /// The DNS resources the client may reach now, as `(resource id, address)`; an address that
    /// is not a valid pattern matches nothing. Proxy addresses already given out keep their
    /// names (a resource that comes back gets the same addresses).
    pub fn set_resources<'a>(&mut self, resources: impl IntoIterator<Item = (Uuid, &'a str)>) {
        self.resources = resources
            .into_iter()
            .filter_map(|(id, address)| NamePattern::parse(address).map(|p| (p, id)))
            .collect();
        let resources = &self.resources;
        for (name, resource) in &mut self.names {
            *resource = covering(resources, name);
        }
    }

    /// The resource that covers `name` now, the most specific one winning.
    pub fn resource_for(&self, name: &str) -> Option<Uuid> {
        covering(&self.resources, name)
    }

    /// The proxy addresses of `name` (lowercase, no final dot) when a reachable DNS resource
    /// covers it, given out now if it had none: what a query for it is answered with.
    pub fn resolve(&mut self, name: &str) -> Resolution {
        let Some(resource_id) = self.resource_for(name) else {
            return Resolution::NotCovered;
        };
        if let Some(index) = self.indexes.get(name) {
            let (ipv4, ipv6) = proxy_addresses(*index);
            return Resolution::Proxies { ipv4, ipv6 };
        }
        let Some(index) = u32::try_from(self.names.len())
            .ok()
            .filter(|_| self.names.len() < self.max_names)
        else {
            return Resolution::Full;
        };
        self.names.push((name.to_string(), Some(resource_id)));
        self.indexes.insert(name.to_string(), index);
        let (ipv4, ipv6) = proxy_addresses(index);
        Resolution::Proxies { ipv4, ipv6 }
    }

    /// Decides about one query (the payload of a UDP datagram or of a TCP message).
    pub fn handle_query(&mut self, query: &[u8]) -> Verdict {
        let request = match Message::from_vec(query) {
            Ok(request) => request,
            Err(_) => return format_error(query),
        };
        let standard = request.message_type() == MessageType::Query
            && request.op_code() == OpCode::Query
            && request.queries().len() == 1;
        let Some(question) = request.queries().first().filter(|_| standard) else {
            return Verdict::Forward;
        };
        let name = canonical(&question.name().to_ascii());
        let mut response = reply_to(&request);
        match self.resolve(&name) {
            Resolution::NotCovered => return Verdict::Forward,
            Resolution::Proxies { ipv4, ipv6 } => {
                let owner = question.name().clone();
                let wanted = question.query_type();
                if matches!(wanted, RecordType::A | RecordType::ANY) {
                    response.add_answer(Record::from_rdata(
                        owner.clone(),
                        ANSWER_TTL,
                        RData::A(A(ipv4)),
                    ));
                }
                if matches!(wanted, RecordType::AAAA | RecordType::ANY) {
                    response.add_answer(Record::from_rdata(
                        owner,
                        ANSWER_TTL,
                        RData::AAAA(AAAA(ipv6)),
                    ));
                }
                // Any other type: no data (NOERROR, no answer), the name exists.
            }
            Resolution::Full => {
                response.set_response_code(ResponseCode::ServFail);
            }
        }
        encoded(&response)
    }

    /// The name and resource behind a proxy address; `None` for any other address, and for a
    /// name no resource the client may reach covers any more.
    pub fn proxy_target(&self, address: IpAddr) -> Option<ProxyTarget<'_>> {
        let index = proxy_index(address)?;
        let (name, resource_id) = self.names.get(usize::try_from(index).ok()?)?;
        let resource_id = (*resource_id)?;
        let (ipv4, ipv6) = proxy_addresses(index);
        Some(ProxyTarget {
            name,
            resource_id,
            ipv4,
            ipv6,
        })
    }

    /// How many names hold proxy addresses.
    pub fn name_count(&self) -> usize {
        self.names.len()
    }

    /// Every name with its proxy addresses, for the client's status.
    pub fn proxies(&self) -> impl Iterator<Item = (&str, Ipv4Addr, Ipv6Addr)> {
        self.names.iter().zip(0u32..).map(|((name, _), index)| {
            let (ipv4, ipv6) = proxy_addresses(index);
            (name.as_str(), ipv4, ipv6)
        })
    }
}

/// What a name resolves to at the stub resolver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// No DNS resource the client may reach covers it: ask the upstream resolvers.
    NotCovered,
    /// The name's proxy addresses.
    Proxies { ipv4: Ipv4Addr, ipv6: Ipv6Addr },
    /// Covered, but every proxy address is taken (the bound was reached).
    Full,
}

fn covering(resources: &[(NamePattern, Uuid)], name: &str) -> Option<Uuid> {
    most_specific(resources.iter().map(|(p, id)| (p, *id)), name, |id| *id)
}

/// Lowercase, without the final dot: how names are compared and kept.
fn canonical(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// A response to `request`: its id, question and recursion flag, EDNS when it had EDNS.
fn reply_to(request: &Message) -> Message {
    let mut response = Message::new();
    response
        .set_id(request.id())
        .set_message_type(MessageType::Response)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(request.recursion_desired())
        .set_recursion_available(true)
        .set_response_code(ResponseCode::NoError)
        .add_queries(request.queries().iter().cloned());
    if request.extensions().is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_PAYLOAD);
        response.set_edns(edns);
    }
    response
}

/// A SERVFAIL answer to `query` (its id and question), for a query that could not be
/// forwarded; `None` when it does not parse.
pub fn server_failure(query: &[u8]) -> Option<Vec<u8>> {
    let request = Message::from_vec(query).ok()?;
    let mut response = reply_to(&request);
    response.set_response_code(ResponseCode::ServFail);
    response.to_vec().ok()
}

/// FORMERR for a message that does not parse but has an id to answer to.
fn format_error(query: &[u8]) -> Verdict {
    let Some(id) = query.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]])) else {
        return Verdict::Drop;
    };
    if query.len() < 12 {
        return Verdict::Drop;
    }
    let mut response = Message::new();
    response
        .set_id(id)
        .set_message_type(MessageType::Response)
        .set_response_code(ResponseCode::FormErr);
    encoded(&response)
}

fn encoded(response: &Message) -> Verdict {
    match response.to_vec() {
        Ok(bytes) => Verdict::Answer(bytes),
        Err(_) => Verdict::Drop,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;
    use proptest::prelude::*;

    const APP: Uuid = Uuid::from_u128(1);
    const SVC: Uuid = Uuid::from_u128(2);

    fn resolver() -> StubResolver {
        let mut resolver = StubResolver::default();
        resolver.set_resources([(APP, "app.internal.test"), (SVC, "*.svc.internal.test")]);
        resolver
    }

    fn query(name: &str, kind: RecordType, edns: bool) -> Vec<u8> {
        let mut message = Message::new();
        message
            .set_id(4242)
            .set_recursion_desired(true)
            .add_query(Query::query(Name::from_ascii(name).unwrap(), kind));
        if edns {
            message.set_edns(Edns::new());
        }
        message.to_vec().unwrap()
    }

    fn answer(verdict: Verdict) -> Message {
        match verdict {
            Verdict::Answer(bytes) => Message::from_vec(&bytes).unwrap(),
            other => panic!("not answered: {other:?}"),
        }
    }

    fn addresses(message: &Message) -> Vec<IpAddr> {
        message
            .answers()
            .iter()
            .filter_map(|record| match record.data() {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_resource_name_is_answered_with_stable_proxy_addresses_in_both_families() {
        let mut resolver = resolver();
        let a = answer(resolver.handle_query(&query("app.internal.test.", RecordType::A, false)));
        assert_eq!(a.id(), 4242);
        assert_eq!(a.response_code(), ResponseCode::NoError);
        assert!(a.recursion_desired() && a.recursion_available());
        assert_eq!(a.answers()[0].ttl(), ANSWER_TTL);
        let aaaa =
            answer(resolver.handle_query(&query("APP.internal.test.", RecordType::AAAA, true)));
        assert!(aaaa.extensions().is_some(), "EDNS is kept");
        let (ipv4, ipv6) = proxy_addresses(0);
        assert_eq!(addresses(&a), vec![IpAddr::V4(ipv4)]);
        assert_eq!(addresses(&aaaa), vec![IpAddr::V6(ipv6)]);
        assert_eq!(ipv4, Ipv4Addr::new(198, 18, 1, 0));

        let db =
            answer(resolver.handle_query(&query("db.svc.internal.test.", RecordType::A, false)));
        let again =
            answer(resolver.handle_query(&query("app.internal.test.", RecordType::A, false)));
        assert_eq!(addresses(&db), vec![IpAddr::V4(proxy_addresses(1).0)]);
        assert_eq!(
            addresses(&again),
            addresses(&a),
            "stable while the client runs"
        );
    }

    #[test]
    fn other_names_and_deeper_names_go_upstream() {
        let mut resolver = resolver();
        for name in ["example.com.", "a.b.svc.internal.test.", "internal.test."] {
            assert_eq!(
                resolver.handle_query(&query(name, RecordType::A, false)),
                Verdict::Forward,
                "{name}"
            );
        }
    }

    #[test]
    fn other_record_types_of_a_resource_name_have_no_data() {
        let mut resolver = resolver();
        let mx = answer(resolver.handle_query(&query("app.internal.test.", RecordType::MX, false)));
        assert_eq!(mx.response_code(), ResponseCode::NoError);
        assert!(mx.answers().is_empty());
    }

    #[test]
    fn a_proxy_address_leads_back_to_its_name_and_resource_while_it_is_reachable() {
        let mut resolver = resolver();
        let a =
            answer(resolver.handle_query(&query("db.svc.internal.test.", RecordType::AAAA, false)));
        let address = addresses(&a)[0];
        let target = resolver.proxy_target(address).unwrap();
        assert_eq!(
            (target.name, target.resource_id),
            ("db.svc.internal.test", SVC)
        );
        assert_eq!(
            resolver
                .proxy_target(IpAddr::V4(proxy_addresses(0).0))
                .unwrap()
                .name,
            "db.svc.internal.test"
        );

        resolver.set_resources([(APP, "app.internal.test")]);
        assert_eq!(resolver.proxy_target(address), None, "withdrawn");
        assert_eq!(
            resolver.handle_query(&query("db.svc.internal.test.", RecordType::A, false)),
            Verdict::Forward
        );
        resolver.set_resources([(SVC, "*.svc.internal.test")]);
        assert_eq!(
            resolver.proxy_target(address).unwrap().resource_id,
            SVC,
            "same address"
        );

        for outside in [
            "198.18.0.53",
            "198.20.0.1",
            "10.0.0.1",
            "fd70:6f73:7465:726e::1",
        ] {
            assert_eq!(
                resolver.proxy_target(outside.parse().unwrap()),
                None,
                "{outside}"
            );
        }
    }

    #[test]
    fn names_past_the_bound_get_servfail() {
        let mut resolver = StubResolver::new(1);
        resolver.set_resources([(SVC, "**.internal.test")]);
        answer(resolver.handle_query(&query("a.internal.test.", RecordType::A, false)));
        let full = answer(resolver.handle_query(&query("b.internal.test.", RecordType::A, false)));
        assert_eq!(full.response_code(), ResponseCode::ServFail);
        assert_eq!(resolver.proxies().count(), 1);
    }

    #[test]
    fn a_query_that_cannot_be_forwarded_gets_servfail_with_its_id_and_question() {
        let failed = server_failure(&query("example.com.", RecordType::A, true)).unwrap();
        let failed = Message::from_vec(&failed).unwrap();
        assert_eq!(failed.id(), 4242);
        assert_eq!(failed.response_code(), ResponseCode::ServFail);
        assert_eq!(failed.queries().len(), 1);
        assert_eq!(server_failure(&[1, 2, 3]), None);
    }

    #[test]
    fn garbage_gets_formerr_or_nothing() {
        let mut resolver = resolver();
        assert_eq!(resolver.handle_query(&[1]), Verdict::Drop);
        let mut bad = query("app.internal.test.", RecordType::A, false);
        bad.truncate(15);
        let reply = answer(resolver.handle_query(&bad));
        assert_eq!(
            (reply.id(), reply.response_code()),
            (4242, ResponseCode::FormErr)
        );
    }

    proptest! {
        #[test]
        fn no_datagram_panics_the_resolver(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
            let mut resolver = resolver();
            let _ = resolver.handle_query(&bytes);
        }
    }
}
