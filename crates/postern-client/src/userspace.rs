//! The rootless client: the same session and tunnels, with a network stack in this process
//! where the TUN would be, reached through local proxies and port forwards. Nothing on the
//! machine changes and no privilege is needed (a UDP socket, TCP listeners, threads).

use std::future::Future;
use std::sync::Arc;

use boringtun::x25519::StaticSecret;
use postern_device::{DeviceConfig, Outcome};
use postern_netstack::NetStack;
use postern_protocol::connection::exit_code;
use tokio::net::TcpListener;

use crate::dns::DnsState;
use crate::proxy::{self, Credentials, Proxies};
use crate::role::ClientRole;
use crate::tunnel::{self, ClientTunnel};
use crate::RunArgs;

/// Binds the listeners (a port in use is a configuration error, exit 2), starts the stack,
/// the tunnels and the proxies, and holds the session until it ends.
pub async fn run(
    config: DeviceConfig,
    args: &RunArgs,
    private: StaticSecret,
    public_key: postern_dataplane::WireGuardKey,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<Outcome> {
    let bad_config = |message: String| Outcome {
        code: exit_code::BAD_CONFIG,
        message: Some(message),
    };
    let credentials = match &args.proxy_credentials {
        Some(path) => match Credentials::read(path) {
            Ok(credentials) => Some(credentials),
            Err(err) => return Ok(bad_config(err)),
        },
        None => None,
    };
    let bind = |what: &str, address: std::net::SocketAddr| {
        let what = what.to_string();
        async move {
            TcpListener::bind(address)
                .await
                .map_err(|err| format!("cannot listen on {address} for the {what}: {err}"))
        }
    };
    let socks5 = match args.socks5 {
        Some(address) => match bind("SOCKS5 proxy", address).await {
            Ok(listener) => Some(listener),
            Err(err) => return Ok(bad_config(err)),
        },
        None => None,
    };
    let http = match args.http_proxy {
        Some(address) => match bind("HTTP proxy", address).await {
            Ok(listener) => Some(listener),
            Err(err) => return Ok(bad_config(err)),
        },
        None => None,
    };
    let mut forwards = Vec::new();
    let mut udp_forwards = Vec::new();
    for forward in &args.forwards {
        if forward.udp {
            match tokio::net::UdpSocket::bind(forward.local).await {
                Ok(socket) => udp_forwards.push((socket, forward.target.clone())),
                Err(err) => {
                    return Ok(bad_config(format!(
                        "cannot listen on UDP {} for the forward: {err}",
                        forward.local
                    )))
                }
            }
            continue;
        }
        match bind("forward", forward.local).await {
            Ok(listener) => forwards.push((listener, forward.target.clone())),
            Err(err) => return Ok(bad_config(err)),
        }
    }
    if socks5.is_none() && http.is_none() && args.forwards.is_empty() {
        tracing::warn!(
            "user-space mode without --socks5, --http-proxy or --forward: nothing can use the tunnel"
        );
    }

    let seed = uuid::Uuid::new_v4().as_u64_pair().0;
    let (stack, pipe, stack_pipe) = NetStack::new(args.mtu, seed);
    let dns = Arc::new(DnsState::default());
    dns.info.lock().mode =
        "user-space (names resolved for the proxies, the system's DNS untouched)".into();
    let (requests_tx, requests_rx) = tokio::sync::mpsc::unbounded_channel();
    let (plan_tx, plan_rx) = tokio::sync::watch::channel(tunnel::Plan::default());
    let created = ClientTunnel::create_userspace(
        args.mtu,
        private,
        requests_tx,
        dns.clone(),
        stack.clone(),
        pipe,
        args.internet,
    )
    .await;
    let tunnel = match created {
        Ok(tunnel) => tunnel,
        Err(err) => return Ok(bad_config(err.to_string())),
    };
    tracing::info!(
        token_id = %config.token.id,
        token_from = %config.token.origin,
        device_id = %config.params.id,
        device_name = %config.params.name,
        public_key = %public_key,
        "starting postern-client {} (user-space: no TUN device)",
        env!("CARGO_PKG_VERSION")
    );
    let proxies = Proxies::new(
        stack.clone(),
        dns.clone(),
        plan_tx.subscribe(),
        args.internet,
        credentials,
    );
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(stack.run(stack_pipe));
    tasks.spawn(proxies.clone().close_withdrawn());
    if let Some(listener) = socks5 {
        tasks.spawn(proxy::socks5::serve(listener, proxies.clone()));
    }
    if let Some(listener) = http {
        tasks.spawn(proxy::http::serve(listener, proxies.clone()));
    }
    for (listener, target) in forwards {
        tasks.spawn(proxy::forward::serve(listener, target, proxies.clone()));
    }
    for (socket, target) in udp_forwards {
        tasks.spawn(proxy::forward::serve_udp(socket, target, proxies.clone()));
    }
    let data_plane = tokio::spawn(tunnel.run(plan_rx));
    let mut role =
        ClientRole::with_tunnel(config.token.id, plan_tx, requests_rx, dns, args.internet)
            .with_proxies(proxies);
    let outcome = postern_device::run(config, &mut role, shutdown).await;
    // Closing the listeners and the proxied connections first: the session is over.
    tasks.abort_all();
    drop(role);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(3), data_plane).await;
    Ok(outcome)
}
