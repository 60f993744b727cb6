//! Host networking for the data plane: the TUN device and the `ip`/`nft`/sysctl settings
//! around it. Routes and addresses are set by running `ip` (iproute2): each change is one
//! readable command in the logs, and an administrator can replay or undo it by hand.

use std::io;
use std::process::Stdio;

use tun_rs::{AsyncDevice, DeviceBuilder};

/// MTUs accepted for the tunnel. IPv6 needs at least 1280.
pub const MIN_MTU: u16 = 1280;
pub const MAX_MTU: u16 = 9000;
/// WireGuard over IPv4/UDP adds 60 bytes (IPv6: 80).
pub const WIREGUARD_OVERHEAD: u16 = 80;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error(
        "cannot create the TUN device {name}: permission denied: the tunnel needs root or the \
         CAP_NET_ADMIN capability (or run with --no-tunnel to hold the control session only)"
    )]
    Permission { name: String },
    #[error(
        "cannot create the TUN device {name}: /dev/net/tun is missing (load the tun kernel \
         module; in a container, pass the device /dev/net/tun)"
    )]
    NoTunDriver { name: String },
    #[error("cannot create the TUN device {name}: {source}")]
    Tun { name: String, source: io::Error },
    #[error("the MTU must be between {MIN_MTU} and {MAX_MTU}, not {0}")]
    Mtu(u16),
    #[error("`{command}` failed: {detail}")]
    Command { command: String, detail: String },
}

pub fn check_mtu(mtu: u16) -> Result<(), NetError> {
    if !(MIN_MTU..=MAX_MTU).contains(&mtu) {
        return Err(NetError::Mtu(mtu));
    }
    Ok(())
}

/// Creates the TUN device `name`, up, with `mtu` and a longer transmit queue than the default.
pub fn create_tun(name: &str, mtu: u16) -> Result<AsyncDevice, NetError> {
    check_mtu(mtu)?;
    let built = DeviceBuilder::new()
        .name(name)
        .mtu(mtu)
        .tx_queue_len(1000)
        .enable(true)
        .build_async();
    built.map_err(|source| match source.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => NetError::Permission {
            name: name.to_string(),
        },
        Some(libc::ENOENT) | Some(libc::ENODEV) => NetError::NoTunDriver {
            name: name.to_string(),
        },
        _ => NetError::Tun {
            name: name.to_string(),
            source,
        },
    })
}

/// Runs `program args`, failing with its stderr.
pub async fn run(program: &str, args: &[&str]) -> Result<(), NetError> {
    run_with_input(program, args, None).await
}

pub async fn run_with_input(
    program: &str,
    args: &[&str],
    input: Option<&str>,
) -> Result<(), NetError> {
    use tokio::io::AsyncWriteExt;
    let command = format!("{program} {}", args.join(" "));
    let failed = |detail: String| NetError::Command {
        command: command.clone(),
        detail,
    };
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|err| failed(format!("cannot run {program}: {err} (is it installed?)")))?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(input.as_bytes())
            .await
            .map_err(|err| failed(err.to_string()))?;
    }
    let output = child
        .wait_with_output()
        .await
        .map_err(|err| failed(err.to_string()))?;
    if output.status.success() {
        return Ok(());
    }
    Err(failed(
        String::from_utf8_lossy(&output.stderr).trim().to_string(),
    ))
}

/// `ip route replace NET dev DEV` (IPv6 networks with `-6`).
pub async fn add_route(net: &ipnet::IpNet, dev: &str) -> Result<(), NetError> {
    let net = net.to_string();
    run("ip", &[family(&net), "route", "replace", &net, "dev", dev]).await
}

pub async fn delete_route(net: &ipnet::IpNet, dev: &str) -> Result<(), NetError> {
    let net = net.to_string();
    run("ip", &[family(&net), "route", "del", &net, "dev", dev]).await
}

/// `ip addr replace ADDR/PREFIX dev DEV`.
pub async fn set_address(address: &str, dev: &str) -> Result<(), NetError> {
    run(
        "ip",
        &[family(address), "addr", "replace", address, "dev", dev],
    )
    .await
}

fn family(address: &str) -> &'static str {
    if address.contains(':') {
        "-6"
    } else {
        "-4"
    }
}

/// Writes a sysctl through /proc/sys, e.g. `net/ipv4/ip_forward`.
pub fn sysctl(key: &str, value: &str) -> Result<(), NetError> {
    std::fs::write(format!("/proc/sys/{key}"), value).map_err(|err| NetError::Command {
        command: format!("sysctl {}={value}", key.replace('/', ".")),
        detail: err.to_string(),
    })
}
