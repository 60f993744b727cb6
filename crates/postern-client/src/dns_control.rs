//! Points the system's DNS at the stub resolver, and back.
//!
//! - `systemd-resolved`: the TUN gets the resolver's addresses and, as routing domains, the
//!   fixed ends of the DNS resources' patterns (`~svc.example`): only those names come to
//!   Postern (split DNS), never `~.`. The link's settings go with the TUN, also after a crash.
//! - `resolv-conf`: `/etc/resolv.conf` names the resolver instead of the servers it named (its
//!   `search` and `options` lines stay); the previous file is saved in the state directory
//!   first and put back when the client stops, or on its next start after a crash
//!   (`postern-client restore-dns` does it by hand).
//! - `disabled`: nothing is changed; point your resolver at 198.18.0.53 yourself.
//!
//! In every mode the names no DNS resource covers are forwarded to the servers the system
//! used before (`/etc/resolv.conf`, or with systemd-resolved its uplink servers), so nothing
//! else changes for the machine.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use postern_device::dns_server::{nameservers, upstreams};
use postern_device::net;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

pub const RESOLV_CONF: &str = "/etc/resolv.conf";
/// systemd-resolved's list of the uplink servers it uses itself.
const RESOLVED_UPLINKS: &str = "/run/systemd/resolve/resolv.conf";
const RESOLVED_STUB: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 53));
/// Where the previous `/etc/resolv.conf` waits, in the state directory.
const BACKUP: &str = "resolv.conf.backup";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DnsControl {
    /// Split DNS through systemd-resolved (resolvectl)
    SystemdResolved,
    /// Rewrite /etc/resolv.conf (restored on exit)
    ResolvConf,
    /// Change nothing: point the system at 198.18.0.53 yourself
    Disabled,
}

impl DnsControl {
    pub fn as_str(self) -> &'static str {
        match self {
            DnsControl::SystemdResolved => "systemd-resolved",
            DnsControl::ResolvConf => "resolv-conf",
            DnsControl::Disabled => "disabled",
        }
    }

    /// systemd-resolved when it answers the system's lookups (`/etc/resolv.conf` names its stub
    /// 127.0.0.53) and `resolvectl` is there; else resolv-conf.
    pub fn detect() -> DnsControl {
        let text = std::fs::read_to_string(RESOLV_CONF).unwrap_or_default();
        let through_resolved = nameservers(&text).contains(&RESOLVED_STUB);
        if through_resolved && which("resolvectl") {
            DnsControl::SystemdResolved
        } else {
            DnsControl::ResolvConf
        }
    }
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// The resolv.conf that names the stub resolver, keeping `search`, `domain` and `options` of
/// the previous one.
pub fn resolv_conf_text(previous: &str, resolver: &[IpAddr]) -> String {
    let mut text = String::from(
        "# Written by postern-client: names of Postern DNS resources are answered by its\n\
         # resolver, all others are forwarded to the servers this file named before.\n\
         # The previous file is put back when postern-client stops.\n",
    );
    for address in resolver {
        text.push_str(&format!("nameserver {address}\n"));
    }
    for line in previous.lines() {
        let keyword = line.split_whitespace().next();
        if matches!(keyword, Some("search" | "domain" | "options")) {
            text.push_str(line);
            text.push('\n');
        }
    }
    text
}

/// The previous `/etc/resolv.conf`, as saved before it was replaced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Backup {
    path: PathBuf,
    /// It was a symbolic link to this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    link: Option<PathBuf>,
    content: String,
    mode: u32,
}

/// The system's DNS as this client set it; [`Controlled::restore`] undoes it.
#[derive(Debug)]
pub struct Controlled {
    pub mode: DnsControl,
    pub upstreams: Vec<SocketAddr>,
    tun_name: String,
    state_dir: PathBuf,
    domains: Vec<String>,
}

impl Controlled {
    /// Points the system at `resolver`; returns what was done and where other names go.
    pub async fn apply(
        mode: DnsControl,
        state_dir: &Path,
        tun_name: &str,
        resolver: &[IpAddr],
        upstream_override: &[SocketAddr],
    ) -> Result<Self, String> {
        let previous = match mode {
            DnsControl::SystemdResolved => std::fs::read_to_string(RESOLVED_UPLINKS)
                .map_err(|err| format!("cannot read {RESOLVED_UPLINKS}: {err}"))?,
            DnsControl::ResolvConf | DnsControl::Disabled => {
                std::fs::read_to_string(RESOLV_CONF).unwrap_or_default()
            }
        };
        let mut upstreams = upstreams(&nameservers(&previous), resolver);
        if !upstream_override.is_empty() {
            upstreams = upstream_override.to_vec();
        }
        let controlled = Controlled {
            mode,
            upstreams,
            tun_name: tun_name.to_string(),
            state_dir: state_dir.to_path_buf(),
            domains: Vec::new(),
        };
        match mode {
            DnsControl::SystemdResolved => {
                let mut args = vec!["dns", tun_name];
                let addresses: Vec<String> = resolver.iter().map(IpAddr::to_string).collect();
                args.extend(addresses.iter().map(String::as_str));
                net::run("resolvectl", &args)
                    .await
                    .map_err(|e| e.to_string())?;
                net::run("resolvectl", &["default-route", tun_name, "false"])
                    .await
                    .map_err(|e| e.to_string())?;
                info!("DNS: systemd-resolved sends the DNS resources' domains to {tun_name}");
            }
            DnsControl::ResolvConf => {
                let path = Path::new(RESOLV_CONF);
                save_backup(state_dir, path)?;
                replace_file(path, &resolv_conf_text(&previous, resolver), 0o644)
                    .map_err(|err| format!("cannot write {RESOLV_CONF}: {err}"))?;
                info!("DNS: {RESOLV_CONF} names the Postern resolver (the previous file is saved in {})", state_dir.display());
            }
            DnsControl::Disabled => {
                info!("DNS: the system's resolver configuration is left alone (--dns-control disabled)");
            }
        }
        Ok(controlled)
    }

    /// The routing domains of the DNS resources, for systemd-resolved (split DNS).
    pub async fn set_domains(&mut self, mut domains: Vec<String>) {
        domains.sort();
        domains.dedup();
        if self.mode != DnsControl::SystemdResolved || domains == self.domains {
            return;
        }
        let routed: Vec<String> = domains.iter().map(|d| format!("~{d}")).collect();
        let mut args = vec!["domain", self.tun_name.as_str()];
        args.extend(routed.iter().map(String::as_str));
        if routed.is_empty() {
            args.push("");
        }
        match net::run("resolvectl", &args).await {
            Ok(()) => self.domains = domains,
            Err(err) => warn!("cannot give systemd-resolved the DNS resources' domains: {err}"),
        }
    }

    pub fn domains(&self) -> &[String] {
        &self.domains
    }

    /// Puts back what [`Controlled::apply`] changed.
    pub async fn restore(self) {
        match self.mode {
            DnsControl::SystemdResolved => {
                let _ = net::run("resolvectl", &["revert", &self.tun_name]).await;
            }
            DnsControl::ResolvConf => match restore_backup(&self.state_dir) {
                Ok(Some(path)) => info!("DNS: {} restored", path.display()),
                Ok(None) => {}
                Err(err) => warn!("{err}"),
            },
            DnsControl::Disabled => {}
        }
    }
}

/// Puts back a resolv.conf a previous run could not (it was killed); `Ok(None)` when there is
/// nothing to restore.
pub fn recover(state_dir: &Path) -> Result<Option<PathBuf>, String> {
    let restored = restore_backup(state_dir)?;
    if let Some(path) = &restored {
        info!(
            "DNS: {} restored from {} (left by a run that did not stop cleanly)",
            path.display(),
            state_dir.join(BACKUP).display()
        );
    }
    Ok(restored)
}

fn save_backup(state_dir: &Path, path: &Path) -> Result<(), String> {
    let link = std::fs::read_link(path).ok();
    let content = std::fs::read_to_string(path).unwrap_or_default();
    let mode = std::fs::metadata(path).map_or(0o644, |m| m.permissions().mode() & 0o7777);
    let backup = Backup {
        path: path.to_path_buf(),
        link,
        content,
        mode,
    };
    let text = serde_json::to_string_pretty(&backup).map_err(|err| err.to_string())?;
    let target = state_dir.join(BACKUP);
    let temporary = state_dir.join(format!("{BACKUP}.tmp"));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)
        .and_then(|mut file| {
            file.write_all(text.as_bytes())?;
            file.sync_all()
        })
        .and_then(|()| std::fs::rename(&temporary, &target));
    written.map_err(|err| {
        format!(
            "cannot save {} to {}: {err}",
            path.display(),
            target.display()
        )
    })
}

fn restore_backup(state_dir: &Path) -> Result<Option<PathBuf>, String> {
    let source = state_dir.join(BACKUP);
    let text = match std::fs::read_to_string(&source) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(format!("cannot read {}: {err}", source.display())),
    };
    let backup: Backup = serde_json::from_str(&text)
        .map_err(|err| format!("{} is not a saved resolv.conf: {err}", source.display()))?;
    let restored = match &backup.link {
        Some(target) => {
            let _ = std::fs::remove_file(&backup.path);
            std::os::unix::fs::symlink(target, &backup.path)
        }
        None => replace_file(&backup.path, &backup.content, backup.mode),
    };
    restored.map_err(|err| format!("cannot restore {}: {err}", backup.path.display()))?;
    let _ = std::fs::remove_file(&source);
    Ok(Some(backup.path))
}

/// Replaces a file's content: a symbolic link becomes a file; a file is replaced by a rename,
/// or written in place when it is a mount point (a container's or `ip netns exec`'s
/// /etc/resolv.conf cannot be renamed over).
fn replace_file(path: &Path, content: &str, mode: u32) -> std::io::Result<()> {
    if path.is_symlink() {
        std::fs::remove_file(path)?;
    }
    let file_name = path
        .file_name()
        .map_or_else(|| "file".into(), |n| n.to_string_lossy().into_owned());
    let temporary = path.with_file_name(format!(".{file_name}.postern"));
    let renamed = std::fs::write(&temporary, content)
        .and_then(|()| std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(mode)))
        .and_then(|()| std::fs::rename(&temporary, path));
    if renamed.is_ok() {
        return Ok(());
    }
    let _ = std::fs::remove_file(&temporary);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .create(true)
        .open(path)?;
    file.write_all(content.as_bytes())?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREVIOUS: &str = "# from DHCP\nsearch corp.example\nnameserver 10.0.0.2\nnameserver fe80::1%eth0\nnameserver 198.18.0.53\noptions edns0 trust-ad\n";

    fn resolver() -> Vec<IpAddr> {
        vec![
            "198.18.0.53".parse().unwrap(),
            "fd70:6f73:7465:726f::53".parse().unwrap(),
        ]
    }

    #[test]
    fn the_new_file_names_the_resolver_and_keeps_search_and_options() {
        let text = resolv_conf_text(PREVIOUS, &resolver());
        assert_eq!(
            nameservers(&text),
            resolver(),
            "only the resolver's addresses"
        );
        assert!(text.contains("search corp.example\n"));
        assert!(text.contains("options edns0 trust-ad\n"));
        assert!(!text.contains("10.0.0.2"));
    }

    #[test]
    fn a_replaced_file_and_a_replaced_link_are_put_back_as_they_were() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        let file = dir.path().join("resolv.conf");
        std::fs::write(&file, PREVIOUS).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
        save_backup(&state, &file).unwrap();
        replace_file(&file, "nameserver 198.18.0.53\n", 0o644).unwrap();
        assert_eq!(
            nameservers(&std::fs::read_to_string(&file).unwrap()).len(),
            1
        );
        assert_eq!(recover(&state).unwrap(), Some(file.clone()));
        assert_eq!(std::fs::read_to_string(&file).unwrap(), PREVIOUS);
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o640
        );
        assert_eq!(recover(&state).unwrap(), None, "restored once");

        let target = dir.path().join("stub-resolv.conf");
        std::fs::write(&target, "nameserver 127.0.0.53\n").unwrap();
        let link = dir.path().join("linked.conf");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        save_backup(&state, &link).unwrap();
        replace_file(&link, "nameserver 198.18.0.53\n", 0o644).unwrap();
        assert!(!link.is_symlink());
        assert_eq!(
            std::fs::read_to_string(&target).unwrap(),
            "nameserver 127.0.0.53\n",
            "the link's target is not touched"
        );
        recover(&state).unwrap();
        assert_eq!(std::fs::read_link(&link).unwrap(), target);
    }
}
