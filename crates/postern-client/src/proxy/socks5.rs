//! SOCKS5 (RFC 1928, CONNECT) with optional username and password (RFC 1929), names resolved
//! by the client (`socks5h://`: a DNS resource's name works as it does with the TUN). The
//! protocol's messages are fast-socks5's; what to connect to, and the refusals, are ours.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use fast_socks5::server::{Socks5ServerProtocol, SocksServerError};
use fast_socks5::util::target_addr::TargetAddr;
use fast_socks5::{ReplyError, Socks5Command};
use postern_netstack::ConnectError;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::{debug, info};

use super::{Proxies, Refusal, Target};

/// A client has this long to say where it goes.
const NEGOTIATION_TIMEOUT: Duration = Duration::from_secs(10);
/// Clients served at once; more are closed at once.
const MAX_CLIENTS: usize = 1024;

pub async fn serve(listener: TcpListener, proxies: Proxies) {
    if let Ok(address) = listener.local_addr() {
        proxies.listening(format!("socks5 {address}"));
    }
    let clients = Arc::new(Semaphore::new(MAX_CLIENTS));
    loop {
        let Ok((stream, client)) = listener.accept().await else {
            continue;
        };
        let Ok(permit) = clients.clone().try_acquire_owned() else {
            debug!(%client, "too many SOCKS5 clients: one closed");
            continue;
        };
        let proxies = proxies.clone();
        tokio::spawn(async move {
            if let Err(err) = handle(stream, client, &proxies).await {
                debug!(%client, "SOCKS5 client: {err}");
            }
            drop(permit);
        });
    }
}

async fn handle(
    stream: TcpStream,
    client: SocketAddr,
    proxies: &Proxies,
) -> Result<(), SocksServerError> {
    let _ = stream.set_nodelay(true);
    let negotiated = tokio::time::timeout(NEGOTIATION_TIMEOUT, async {
        let protocol = match proxies.credentials() {
            None => Socks5ServerProtocol::accept_no_auth(stream).await?,
            Some(credentials) => {
                let check = |user: String, password: String| {
                    credentials.accepts(&user, &password).then_some(())
                };
                Socks5ServerProtocol::accept_password_auth(stream, check)
                    .await?
                    .0
            }
        };
        protocol.read_command().await
    })
    .await;
    let Ok(negotiated) = negotiated else {
        debug!(%client, "SOCKS5 client silent: closed");
        return Ok(());
    };
    let (protocol, command, target) = negotiated?;
    if command != Socks5Command::TCPConnect {
        protocol
            .reply_error(&ReplyError::CommandNotSupported)
            .await?;
        return Ok(());
    }
    let target = match target {
        TargetAddr::Ip(address) => Target::Address(address),
        TargetAddr::Domain(name, port) => Target::Name(name.to_ascii_lowercase(), port),
    };
    match proxies.open(&target).await {
        Ok((connection, resource)) => {
            let bound = connection.remote();
            let local = protocol.reply_success(bound).await?;
            proxies
                .relay("socks5", local, client, &target, connection, &resource)
                .await;
        }
        Err(refusal) => {
            info!(%client, %target, "SOCKS5 connection refused: {refusal}");
            protocol.reply_error(&reply_for(&refusal)).await?;
        }
    }
    Ok(())
}

/// The SOCKS5 reply that says why.
fn reply_for(refusal: &Refusal) -> ReplyError {
    match refusal {
        Refusal::NoResource(_) | Refusal::Filtered { .. } => ReplyError::ConnectionNotAllowed,
        Refusal::Unresolved(_) => ReplyError::HostUnreachable,
        Refusal::Connect(ConnectError::NoAddresses) => ReplyError::NetworkUnreachable,
        Refusal::Connect(ConnectError::Refused(_)) => ReplyError::ConnectionRefused,
        Refusal::Connect(ConnectError::TimedOut(_)) | Refusal::TimedOut(_) => {
            ReplyError::ConnectionTimeout
        }
        Refusal::Connect(_) => ReplyError::GeneralFailure,
    }
}
