//! `postern-gateway`: the gateway of a site. Holds a control session with the portal using a
//! gateway token, keeps the authorizations of clients to reach the site's resources and,
//! unless `--no-tunnel`, serves them: WireGuard on `--listen`, per-packet checks, forwarding
//! with source NAT through its own TUN device.

mod dataplane;
mod dns_nat;
mod metrics;
mod plan;
mod role;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use postern_device::cli::{CommonArgs, EXIT_CODES_HELP};
use postern_device::net;
use postern_device::status::{status_command, table};
use postern_device::{exit, DeviceSettings};
use postern_protocol::connection::exit_code;
use postern_token::{SecretString, TokenKind};

use crate::role::{GatewayDetails, GatewayRole};

const PROGRAM: &str = "postern-gateway";
const DEFAULT_STATE_DIR: &str = "/var/lib/postern-gateway";

#[derive(Parser)]
#[command(
    name = "postern-gateway",
    version,
    about = "Postern gateway: connects to the portal with a gateway token",
    long_about = "Postern gateway: connects to the portal with a gateway token and keeps the \
        authorizations of clients to reach its site's resources.\n\n\
        The token is read from the POSTERN_TOKEN environment variable (removed from the \
        environment at start) or else from --token-path (mode 600 or stricter).\n\n\
        Examples:\n  \
        postern-gateway --api-url https://portal.example.com --public-endpoint gw.example.com:51820\n  \
        postern-gateway status",
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
    /// Show what the running gateway is doing; exit 1 when none is running
    Status(StatusArgs),
}

#[derive(Args, Clone)]
struct RunArgs {
    #[command(flatten)]
    common: CommonArgs,

    /// Where the device id and status.json are kept (created with mode 700)
    #[arg(long, env = "POSTERN_STATE_DIR", default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,

    /// UDP address the data plane (WireGuard) listens on
    #[arg(long, env = "POSTERN_LISTEN", default_value = "0.0.0.0:51820")]
    listen: std::net::SocketAddr,

    /// host:port clients reach the data plane at (default: --listen, unless it is 0.0.0.0)
    #[arg(long, env = "POSTERN_PUBLIC_ENDPOINT")]
    public_endpoint: Option<String>,

    /// Only hold the control session, without the data plane (no root or CAP_NET_ADMIN needed)
    #[arg(long)]
    no_tunnel: bool,

    /// Name of the TUN device toward the site's network
    #[arg(long, env = "POSTERN_TUN_NAME", default_value = "postern-gw0")]
    tun_name: String,

    /// MTU of the TUN device
    #[arg(long, env = "POSTERN_MTU", default_value_t = 1280)]
    mtu: u16,

    /// DNS server that resolves the names of DNS resources (IP or IP:PORT, repeatable;
    /// default: the servers of /etc/resolv.conf)
    #[arg(long = "dns-server", value_name = "ADDR", value_parser = parse_dns_server)]
    dns_servers: Vec<std::net::SocketAddr>,

    /// Serve Prometheus metrics at http://ADDR/metrics: packets and bytes each way, drops by
    /// reason, handshakes, peers, authorizations (docs/metrics.md). Off by default
    #[arg(long, env = "POSTERN_METRICS_LISTEN", value_name = "ADDR")]
    metrics_listen: Option<String>,
}

/// Starts the metrics endpoint (`--metrics-listen`).
async fn serve_metrics(
    address: &str,
) -> Result<tokio::task::JoinHandle<()>, postern_metrics::MetricsError> {
    let exporter = postern_metrics::Exporter::install()?;
    let listener = postern_metrics::bind(address).await?;
    if let Ok(bound) = listener.local_addr() {
        tracing::info!("metrics on http://{bound}/metrics");
    }
    Ok(postern_metrics::serve(listener, exporter, || async {}))
}

/// `10.0.0.2` or `10.0.0.2:5353` or `[fd00::2]:53`.
fn parse_dns_server(text: &str) -> Result<std::net::SocketAddr, String> {
    if let Ok(ip) = text.parse::<std::net::IpAddr>() {
        return Ok(std::net::SocketAddr::new(ip, 53));
    }
    text.parse()
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
        Some(Command::Run(args)) => run(*args, env_token),
        None => run(cli.run, env_token),
    }
}

fn run(mut args: RunArgs, env_token: Option<SecretString>) -> ExitCode {
    if args.public_endpoint.is_none() && !args.listen.ip().is_unspecified() && !args.no_tunnel {
        args.public_endpoint = Some(args.listen.to_string());
    }
    let prepared = postern_device::prepare(
        DeviceSettings {
            program: PROGRAM,
            kind: TokenKind::Gateway,
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
            endpoint: args.public_endpoint.clone(),
            ephemeral: false,
            max_partition: args.common.max_partition_time,
            workload: None,
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
        tracing::info!(
            token_id = %config.token.id,
            token_from = %config.token.origin,
            device_id = %config.params.id,
            device_name = %config.params.name,
            listen = %args.listen,
            public_endpoint = args.public_endpoint.as_deref().unwrap_or("-"),
            "starting postern-gateway {}{}",
            env!("CARGO_PKG_VERSION"),
            if keys.is_none() { " (control session only, no data plane)" } else { "" }
        );
        let _metrics = match &args.metrics_listen {
            Some(address) => match serve_metrics(address).await {
                Ok(task) => Some(task),
                Err(err) => {
                    return anyhow::Ok(postern_device::Outcome {
                        code: exit_code::BAD_CONFIG,
                        message: Some(err.to_string()),
                    })
                }
            },
            None => None,
        };
        let role = GatewayRole::new(
            config.token.id,
            args.listen.to_string(),
            args.public_endpoint.clone(),
        );
        let Some(keys) = keys else {
            let mut role = role;
            return anyhow::Ok(postern_device::run(config, &mut role, shutdown).await);
        };
        if args.public_endpoint.is_none() {
            tracing::warn!(
                "no --public-endpoint: clients cannot reach this gateway's data plane until one \
                 is set (HOST:PORT they can send UDP to)"
            );
        }
        let counters = std::sync::Arc::new(parking_lot::Mutex::new(Default::default()));
        let data_plane = match dataplane::GatewayDataPlane::create(
            args.listen,
            &args.tun_name,
            args.mtu,
            keys.private,
            counters.clone(),
        )
        .await
        {
            Ok(data_plane) => data_plane,
            Err(err) => {
                return anyhow::Ok(postern_device::Outcome {
                    code: exit_code::BAD_CONFIG,
                    message: Some(err.to_string()),
                })
            }
        };
        let resolver = match dns_nat::resolver(&args.dns_servers) {
            Ok(resolver) => resolver,
            Err(err) => {
                return anyhow::Ok(postern_device::Outcome {
                    code: exit_code::BAD_CONFIG,
                    message: Some(err),
                })
            }
        };
        let internet_dns = internet_resolver(&args.dns_servers).await;
        let (mut plan_tx, plan_rx) = plan::channel();
        let dns_rx = plan_tx.subscribe();
        let nft_table = data_plane.nft_table.clone();
        let (states_tx, states_rx) = tokio::sync::mpsc::channel(64);
        let dns_task = tokio::spawn(dns_nat::run(resolver, dns_rx, nft_table, states_tx));
        let task = tokio::spawn(data_plane.run(plan_rx, states_rx));
        let mut role = role.with_data_plane(plan_tx, counters);
        let outcome = postern_device::run(config, &mut role, shutdown).await;
        drop(role);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(3), task).await;
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), dns_task).await;
        if let Some(internet_dns) = internet_dns {
            internet_dns.abort();
            for address in resolver_addresses() {
                let _ = net::delete_address(&address, "lo").await;
            }
        }
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

/// The gateway's resolver addresses as `ip addr` takes them.
fn resolver_addresses() -> [String; 2] {
    [
        format!("{}/32", postern_domain::GATEWAY_RESOLVER_IPV4),
        format!("{}/128", postern_domain::GATEWAY_RESOLVER_IPV6),
    ]
}

/// The resolver of the Internet resource's clients: the gateway's resolver addresses on
/// loopback, forwarding every query to `--dns-server` or the system's servers. `None` (with a
/// warning) when it cannot listen: those clients' names then fail over to nothing.
async fn internet_resolver(
    dns_servers: &[std::net::SocketAddr],
) -> Option<tokio::task::JoinHandle<()>> {
    use postern_device::dns_server::{self, DnsServer, Listeners};
    let mut addresses = Vec::new();
    for (address, ip) in resolver_addresses().iter().zip([
        std::net::IpAddr::V4(postern_domain::GATEWAY_RESOLVER_IPV4),
        std::net::IpAddr::V6(postern_domain::GATEWAY_RESOLVER_IPV6),
    ]) {
        match net::set_address(address, "lo").await {
            Ok(()) => addresses.push(ip),
            Err(err) => tracing::warn!("the resolver for Internet clients lacks {ip}: {err}"),
        }
    }
    let listeners = match Listeners::bind(&addresses, 53).await {
        Ok(listeners) => listeners,
        Err(err) => {
            tracing::warn!("no resolver for the Internet resource's clients: {err}");
            return None;
        }
    };
    let upstreams = match dns_servers.is_empty() {
        false => dns_servers.to_vec(),
        true => {
            let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
            dns_server::upstreams(&dns_server::nameservers(&text), &addresses)
        }
    };
    tracing::info!(
        "resolver for the Internet resource's clients on {}; forwarding to {}",
        addresses
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        upstreams
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );
    let server = std::sync::Arc::new(DnsServer::new(upstreams));
    Some(tokio::spawn(dns_server::serve(listeners, server)))
}

fn status(args: StatusArgs) -> ExitCode {
    status_command::<GatewayDetails>(&args.state_dir, PROGRAM, args.json, details)
}

/// The role's own lines of `status`, after those every device has.
fn details(details: &GatewayDetails) -> String {
    let mut out = String::new();
    if let Some(site) = &details.site {
        out.push_str(&format!("  site:         {} ({})\n", site.name, site.id));
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
    out.push_str(&format!("  listen:       {}\n", details.listen));
    if let Some(endpoint) = &details.public_endpoint {
        out.push_str(&format!("  endpoint:     {endpoint}\n"));
    }
    if details.authorizations.is_empty() {
        out.push_str("\nno authorizations\n");
        return out;
    }
    let rows: Vec<[String; 4]> = details
        .authorizations
        .iter()
        .map(|a| {
            [
                a.client_device_id.clone(),
                a.resource_name.clone(),
                a.resource_address.clone(),
                a.expires_at.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
            ]
        })
        .collect();
    out.push_str(&format!(
        "\n{} authorization(s)\n",
        details.authorizations_count
    ));
    out.push_str(&table(["DEVICE", "RESOURCE", "ADDRESS", "EXPIRES"], &rows));
    out
}
