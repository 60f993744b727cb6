//! Port forwards: `--forward LOCAL=HOST:PORT` listens on a local TCP port and carries every
//! connection to one target through the tunnel, for clients that speak no proxy protocol
//! (database drivers, ssh); `--forward udp:LOCAL=HOST:PORT` does the same for UDP datagrams,
//! one flow per local sender.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::net::{TcpListener, UdpSocket};
use tracing::{debug, info};

use super::{parse_listen, Proxies, Target};

/// A UDP flow with no datagram either way for this long ends.
const UDP_IDLE: Duration = Duration::from_secs(60);
/// UDP flows (local senders) at once per forward.
const MAX_UDP_FLOWS: usize = 1024;

/// One `[udp:]LOCAL=HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    pub local: SocketAddr,
    pub target: Target,
    pub udp: bool,
}

impl Forward {
    /// `[ADDR:]PORT=HOST:PORT` (a local port alone listens on loopback).
    pub fn parse(text: &str) -> Result<Forward, String> {
        let Some((local, target)) = text.split_once('=') else {
            return Err(format!(
                "'{text}' is not LOCAL=HOST:PORT (e.g. 5432=db.internal:5432)"
            ));
        };
        let (udp, local) = match local.strip_prefix("udp:") {
            Some(rest) => (true, rest),
            None => (false, local.strip_prefix("tcp:").unwrap_or(local)),
        };
        let local = parse_listen(local)?;
        let target = Target::parse(target).ok_or_else(|| format!("'{target}' is not HOST:PORT"))?;
        Ok(Forward { local, target, udp })
    }
}

struct Flow {
    socket: Arc<postern_netstack::UdpSocket>,
    /// A datagram went either way since the last look.
    active: Arc<AtomicBool>,
}

/// Carries datagrams from each local sender to the target through the tunnel, and the
/// target's answers back to that sender.
pub async fn serve_udp(local: UdpSocket, target: Target, proxies: Proxies) {
    if let Ok(address) = local.local_addr() {
        proxies.listening(format!("forward udp {address} → {target}"));
    }
    let local = Arc::new(local);
    let flows: Arc<Mutex<HashMap<SocketAddr, Flow>>> = Arc::default();
    let mut buffer = vec![0u8; 65_535];
    loop {
        let Ok((len, client)) = local.recv_from(&mut buffer).await else {
            continue;
        };
        let existing = flows
            .lock()
            .get(&client)
            .map(|f| (f.socket.clone(), f.active.clone()));
        let (socket, active) = match existing {
            Some(flow) => flow,
            None => {
                if flows.lock().len() >= MAX_UDP_FLOWS {
                    debug!(%client, "too many UDP flows: datagram dropped");
                    continue;
                }
                let (socket, resource) = match proxies.open_udp(&target).await {
                    Ok(opened) => opened,
                    Err(refusal) => {
                        info!(%client, %target, "forwarded datagram refused: {refusal}");
                        continue;
                    }
                };
                let socket = Arc::new(socket);
                let active = Arc::new(AtomicBool::new(true));
                flows.lock().insert(
                    client,
                    Flow {
                        socket: socket.clone(),
                        active: active.clone(),
                    },
                );
                let (id, stopped) = proxies.register("forward-udp", client, &target, &resource);
                tokio::spawn(answers(
                    Answers {
                        local: local.clone(),
                        client,
                        socket: socket.clone(),
                        active: active.clone(),
                        flows: flows.clone(),
                    },
                    stopped,
                    proxies.clone(),
                    id,
                ));
                (socket, active)
            }
        };
        active.store(true, Ordering::Relaxed);
        if let Err(err) = socket.send(&buffer[..len]).await {
            debug!(%client, "a forwarded datagram was not sent: {err}");
        }
    }
}

/// One UDP flow's way back.
struct Answers {
    local: Arc<UdpSocket>,
    client: SocketAddr,
    socket: Arc<postern_netstack::UdpSocket>,
    active: Arc<AtomicBool>,
    flows: Arc<Mutex<HashMap<SocketAddr, Flow>>>,
}

/// The target's datagrams back to the flow's sender, until the flow idles or its resource
/// goes.
async fn answers(
    flow: Answers,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
    proxies: Proxies,
    id: u64,
) {
    let mut buffer = vec![0u8; 65_535];
    loop {
        tokio::select! {
            received = tokio::time::timeout(UDP_IDLE, flow.socket.recv(&mut buffer)) => match received {
                Ok(Ok(len)) => {
                    flow.active.store(true, Ordering::Relaxed);
                    let _ = flow.local.send_to(&buffer[..len], flow.client).await;
                }
                Ok(Err(_)) => break,
                // Idle both ways for a whole period: the flow ends.
                Err(_) if !flow.active.swap(false, Ordering::Relaxed) => break,
                Err(_) => {}
            },
            _ = &mut stopped => break,
        }
    }
    flow.flows.lock().remove(&flow.client);
    proxies.unregister(id);
}

pub async fn serve(listener: TcpListener, target: Target, proxies: Proxies) {
    if let Ok(address) = listener.local_addr() {
        proxies.listening(format!("forward {address} → {target}"));
    }
    loop {
        let Ok((stream, client)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (proxies, target) = (proxies.clone(), target.clone());
        tokio::spawn(async move {
            match proxies.open(&target).await {
                Ok((connection, resource)) => {
                    proxies
                        .relay("forward", stream, client, &target, connection, &resource)
                        .await;
                }
                // The local client sees its connection closed at once; the log says why.
                Err(refusal) => info!(%client, %target, "forwarded connection refused: {refusal}"),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards_parse_and_default_to_loopback() {
        assert_eq!(
            Forward::parse("5432=db.internal:5432").unwrap(),
            Forward {
                local: "127.0.0.1:5432".parse().unwrap(),
                target: Target::Name("db.internal".into(), 5432),
                udp: false,
            }
        );
        assert_eq!(
            Forward::parse("0.0.0.0:8080=10.0.0.5:80").unwrap().local,
            "0.0.0.0:8080".parse().unwrap()
        );
        assert!(Forward::parse("5432").is_err());
        assert!(Forward::parse("5432=db.internal").is_err());
        let udp = Forward::parse("udp:5353=10.0.0.53:53").unwrap();
        assert!(udp.udp);
        assert_eq!(udp.local, "127.0.0.1:5353".parse().unwrap());
    }
}
