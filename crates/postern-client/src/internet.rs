//! The full tunnel, for a client started with `--internet` while a policy grants it the
//! account's Internet resource: every packet without a more specific way goes into the TUN,
//! where the router sends it to the Internet resource's gateway.
//!
//! Policy routing, as wg-quick does it, so the main table stays as it was:
//!
//! ```text
//! 7070: to PORTAL-OR-GATEWAY-ADDRESS lookup main   (one per address: they stay outside)
//! 7071: lookup main suppress_prefixlength 0        (every route but the default: the LAN,
//!                                                   resources, proxies; not with --internet-include-lan)
//! 7072: not fwmark 0x7073 lookup 7073              (the rest; the client's own WireGuard
//!                                                   datagrams carry the mark and go the usual way)
//! table 7073: default dev postern0
//! ```
//!
//! Removing the rules and the table restores the routing. After a crash the TUN is gone and
//! with it table 7073's route, so the rules lead nowhere and lookups fall through to main; the
//! next start clears them first.

use std::collections::BTreeSet;
use std::net::IpAddr;

use postern_device::net;
use tracing::{info, warn};

/// The mark of the client's own UDP socket, and the number of its routing table ("ps").
pub const MARK: u32 = 0x7073;
const TABLE: &str = "7073";
const PREF_EXCLUDED: u32 = 7070;
const PREF_SUPPRESS: u32 = 7071;
const PREF_TUNNEL: u32 = 7072;

/// What the full tunnel routes around, and whether it is on.
#[derive(Debug)]
pub struct FullTunnel {
    tun_name: String,
    include_lan: bool,
    /// The rules and routes are in place.
    on: bool,
    excluded: BTreeSet<IpAddr>,
}

impl FullTunnel {
    /// Clears what a previous run may have left.
    pub async fn new(tun_name: &str, include_lan: bool) -> Self {
        let tunnel = Self {
            tun_name: tun_name.to_string(),
            include_lan,
            on: false,
            excluded: BTreeSet::new(),
        };
        tunnel.remove_all().await;
        tunnel
    }

    /// Turns the full tunnel on or off, routing `excluded` (the portal's and the gateways'
    /// addresses) outside it.
    pub async fn set(&mut self, on: bool, excluded: BTreeSet<IpAddr>) {
        if !on {
            if self.on {
                self.remove_all().await;
                self.excluded.clear();
                self.on = false;
                info!("full tunnel off: the Internet resource is no longer granted");
            }
            return;
        }
        if !self.on {
            for command in tunnel_commands(&self.tun_name, self.include_lan) {
                if let Err(err) = ip(&command).await {
                    let ipv6 = command.first().is_some_and(|f| f == "-6");
                    if ipv6 {
                        warn!("the full tunnel does not carry IPv6: {err}");
                        continue;
                    }
                    warn!("cannot turn the full tunnel on: {err}");
                    self.remove_all().await;
                    return;
                }
            }
            self.on = true;
            info!(
                "full tunnel on: traffic without a more specific route goes through the Internet \
                 resource's gateway{}",
                if self.include_lan {
                    ", the LAN too"
                } else {
                    ""
                }
            );
        }
        for address in self.excluded.difference(&excluded) {
            let _ = ip(&exclusion(*address, "del")).await;
        }
        for address in excluded.difference(&self.excluded) {
            if let Err(err) = ip(&exclusion(*address, "add")).await {
                warn!("{address} cannot be kept outside the full tunnel: {err}");
            }
        }
        self.excluded = excluded;
    }

    /// Deletes every rule of ours and the table, whatever state they are in.
    async fn remove_all(&self) {
        for family in ["-4", "-6"] {
            for pref in [PREF_EXCLUDED, PREF_SUPPRESS, PREF_TUNNEL] {
                let pref = pref.to_string();
                // A preference may hold several rules (one per excluded address).
                for _ in 0..1024 {
                    if net::run("ip", &[family, "rule", "del", "pref", &pref])
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
            let _ = net::run("ip", &[family, "route", "flush", "table", TABLE]).await;
        }
    }

    pub async fn shutdown(&mut self) {
        if self.on {
            self.remove_all().await;
            self.on = false;
            info!("full tunnel off: routing restored");
        }
    }
}

/// The `ip` commands that turn the full tunnel on (IPv4, then IPv6).
fn tunnel_commands(tun_name: &str, include_lan: bool) -> Vec<Vec<String>> {
    let mut commands = Vec::new();
    for family in ["-4", "-6"] {
        let words = |text: &str| -> Vec<String> {
            std::iter::once(family.to_string())
                .chain(text.split_whitespace().map(str::to_string))
                .collect()
        };
        commands.push(words(&format!(
            "route replace default dev {tun_name} table {TABLE}"
        )));
        if !include_lan {
            commands.push(words(&format!(
                "rule add lookup main suppress_prefixlength 0 pref {PREF_SUPPRESS}"
            )));
        }
        commands.push(words(&format!(
            "rule add not fwmark {MARK:#x} lookup {TABLE} pref {PREF_TUNNEL}"
        )));
    }
    commands
}

fn exclusion(address: IpAddr, verb: &str) -> Vec<String> {
    let family = if address.is_ipv4() { "-4" } else { "-6" };
    format!("{family} rule {verb} to {address} lookup main pref {PREF_EXCLUDED}")
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

async fn ip(args: &[String]) -> Result<(), net::NetError> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    net::run("ip", &args).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lan_keeps_its_routes_unless_it_is_included() {
        let joined = |include_lan| -> Vec<String> {
            tunnel_commands("postern0", include_lan)
                .into_iter()
                .map(|c| c.join(" "))
                .collect()
        };
        assert_eq!(
            joined(false),
            vec![
                "-4 route replace default dev postern0 table 7073",
                "-4 rule add lookup main suppress_prefixlength 0 pref 7071",
                "-4 rule add not fwmark 0x7073 lookup 7073 pref 7072",
                "-6 route replace default dev postern0 table 7073",
                "-6 rule add lookup main suppress_prefixlength 0 pref 7071",
                "-6 rule add not fwmark 0x7073 lookup 7073 pref 7072",
            ]
        );
        assert!(joined(true).iter().all(|c| !c.contains("suppress")));
    }
}
