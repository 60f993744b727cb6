//! The gateway's side of DNS resources. A client reaches a name through proxy addresses its
//! stub resolver chose; the gateway resolves the name itself (the site's DNS, or
//! `--dns-server`) and translates the proxy address to a real one with nftables DNAT, keyed by
//! client and proxy address (conntrack keeps each flow's translation, so a connection outlives
//! a change of address). Names are resolved again when their records' TTL ends.
//!
//! [`DnsNat`] is the decision core, sans-IO: authorizations and resolutions in, the map
//! elements to add and delete out. [`run`] is its shell: the resolver, the clock and `nft`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::TokioResolver;
use postern_dataplane::translations::{Translation as ProxyState, TranslationChange};
use postern_device::net;
use postern_protocol::Authorization;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::plan::{PlanBatch, PlanReceiver};

/// A name is looked up again no sooner than this after its last lookup (TTL 0 included).
const MIN_REFRESH: Duration = Duration::from_secs(2);
/// …and no later than this, whatever its TTL.
const MAX_REFRESH: Duration = Duration::from_secs(300);
/// After a lookup failed for a reason other than the name not existing.
const RETRY: Duration = Duration::from_secs(5);
/// Lookups in flight at once.
const MAX_LOOKUPS: usize = 32;

/// One DNAT entry: packets from `client` to `proxy` go to `real`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Translation {
    pub client: IpAddr,
    pub proxy: IpAddr,
    pub real: IpAddr,
}

/// What a lookup of a name found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The name's addresses (either family may be empty), valid until then.
    Found {
        addresses: Vec<IpAddr>,
        valid_until: Instant,
    },
    /// The name does not exist or has no address records.
    NoAddress,
    /// The resolver did not answer (timeout, refused): try again soon, keep what was known.
    Failed(String),
}

#[derive(Debug, Default)]
struct Name {
    /// Sorted: the first of each family is the one used, the same on every lookup.
    addresses: Vec<IpAddr>,
    resolved: bool,
    due: Option<Instant>,
    in_flight: bool,
}

/// The translations wanted for the authorizations in force, and those applied.
#[derive(Debug, Default)]
pub struct DnsNat {
    /// Authorization id → (client address, proxy address, name) entries.
    wanted: HashMap<Uuid, Vec<(IpAddr, IpAddr, String)>>,
    names: BTreeMap<String, Name>,
    applied: HashMap<(IpAddr, IpAddr), IpAddr>,
    /// What the data plane was last told of each (client, proxy address).
    published: HashMap<(IpAddr, IpAddr), ProxyState>,
}

/// Map elements to change, in one transaction.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct NatChanges {
    pub delete: Vec<Translation>,
    pub add: Vec<Translation>,
}

impl NatChanges {
    pub fn is_empty(&self) -> bool {
        self.delete.is_empty() && self.add.is_empty()
    }
}

impl DnsNat {
    /// Takes in a batch of authorization changes.
    pub fn handle_plan(&mut self, batch: &PlanBatch, now: Instant) {
        if batch.reset {
            self.wanted.retain(|id, _| batch.changes.contains_key(id));
        }
        for (id, change) in &batch.changes {
            match change.as_ref().map(entries) {
                Some(list) if !list.is_empty() => {
                    self.wanted.insert(*id, list);
                }
                _ => {
                    self.wanted.remove(id);
                }
            }
        }
        let used: HashSet<&str> = self
            .wanted
            .values()
            .flatten()
            .map(|(_, _, name)| name.as_str())
            .collect();
        self.names.retain(|name, _| used.contains(name.as_str()));
        for name in used {
            if !self.names.contains_key(name) {
                let entry = Name {
                    due: Some(now),
                    ..Name::default()
                };
                self.names.insert(name.to_string(), entry);
            }
        }
    }

    /// Names to look up now (each is marked in flight until its [`Self::handle_lookup`]).
    pub fn poll_lookups(&mut self, now: Instant, room: usize) -> Vec<String> {
        let mut due = Vec::new();
        for (name, entry) in &mut self.names {
            if due.len() >= room {
                break;
            }
            if !entry.in_flight && entry.due.is_some_and(|at| at <= now) {
                entry.in_flight = true;
                due.push(name.clone());
            }
        }
        due
    }

    pub fn handle_lookup(&mut self, name: &str, lookup: Lookup, now: Instant) {
        let Some(entry) = self.names.get_mut(name) else {
            return;
        };
        entry.in_flight = false;
        match lookup {
            Lookup::Found {
                mut addresses,
                valid_until,
            } => {
                addresses.retain(|ip| {
                    let refused = postern_domain::validate::forbidden_destination(*ip);
                    if let Some(why) = refused {
                        warn!("{name} resolves to {ip}, which is {why}: not used");
                    }
                    refused.is_none()
                });
                addresses.sort();
                if entry.resolved && entry.addresses != addresses {
                    info!("{name} now resolves to {}", list(&addresses));
                }
                if !entry.resolved {
                    debug!("{name} resolves to {}", list(&addresses));
                }
                entry.addresses = addresses;
                entry.resolved = true;
                let refresh = valid_until
                    .saturating_duration_since(now)
                    .clamp(MIN_REFRESH, MAX_REFRESH);
                entry.due = Some(now + refresh);
            }
            Lookup::NoAddress => {
                if !entry.resolved || !entry.addresses.is_empty() {
                    warn!("{name} does not resolve at this gateway: clients cannot reach it");
                }
                entry.addresses.clear();
                entry.resolved = true;
                entry.due = Some(now + RETRY);
            }
            Lookup::Failed(why) => {
                warn!("looking up {name} failed: {why}");
                entry.due = Some(now + RETRY);
            }
        }
    }

    /// When the next lookup is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.names
            .values()
            .filter(|n| !n.in_flight)
            .filter_map(|n| n.due)
            .min()
    }

    /// The map elements to change so that the applied table is the wanted one; they count
    /// as applied from now on (after a failure, [`Self::forget_applied`]).
    pub fn poll_changes(&mut self) -> NatChanges {
        let mut target: HashMap<(IpAddr, IpAddr), IpAddr> = HashMap::new();
        for (client, proxy, name) in self.wanted.values().flatten() {
            let real = self.names.get(name).and_then(|entry| {
                entry
                    .addresses
                    .iter()
                    .find(|ip| ip.is_ipv4() == proxy.is_ipv4())
            });
            if let Some(real) = real {
                target.insert((*client, *proxy), *real);
            }
        }
        let mut changes = NatChanges::default();
        for (&(client, proxy), &real) in &self.applied {
            if target.get(&(client, proxy)) != Some(&real) {
                changes.delete.push(Translation {
                    client,
                    proxy,
                    real,
                });
            }
        }
        for (&(client, proxy), &real) in &target {
            if self.applied.get(&(client, proxy)) != Some(&real) {
                changes.add.push(Translation {
                    client,
                    proxy,
                    real,
                });
            }
        }
        changes.delete.sort();
        changes.add.sort();
        self.applied = target;
        changes
    }

    /// What the data plane must learn: pairs translated now (their packets may go), pairs
    /// whose name has no address of their family (answered "unreachable"), and pairs no longer
    /// either. Call after the changes of [`Self::poll_changes`] were applied.
    pub fn poll_states(&mut self) -> Vec<TranslationChange> {
        let mut current: HashMap<(IpAddr, IpAddr), ProxyState> = self
            .applied
            .keys()
            .map(|pair| (*pair, ProxyState::Ready))
            .collect();
        for (client, proxy, name) in self.wanted.values().flatten() {
            let unresolvable = self.names.get(name).is_some_and(|entry| {
                entry.resolved
                    && !entry
                        .addresses
                        .iter()
                        .any(|ip| ip.is_ipv4() == proxy.is_ipv4())
            });
            if unresolvable {
                current
                    .entry((*client, *proxy))
                    .or_insert(ProxyState::Unresolvable);
            }
        }
        let mut changes: Vec<TranslationChange> = Vec::new();
        for (pair, state) in &current {
            if self.published.get(pair) != Some(state) {
                changes.push((*pair, Some(*state)));
            }
        }
        for pair in self.published.keys() {
            if !current.contains_key(pair) {
                changes.push((*pair, None));
            }
        }
        changes.sort();
        self.published = current;
        changes
    }

    /// Applying failed: the next [`Self::poll_changes`] starts from an empty table (the shell
    /// flushes the maps first).
    pub fn forget_applied(&mut self) {
        self.applied.clear();
    }

    pub fn names(&self) -> usize {
        self.names.len()
    }
}

/// The (client, proxy, name) entries of an authorization, in both families.
fn entries(authorization: &Authorization) -> Vec<(IpAddr, IpAddr, String)> {
    let client = authorization.client_addresses;
    authorization
        .covered_targets()
        .flat_map(|target| {
            [
                (
                    IpAddr::V4(client.ipv4),
                    IpAddr::V4(target.proxy_ipv4),
                    target.name.clone(),
                ),
                (
                    IpAddr::V6(client.ipv6),
                    IpAddr::V6(target.proxy_ipv6),
                    target.name.clone(),
                ),
            ]
        })
        .collect()
}

fn list(addresses: &[IpAddr]) -> String {
    if addresses.is_empty() {
        return "no address".to_string();
    }
    addresses
        .iter()
        .map(IpAddr::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The resolver: the system's (`/etc/resolv.conf`), or the servers given.
pub fn resolver(servers: &[SocketAddr]) -> Result<TokioResolver, String> {
    let provider = TokioConnectionProvider::default();
    let mut builder = if servers.is_empty() {
        TokioResolver::builder(provider)
            .map_err(|err| format!("cannot read the system's resolver configuration: {err}"))?
    } else {
        let mut group = NameServerConfigGroup::new();
        for server in servers {
            group.merge(NameServerConfigGroup::from_ips_clear(
                &[server.ip()],
                server.port(),
                true,
            ));
        }
        TokioResolver::builder_with_config(
            ResolverConfig::from_parts(None, vec![], group),
            provider,
        )
    };
    let options = builder.options_mut();
    // Names arrive absolute; a search list must not turn db.internal into db.internal.corp.
    options.ndots = 0;
    options.timeout = Duration::from_secs(2);
    options.attempts = 2;
    Ok(builder.build())
}

async fn look_up(resolver: TokioResolver, name: String) -> (String, Lookup) {
    let absolute = format!("{name}.");
    let (v4, v6) = tokio::join!(
        resolver.ipv4_lookup(absolute.as_str()),
        resolver.ipv6_lookup(absolute.as_str())
    );
    let mut addresses = Vec::new();
    let mut valid_until: Option<Instant> = None;
    let mut failure = None;
    let mut until = |at: Instant| valid_until = Some(valid_until.map_or(at, |v| v.min(at)));
    match v4 {
        Ok(found) => {
            until(found.valid_until());
            addresses.extend(found.iter().map(|a| IpAddr::V4(a.0)));
        }
        Err(err) if err.is_no_records_found() => {}
        Err(err) => failure = Some(err.to_string()),
    }
    match v6 {
        Ok(found) => {
            until(found.valid_until());
            addresses.extend(found.iter().map(|a| IpAddr::V6(a.0)));
        }
        Err(err) if err.is_no_records_found() => {}
        Err(err) => failure = failure.or(Some(err.to_string())),
    }
    let lookup = match (addresses.is_empty(), failure) {
        (false, _) => Lookup::Found {
            addresses,
            valid_until: valid_until.unwrap_or_else(Instant::now),
        },
        (true, Some(why)) => Lookup::Failed(why),
        (true, None) => Lookup::NoAddress,
    };
    (name, lookup)
}

/// The nftables statements for `changes` in table `table` (maps `dns4` and `dns6`).
pub fn nft_script(table: &str, changes: &NatChanges, flush_first: bool) -> String {
    let mut script = String::new();
    if flush_first {
        script.push_str(&format!(
            "flush map inet {table} dns4\nflush map inet {table} dns6\n"
        ));
    }
    let map = |t: &Translation| if t.proxy.is_ipv4() { "dns4" } else { "dns6" };
    for t in &changes.delete {
        script.push_str(&format!(
            "delete element inet {table} {} {{ {} . {} }}\n",
            map(t),
            t.client,
            t.proxy
        ));
    }
    for t in &changes.add {
        script.push_str(&format!(
            "add element inet {table} {} {{ {} . {} : {} }}\n",
            map(t),
            t.client,
            t.proxy,
            t.real
        ));
    }
    script
}

/// Keeps the DNAT maps of `table` in line with the authorizations until the plan closes, and
/// tells the data plane which proxy addresses are translated (`states`).
pub async fn run(
    resolver: TokioResolver,
    mut plans: PlanReceiver,
    table: String,
    states: mpsc::Sender<Vec<TranslationChange>>,
) {
    let mut nat = DnsNat::default();
    let mut lookups: JoinSet<(String, Lookup)> = JoinSet::new();
    let mut flush_first = false;
    loop {
        let now = Instant::now();
        for name in nat.poll_lookups(now, MAX_LOOKUPS.saturating_sub(lookups.len())) {
            lookups.spawn(look_up(resolver.clone(), name));
        }
        let changes = nat.poll_changes();
        if !changes.is_empty() || flush_first {
            let script = nft_script(&table, &changes, flush_first);
            match net::run_with_input("nft", &["-f", "-"], Some(&script)).await {
                Ok(()) => flush_first = false,
                Err(err) => {
                    warn!("cannot update the DNS translations: {err}");
                    nat.forget_applied();
                    flush_first = true;
                }
            }
        }
        let changed = nat.poll_states();
        if !changed.is_empty() && states.send(changed).await.is_err() {
            break;
        }
        let mut wake = nat.poll_timeout().unwrap_or(now + MAX_REFRESH).max(now);
        if flush_first {
            wake = wake.min(now + RETRY);
        }
        tokio::select! {
            batch = plans.next() => {
                let Some(batch) = batch else { break };
                nat.handle_plan(&batch, Instant::now());
            }
            Some(done) = lookups.join_next(), if !lookups.is_empty() => {
                if let Ok((name, lookup)) = done {
                    nat.handle_lookup(&name, lookup, Instant::now());
                }
            }
            () = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {}
        }
    }
    debug!(names = nat.names(), "DNS translation stopped");
}

#[cfg(test)]
mod tests {
    use super::*;
    use postern_protocol::{DnsTarget, TunnelAddresses};

    fn authorization(id: u128, names: &[(&str, u8)]) -> Authorization {
        let mut authorization = crate::plan::tests::authorization(id);
        authorization.client_addresses = TunnelAddresses {
            ipv4: format!("100.64.0.{id}").parse().unwrap(),
            ipv6: format!("fd70:6f73:7465:726e::{id}").parse().unwrap(),
        };
        authorization.resource.resource_type = "dns".into();
        authorization.resource.address = "*.svc.internal.test".into();
        authorization.dns = names
            .iter()
            .map(|(name, index)| DnsTarget {
                name: (*name).into(),
                proxy_ipv4: format!("198.18.1.{index}").parse().unwrap(),
                proxy_ipv6: format!("fd70:6f73:7465:726f::1{index:02}").parse().unwrap(),
            })
            .collect();
        authorization
    }

    fn batch(authorizations: Vec<Authorization>) -> PlanBatch {
        PlanBatch {
            reset: false,
            changes: authorizations
                .into_iter()
                .map(|a| (a.id, Some(a)))
                .collect(),
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn the_data_plane_learns_which_proxy_addresses_are_translated_and_which_cannot_be() {
        let t0 = Instant::now();
        let mut nat = DnsNat::default();
        nat.handle_plan(
            &batch(vec![authorization(
                1,
                &[("db.svc.internal.test", 0), ("v6.svc.internal.test", 1)],
            )]),
            t0,
        );
        assert!(
            nat.poll_states().is_empty(),
            "nothing resolved: packets wait"
        );
        nat.poll_lookups(t0, 10);
        nat.handle_lookup(
            "db.svc.internal.test",
            Lookup::Found {
                addresses: vec![ip("10.0.0.5")],
                valid_until: t0 + Duration::from_secs(30),
            },
            t0,
        );
        nat.handle_lookup(
            "v6.svc.internal.test",
            Lookup::Found {
                addresses: vec![ip("fd00::6")],
                valid_until: t0 + Duration::from_secs(30),
            },
            t0,
        );
        nat.poll_changes();
        let client4 = ip("100.64.0.1");
        let client6 = ip("fd70:6f73:7465:726e::1");
        assert_eq!(
            nat.poll_states(),
            vec![
                ((client4, ip("198.18.1.0")), Some(ProxyState::Ready)),
                ((client4, ip("198.18.1.1")), Some(ProxyState::Unresolvable)),
                (
                    (client6, ip("fd70:6f73:7465:726f::100")),
                    Some(ProxyState::Unresolvable)
                ),
                (
                    (client6, ip("fd70:6f73:7465:726f::101")),
                    Some(ProxyState::Ready)
                ),
            ],
            "a name with no address of a family is unreachable in that family"
        );
        assert!(nat.poll_states().is_empty(), "told once");

        nat.handle_plan(
            &PlanBatch {
                reset: false,
                changes: [(Uuid::from_u128(1), None)].into_iter().collect(),
            },
            t0,
        );
        nat.poll_changes();
        let gone = nat.poll_states();
        assert_eq!(gone.len(), 4);
        assert!(gone.iter().all(|(_, state)| state.is_none()));
    }

    #[test]
    fn names_are_resolved_once_translated_per_client_and_re_resolved_after_their_ttl() {
        let t0 = Instant::now();
        let mut nat = DnsNat::default();
        nat.handle_plan(
            &batch(vec![
                authorization(1, &[("db.svc.internal.test", 0)]),
                authorization(2, &[("db.svc.internal.test", 7), ("evil.example.com", 8)]),
            ]),
            t0,
        );
        assert_eq!(nat.poll_lookups(t0, 10), vec!["db.svc.internal.test"]);
        assert!(nat.poll_lookups(t0, 10).is_empty(), "in flight");
        assert!(nat.poll_changes().is_empty(), "nothing known yet");

        nat.handle_lookup(
            "db.svc.internal.test",
            Lookup::Found {
                addresses: vec![ip("10.0.0.9"), ip("10.0.0.5"), ip("fd00::5")],
                valid_until: t0 + Duration::from_secs(30),
            },
            t0,
        );
        let changes = nat.poll_changes();
        assert!(changes.delete.is_empty());
        let added: Vec<(IpAddr, IpAddr, IpAddr)> = changes
            .add
            .iter()
            .map(|t| (t.client, t.proxy, t.real))
            .collect();
        assert_eq!(
            added,
            vec![
                (ip("100.64.0.1"), ip("198.18.1.0"), ip("10.0.0.5")),
                (ip("100.64.0.2"), ip("198.18.1.7"), ip("10.0.0.5")),
                (
                    ip("fd70:6f73:7465:726e::1"),
                    ip("fd70:6f73:7465:726f::100"),
                    ip("fd00::5")
                ),
                (
                    ip("fd70:6f73:7465:726e::2"),
                    ip("fd70:6f73:7465:726f::107"),
                    ip("fd00::5")
                ),
            ],
            "the lowest address of each family, per client and proxy; a name outside the \
             pattern is never resolved"
        );
        assert!(nat.poll_changes().is_empty());
        assert_eq!(nat.poll_timeout(), Some(t0 + Duration::from_secs(30)));

        // The record moves: the translation follows.
        let t1 = t0 + Duration::from_secs(30);
        assert_eq!(nat.poll_lookups(t1, 10).len(), 1);
        nat.handle_lookup(
            "db.svc.internal.test",
            Lookup::Found {
                addresses: vec![ip("10.0.0.6")],
                valid_until: t1,
            },
            t1,
        );
        let changes = nat.poll_changes();
        assert_eq!(changes.delete.len(), 4);
        assert_eq!(changes.add.len(), 2, "no IPv6 address any more");
        assert!(changes.add.iter().all(|t| t.real == ip("10.0.0.6")));
        assert_eq!(
            nat.poll_timeout(),
            Some(t1 + MIN_REFRESH),
            "TTL 0 is clamped"
        );

        // Removing the authorization removes its translations.
        nat.handle_plan(
            &PlanBatch {
                reset: false,
                changes: [(Uuid::from_u128(1), None)].into_iter().collect(),
            },
            t1,
        );
        let changes = nat.poll_changes();
        assert_eq!(changes.delete.len(), 1);
        assert_eq!(changes.delete[0].client, ip("100.64.0.1"));
    }

    #[test]
    fn forbidden_and_vanished_addresses_are_not_translated() {
        let t0 = Instant::now();
        let mut nat = DnsNat::default();
        nat.handle_plan(
            &batch(vec![authorization(1, &[("a.svc.internal.test", 0)])]),
            t0,
        );
        nat.poll_lookups(t0, 10);
        nat.handle_lookup(
            "a.svc.internal.test",
            Lookup::Found {
                addresses: vec![ip("169.254.169.254"), ip("127.0.0.1")],
                valid_until: t0,
            },
            t0,
        );
        assert!(nat.poll_changes().is_empty());

        let t1 = t0 + MIN_REFRESH;
        nat.poll_lookups(t1, 10);
        nat.handle_lookup(
            "a.svc.internal.test",
            Lookup::Found {
                addresses: vec![ip("10.1.1.1")],
                valid_until: t1,
            },
            t1,
        );
        assert_eq!(nat.poll_changes().add.len(), 1);
        // A failed lookup keeps what was known; a name that stops existing loses it.
        let t2 = t1 + MIN_REFRESH;
        nat.poll_lookups(t2, 10);
        nat.handle_lookup("a.svc.internal.test", Lookup::Failed("timeout".into()), t2);
        assert!(nat.poll_changes().is_empty());
        let t3 = t2 + RETRY;
        nat.poll_lookups(t3, 10);
        nat.handle_lookup("a.svc.internal.test", Lookup::NoAddress, t3);
        assert_eq!(nat.poll_changes().delete.len(), 1);
    }

    #[test]
    fn the_script_names_both_maps() {
        let changes = NatChanges {
            delete: vec![Translation {
                client: ip("100.64.0.1"),
                proxy: ip("198.18.1.0"),
                real: ip("10.0.0.5"),
            }],
            add: vec![Translation {
                client: ip("fd70:6f73:7465:726e::1"),
                proxy: ip("fd70:6f73:7465:726f::100"),
                real: ip("fd00::5"),
            }],
        };
        assert_eq!(
            nft_script("postern_gw", &changes, false),
            "delete element inet postern_gw dns4 { 100.64.0.1 . 198.18.1.0 }\n\
             add element inet postern_gw dns6 { fd70:6f73:7465:726e::1 . fd70:6f73:7465:726f::100 : fd00::5 }\n"
        );
    }
}
