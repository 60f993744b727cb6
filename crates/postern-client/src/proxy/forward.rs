//! Port forwards: `--forward LOCAL=HOST:PORT` listens on a local TCP port and carries every
//! connection to one target through the tunnel, for clients that speak no proxy protocol
//! (database drivers, ssh).

use std::net::SocketAddr;

use tokio::net::TcpListener;
use tracing::info;

use super::{parse_listen, Proxies, Target};

/// One `LOCAL=HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    pub local: SocketAddr,
    pub target: Target,
}

impl Forward {
    /// `[ADDR:]PORT=HOST:PORT` (a local port alone listens on loopback).
    pub fn parse(text: &str) -> Result<Forward, String> {
        let Some((local, target)) = text.split_once('=') else {
            return Err(format!(
                "'{text}' is not LOCAL=HOST:PORT (e.g. 5432=db.internal:5432)"
            ));
        };
        if let Some(rest) = local.strip_prefix("udp:") {
            return Err(format!(
                "'udp:{rest}': UDP forwards are not supported yet; TCP forwards are"
            ));
        }
        let local = parse_listen(local.strip_prefix("tcp:").unwrap_or(local))?;
        let target = Target::parse(target).ok_or_else(|| format!("'{target}' is not HOST:PORT"))?;
        Ok(Forward { local, target })
    }
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
            }
        );
        assert_eq!(
            Forward::parse("0.0.0.0:8080=10.0.0.5:80").unwrap().local,
            "0.0.0.0:8080".parse().unwrap()
        );
        assert!(Forward::parse("5432").is_err());
        assert!(Forward::parse("5432=db.internal").is_err());
        assert!(Forward::parse("udp:53=10.0.0.53:53")
            .unwrap_err()
            .contains("UDP"));
    }
}
