//! Where a token may travel unencrypted: only to this machine. Devices and the admin CLI apply
//! the same rule to their portal URL (plain `http://` or `ws://` elsewhere needs `--insecure`).

use std::net::IpAddr;

/// Whether `host` (as in a URL: `localhost`, `127.0.0.1`, `[::1]`) names this machine.
pub fn is_loopback_host(host: &str) -> bool {
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_this_machine_is_loopback() {
        for host in [
            "localhost",
            "LOCALHOST",
            "127.0.0.1",
            "127.9.9.9",
            "[::1]",
            "::1",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "portal.example.com",
            "10.0.0.1",
            "[2001:db8::1]",
            "localhost.evil.com",
            "0.0.0.0",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }
}
