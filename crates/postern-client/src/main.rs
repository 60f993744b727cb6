//! `postern-client`: the headless client. Holds a control session with the portal using a
//! service-account token, keeps the list of resources it may reach and, unless `--no-tunnel`,
//! routes them through a TUN device and WireGuard tunnels to the gateways.

mod dns;
mod dns_control;
mod internet;
mod proxy;
mod role;
mod tunnel;
mod userspace;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use postern_device::cli::{CommonArgs, EXIT_CODES_HELP};
use postern_device::status::{status_command, table};
use postern_device::{exit, DeviceSettings};
use postern_protocol::connection::exit_code;
use postern_token::{SecretString, TokenKind};

use crate::role::{describe_filters, ClientDetails, ClientRole};

const PROGRAM: &str = "postern-client";
const DEFAULT_STATE_DIR: &str = "/var/lib/postern-client";

#[derive(Parser)]
#[command(
    name = "postern-client",
    version,
    about = "Postern headless client: connects to the portal with a service-account token",
    long_about = "Postern headless client: connects to the portal with a service-account token.\n\n\
        The token is read from the POSTERN_TOKEN environment variable (removed from the \
        environment at start) or else from --token-path (mode 600 or stricter). Or, with no \
        stored secret, the workload's OIDC ID token (--id-token-file, --id-token-command: a CI \
        job, a Kubernetes service account) is exchanged for short-lived tokens, renewed before \
        they end.\n\n\
        With the tunnel, names of DNS resources resolve through the client's own resolver \
        (198.18.0.53), which forwards every other name to the servers the system used before; \
        see --dns-control.\n\n\
        Without root or CAP_NET_ADMIN, the user-space mode reaches the same resources through \
        local proxies and port forwards (--socks5, --http-proxy, --forward): nothing on the \
        machine changes.\n\n\
        Examples:\n  \
        postern-client --api-url https://portal.example.com\n  \
        postern-client --api-url https://portal.example.com --socks5 1080 --forward 5432=db.internal:5432\n  \
        postern-client --api-url https://portal.example.com --dns-control disabled\n  \
        postern-client --no-tunnel --api-url https://portal.example.com\n  \
        postern-client --api-url https://portal.example.com --id-token-file /var/run/secrets/tokens/postern\n  \
        postern-client status\n  \
        postern-client restore-dns",
    args_conflicts_with_subcommands = true,
    after_help = EXIT_CODES_HELP,
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Connect to the portal and keep the session (the default)
    #[command(after_help = EXIT_CODES_HELP)]
    Run(Box<RunArgs>),
    /// Show what the running client is doing; exit 1 when none is running
    Status(StatusArgs),
    /// Put back the /etc/resolv.conf a client that was killed left pointing at its resolver
    /// (a client does it itself on its next start)
    RestoreDns(RestoreDnsArgs),
}

#[derive(Args)]
struct RestoreDnsArgs {
    #[arg(long, env = "POSTERN_STATE_DIR", default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
}

#[derive(Args, Clone)]
pub struct RunArgs {
    #[command(flatten)]
    common: CommonArgs,

    /// Where the device id and status.json are kept (created with mode 700)
    #[arg(long, env = "POSTERN_STATE_DIR", default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,

    /// Only hold the control session, without a tunnel (no root or CAP_NET_ADMIN needed)
    #[arg(long)]
    no_tunnel: bool,

    /// An ephemeral device (a CI job, a short-lived container): the portal removes it when it
    /// stops (SIGTERM), or a while after it vanished (the account's
    /// ephemeral_device_timeout_seconds, 10 minutes by default), freeing its address
    #[arg(long, env = "POSTERN_EPHEMERAL")]
    ephemeral: bool,

    /// Name of the TUN device
    #[arg(long, env = "POSTERN_TUN_NAME", default_value = "postern0")]
    tun_name: String,

    /// MTU of the TUN device (WireGuard adds 80 bytes on the path to the gateway)
    #[arg(long, env = "POSTERN_MTU", default_value_t = 1280)]
    mtu: u16,

    /// How the system is pointed at the client's resolver: systemd-resolved (split DNS: only
    /// the DNS resources' domains), resolv-conf (rewrites /etc/resolv.conf, restored on exit)
    /// or disabled (point it at 198.18.0.53 yourself). Default: systemd-resolved when it
    /// answers the system's lookups, else resolv-conf
    #[arg(long, env = "POSTERN_DNS_CONTROL", value_enum)]
    dns_control: Option<dns_control::DnsControl>,

    /// Where names that are not DNS resources are resolved (IP or IP:PORT, repeatable).
    /// Default: the servers the system used before
    #[arg(long = "dns-upstream", value_name = "ADDR", value_parser = parse_upstream)]
    dns_upstreams: Vec<std::net::SocketAddr>,

    /// Send all traffic through the account's Internet resource while a policy grants it
    /// (the full tunnel), except to the portal, the gateways and the LAN. Without it the
    /// Internet resource is ignored
    #[arg(long, env = "POSTERN_INTERNET")]
    internet: bool,

    /// With --internet, route the LAN (the networks of this machine's interfaces) into the
    /// tunnel too
    #[arg(long, requires = "internet")]
    internet_include_lan: bool,

    /// User-space mode: no TUN device and no privilege; resources are reached through the
    /// listeners below (any of them implies it). Names of DNS resources work through them
    #[arg(long, conflicts_with = "no_tunnel")]
    userspace: bool,

    /// A SOCKS5 proxy (CONNECT; names resolved by the client, as socks5h://) on PORT or
    /// ADDR:PORT (PORT alone: loopback), e.g. --socks5 1080
    #[arg(long, value_name = "ADDR", value_parser = proxy::parse_listen, conflicts_with = "no_tunnel")]
    socks5: Option<std::net::SocketAddr>,

    /// An HTTP proxy (CONNECT, and plain http:// forwarding) for HTTPS_PROXY / HTTP_PROXY,
    /// on PORT or ADDR:PORT, e.g. --http-proxy 3128
    #[arg(long, value_name = "ADDR", value_parser = proxy::parse_listen, conflicts_with = "no_tunnel")]
    http_proxy: Option<std::net::SocketAddr>,

    /// A local port that reaches one resource, [udp:]LOCAL=HOST:PORT (repeatable; TCP unless
    /// udp:), e.g. --forward 5432=db.internal.example:5432 --forward udp:5353=10.0.0.53:53
    #[arg(long = "forward", value_name = "LOCAL=HOST:PORT", value_parser = proxy::forward::Forward::parse, conflicts_with = "no_tunnel")]
    forwards: Vec<proxy::forward::Forward>,

    /// USER:PASSWORD (first line of a file only its owner may read) that the SOCKS5 and HTTP
    /// proxies require, for a shared host
    #[arg(long, value_name = "FILE")]
    proxy_credentials: Option<PathBuf>,

    #[command(flatten)]
    workload: WorkloadArgs,
}

/// Workload identity: tokens by exchange instead of a stored one.
#[derive(Args, Clone)]
struct WorkloadArgs {
    /// Exchange the OIDC ID token in this file for short-lived client tokens instead of
    /// holding a token (a workload identity of a service account: no stored secret). The file
    /// is read again at each renewal, so a platform that replaces it (a Kubernetes projected
    /// service-account token) keeps it fresh
    #[arg(
        long,
        env = "POSTERN_ID_TOKEN_FILE",
        value_name = "FILE",
        conflicts_with = "id_token_command"
    )]
    id_token_file: Option<PathBuf>,

    /// The same with a command that prints the ID token (run with /bin/sh at each exchange),
    /// e.g. a CI job's request for one
    #[arg(long, env = "POSTERN_ID_TOKEN_COMMAND", value_name = "COMMAND")]
    id_token_command: Option<String>,

    /// The workload identity to exchange under, when the ID token matches several (its id,
    /// from `postern workload-identities list`)
    #[arg(long, env = "POSTERN_WORKLOAD_IDENTITY", value_name = "ID")]
    workload_identity: Option<uuid::Uuid>,

    /// The account (its slug) whose workload identities the portal looks at; needed on a
    /// portal of several accounts unless --workload-identity names the rule
    #[arg(
        long = "workload-account",
        env = "POSTERN_WORKLOAD_ACCOUNT",
        value_name = "SLUG",
        default_value = "default"
    )]
    workload_account: String,
}

impl WorkloadArgs {
    fn identity(&self) -> Option<postern_device::workload::WorkloadIdentity> {
        use postern_device::workload::{IdTokenSource, WorkloadIdentity};
        let source = match (&self.id_token_file, &self.id_token_command) {
            (Some(path), _) => IdTokenSource::File(path.clone()),
            (None, Some(command)) => IdTokenSource::Command(command.clone()),
            (None, None) => return None,
        };
        Some(WorkloadIdentity {
            source,
            workload_identity_id: self.workload_identity,
            account: Some(self.workload_account.clone()),
        })
    }
}

impl RunArgs {
    /// Without a TUN: chosen with --userspace or any proxy or forward.
    fn userspace(&self) -> bool {
        self.userspace
            || self.socks5.is_some()
            || self.http_proxy.is_some()
            || !self.forwards.is_empty()
    }
}

fn parse_upstream(text: &str) -> Result<std::net::SocketAddr, String> {
    if let Ok(address) = text.parse::<std::net::SocketAddr>() {
        return Ok(address);
    }
    text.parse::<std::net::IpAddr>()
        .map(|ip| std::net::SocketAddr::new(ip, 53))
        .map_err(|_| format!("'{text}' is not an IP address or IP:PORT"))
}

#[derive(Args)]
struct StatusArgs {
    /// Print status.json as it is
    #[arg(long)]
    json: bool,

    #[arg(long, env = "POSTERN_STATE_DIR", default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
}

fn main() -> ExitCode {
    // First, while this is the only thread (see take_token_from_env).
    let env_token = postern_device::take_token_from_env();
    let cli = Cli::parse();
    postern_device::init_logging();
    match cli.command {
        Some(Command::Status(args)) => status(args),
        Some(Command::RestoreDns(args)) => restore_dns(&args.state_dir),
        Some(Command::Run(args)) => run(*args, env_token),
        None => run(cli.run, env_token),
    }
}

fn run(args: RunArgs, env_token: Option<SecretString>) -> ExitCode {
    let prepared = postern_device::prepare(
        DeviceSettings {
            program: PROGRAM,
            kind: TokenKind::Client,
            env_token,
            token_path: &args.common.token_path,
            api_urls: &args.common.api_urls,
            insecure: args.common.insecure,
            ca_file: args.common.ca_file.as_deref(),
            state_dir: &args.state_dir,
            id: args.common.id.as_deref(),
            name: args.common.name.as_deref(),
            version: env!("CARGO_PKG_VERSION"),
            public_key: None,
            endpoint: None,
            ephemeral: args.ephemeral,
            max_partition: args.common.max_partition_time,
            workload: args.workload.identity(),
        },
        (!args.no_tunnel).then_some(args.mtu),
    );
    let (config, keys) = match prepared {
        Ok(prepared) => prepared,
        Err(code) => return exit(code),
    };
    let runtime = match postern_device::runtime() {
        Ok(runtime) => runtime,
        Err(code) => return exit(code),
    };
    let outcome = runtime.block_on(async {
        let shutdown = postern_device::shutdown_signal()
            .context("cannot install the SIGTERM/SIGINT handlers")?;
        let Some(keys) = keys else {
            tracing::info!(
                token_id = %config.token.id,
                token_from = %config.token.origin,
                device_id = %config.params.id,
                device_name = %config.params.name,
                "starting postern-client {} (control session only, no tunnel)",
                env!("CARGO_PKG_VERSION")
            );
            let mut role = ClientRole::new(config.token.id, false);
            return anyhow::Ok(postern_device::run(config, &mut role, shutdown).await);
        };
        let public_key = keys.public_key();
        if args.userspace() {
            return userspace::run(config, &args, keys.private, public_key, shutdown).await;
        }
        let (requests_tx, requests_rx) = tokio::sync::mpsc::unbounded_channel();
        let (plan_tx, plan_rx) = tokio::sync::watch::channel(tunnel::Plan::default());
        // A run killed before it could restore the system's DNS left it pointing here.
        if let Err(err) = dns_control::recover(&args.state_dir) {
            tracing::warn!("{err}");
        }
        let dns = std::sync::Arc::new(dns::DnsState::default());
        let dns_options = tunnel::DnsOptions {
            control: args
                .dns_control
                .unwrap_or_else(dns_control::DnsControl::detect),
            state_dir: args.state_dir.clone(),
            upstreams: args.dns_upstreams.clone(),
        };
        let internet = match args.internet {
            true => Some(tunnel::InternetOptions {
                include_lan: args.internet_include_lan,
                portal_addresses: portal_addresses(&config.portals).await,
            }),
            false => None,
        };
        let created = tunnel::ClientTunnel::create(
            &args.tun_name,
            args.mtu,
            keys.private,
            requests_tx,
            dns.clone(),
            dns_options,
            internet,
        )
        .await;
        let tunnel = match created {
            Ok(tunnel) => tunnel,
            Err(err) => {
                let hint = match err {
                    postern_device::net::NetError::Permission { .. }
                    | postern_device::net::NetError::NoTunDriver { .. } => {
                        "; without privileges, the user-space mode reaches the same resources \
                         through --socks5, --http-proxy or --forward"
                    }
                    _ => "",
                };
                return anyhow::Ok(postern_device::Outcome {
                    code: exit_code::BAD_CONFIG,
                    message: Some(format!("{err}{hint}")),
                });
            }
        };
        tracing::info!(
            token_id = %config.token.id,
            token_from = %config.token.origin,
            device_id = %config.params.id,
            device_name = %config.params.name,
            public_key = %public_key,
            tun = %args.tun_name,
            "starting postern-client {}",
            env!("CARGO_PKG_VERSION")
        );
        let data_plane = tokio::spawn(tunnel.run(plan_rx));
        let mut role =
            ClientRole::with_tunnel(config.token.id, plan_tx, requests_rx, dns, args.internet);
        let outcome = postern_device::run(config, &mut role, shutdown).await;
        // Dropping the role closes the plan: the tunnel removes its routes and stops.
        drop(role);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(3), data_plane).await;
        anyhow::Ok(outcome)
    });
    match outcome {
        Ok(outcome) => {
            if let Some(message) = &outcome.message {
                eprintln!("error: {message}");
            }
            exit(outcome.code)
        }
        Err(err) => {
            eprintln!("error: {err:#}");
            exit(exit_code::FAILURE)
        }
    }
}

/// The addresses the portal's URLs resolve to now: the full tunnel leaves them outside.
async fn portal_addresses(portals: &[url::Url]) -> Vec<std::net::IpAddr> {
    let mut addresses = Vec::new();
    for portal in portals {
        let (Some(host), Some(port)) = (portal.host_str(), portal.port_or_known_default()) else {
            continue;
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        match tokio::net::lookup_host((host, port)).await {
            Ok(found) => addresses.extend(found.map(|a| a.ip().to_canonical())),
            Err(err) => tracing::warn!(
                "cannot resolve the portal {host}: the full tunnel may carry its traffic: {err}"
            ),
        }
    }
    addresses.sort();
    addresses.dedup();
    addresses
}

fn restore_dns(state_dir: &std::path::Path) -> ExitCode {
    match dns_control::recover(state_dir) {
        Ok(Some(path)) => {
            println!("{} restored", path.display());
            ExitCode::SUCCESS
        }
        Ok(None) => {
            println!(
                "nothing to restore: no saved resolver configuration in {}",
                state_dir.display()
            );
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::from(1)
        }
    }
}

fn status(args: StatusArgs) -> ExitCode {
    status_command::<ClientDetails>(&args.state_dir, PROGRAM, args.json, details)
}

/// The role's own lines of `status`, after those every device has.
fn details(details: &ClientDetails) -> String {
    let mut out = String::new();
    if let (Some(actor), Some(account)) = (&details.actor, &details.account) {
        out.push_str(&format!(
            "  actor:        {} ({}) in account {}\n",
            actor.name, actor.id, account.slug
        ));
    }
    let expiry = details.token.expires_at.map_or_else(
        || "expiry not known yet".to_string(),
        |at| format!("expires {}", at.format("%Y-%m-%d %H:%M:%S UTC")),
    );
    out.push_str(&format!(
        "  token:        {} ({expiry})\n",
        details.token.id
    ));
    if let Some(addresses) = &details.addresses {
        out.push_str(&format!(
            "  addresses:    {}, {}\n",
            addresses.ipv4, addresses.ipv6
        ));
    }
    if details.awaiting_approval {
        out.push_str(
            "  approval:     awaiting: the token requires an administrator to approve this device \
             (postern clients approve, or Approve on the service account's page); nothing is \
             granted until then\n",
        );
    }
    out.push_str(&format!(
        "  tunnel:       {}\n",
        if details.tunnel {
            "on"
        } else {
            "off (--no-tunnel)"
        }
    ));
    if let Some(internet) = &details.internet {
        let shown = match internet.as_str() {
            "on" => "on: the full tunnel (all other traffic through the Internet resource)",
            _ => "granted, not used (start with --internet for the full tunnel)",
        };
        out.push_str(&format!("  internet:     {shown}\n"));
    }
    if let Some(userspace) = &details.userspace {
        out.push_str(&userspace_lines(userspace));
    }
    if let Some(dns) = &details.dns {
        out.push_str(&dns_lines(dns));
    }
    if details.resources.is_empty() {
        out.push_str("\nno resources\n");
        return out;
    }
    let rows: Vec<[String; 5]> = details
        .resources
        .iter()
        .map(|r| {
            [
                r.name.clone(),
                r.resource_type.clone(),
                r.address.clone(),
                describe_filters(&r.filters),
                r.access_until.map_or_else(
                    || "-".to_string(),
                    |at| at.format("%Y-%m-%d %H:%M UTC").to_string(),
                ),
            ]
        })
        .collect();
    out.push('\n');
    out.push_str(&table(
        ["NAME", "TYPE", "ADDRESS", "FILTERS", "ACCESS UNTIL"],
        &rows,
    ));
    out
}

/// The resolver's lines of `status`: its mode, where it listens and forwards, and the names it
/// gave proxy addresses.
fn dns_lines(dns: &role::DnsStatus) -> String {
    let join = |list: &[std::net::SocketAddr]| {
        if list.is_empty() {
            return "none".to_string();
        }
        list.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    // The user-space mode has no resolver on the machine: names are resolved for its proxies.
    let mut out = match dns.info.listen.is_empty() {
        true => format!("  dns:          {}\n", dns.info.mode),
        false => format!(
            "  dns:          {} (resolver {}; other names to {})\n",
            dns.info.mode,
            join(&dns.info.listen),
            join(&dns.info.upstreams)
        ),
    };
    if !dns.info.domains.is_empty() {
        out.push_str(&format!(
            "  dns domains:  {}\n",
            dns.info.domains.join(", ")
        ));
    }
    out.push_str(&format!(
        "  dns queries:  {} answered here, {} forwarded, {} failed\n",
        dns.answered, dns.forwarded, dns.failed
    ));
    if dns.names.is_empty() {
        return out;
    }
    let rows: Vec<[String; 5]> = dns
        .names
        .iter()
        .map(|n| {
            let unresolvable: Vec<&str> = [n.name.clone(), format!("{} (IPv6)", n.name)]
                .iter()
                .filter_map(|key| dns.info.unresolvable.get(key).map(String::as_str))
                .collect();
            let state = match (unresolvable.is_empty(), n.granted) {
                (false, _) => unresolvable.join("; "),
                (true, true) => "granted".to_string(),
                (true, false) => "-".to_string(),
            };
            [
                n.name.clone(),
                n.resource
                    .clone()
                    .unwrap_or_else(|| "(no resource now)".into()),
                n.proxy_ipv4.to_string(),
                n.proxy_ipv6.to_string(),
                state,
            ]
        })
        .collect();
    out.push('\n');
    out.push_str(&table(
        ["NAME", "DNS RESOURCE", "PROXY IPV4", "PROXY IPV6", "ACCESS"],
        &rows,
    ));
    if dns.name_count > dns.names.len() {
        out.push_str(&format!(
            "… and {} more names\n",
            dns.name_count - dns.names.len()
        ));
    }
    out
}

/// The user-space mode's lines of `status`: its listeners and open connections.
fn userspace_lines(userspace: &role::UserspaceStatus) -> String {
    let mut out = String::from("  mode:         user-space (no TUN device)\n");
    for listener in &userspace.listeners {
        out.push_str(&format!("  listening:    {listener}\n"));
    }
    out.push_str(&format!(
        "  connections:  {} open through the tunnel\n",
        userspace.open
    ));
    if userspace.connections.is_empty() {
        return out;
    }
    let rows: Vec<[String; 5]> = userspace
        .connections
        .iter()
        .map(|c| {
            [
                c.via.clone(),
                c.client.to_string(),
                c.target.clone(),
                c.resource.clone(),
                c.since.format("%H:%M:%S").to_string(),
            ]
        })
        .collect();
    out.push('\n');
    out.push_str(&table(["VIA", "FROM", "TO", "RESOURCE", "SINCE"], &rows));
    out
}
