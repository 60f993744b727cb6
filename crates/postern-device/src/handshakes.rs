//! Screening of WireGuard datagrams before they reach a peer, shared by client and gateway.
//! A handshake message must carry a MAC1 made with this device's public key (checked with one
//! BLAKE2s, no Diffie-Hellman), and past [`HANDSHAKES_PER_SECOND`] a valid cookie MAC2 for its
//! source address too: without it the answer is a cookie reply (WireGuard's own DoS defence,
//! boringtun's `RateLimiter`), so a flood of junk or replayed initiations costs hashes, not
//! key agreements, and established tunnels keep their share of the device.

use std::net::IpAddr;

use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};

/// Handshake messages a device processes per second before it asks for cookies.
pub const HANDSHAKES_PER_SECOND: u64 = 100;

/// What to do with a datagram from the network.
pub enum Screened<'a, 'b> {
    /// A well-formed message to process (handshakes within the limit, or with a valid cookie).
    Pass(Packet<'a>),
    /// Over the limit: send this cookie reply to the sender and process nothing.
    CookieReply(&'b mut [u8]),
    /// Not WireGuard, or a handshake not meant for this device.
    Drop,
}

pub struct HandshakeScreen {
    limiter: RateLimiter,
}

impl HandshakeScreen {
    pub fn new(public: &PublicKey) -> Self {
        Self {
            limiter: RateLimiter::new(public, HANDSHAKES_PER_SECOND),
        }
    }

    pub fn screen<'a, 'b>(
        &self,
        from: IpAddr,
        datagram: &'a [u8],
        out: &'b mut [u8],
    ) -> Screened<'a, 'b> {
        match self.limiter.verify_packet(Some(from), datagram, out) {
            Ok(packet) => Screened::Pass(packet),
            Err(TunnResult::WriteToNetwork(cookie)) => Screened::CookieReply(cookie),
            Err(_) => Screened::Drop,
        }
    }

    /// Starts a new second of the handshake budget; call it at least once a second.
    pub fn tick(&self) {
        self.limiter.reset_count();
    }
}

/// The static public key of the sender of a screened handshake initiation (one
/// Diffie-Hellman), or `None` for other messages and initiations that do not decrypt.
pub fn initiator_key(
    private: &StaticSecret,
    public: &PublicKey,
    packet: &Packet<'_>,
) -> Option<[u8; 32]> {
    let Packet::HandshakeInit(init) = packet else {
        return None;
    };
    parse_handshake_anon(private, public, init)
        .ok()
        .map(|half| half.peer_static_public)
}

#[cfg(test)]
mod tests {
    use super::*;
    use boringtun::noise::Tunn;

    fn key() -> StaticSecret {
        StaticSecret::from(rand::random::<[u8; 32]>())
    }

    fn initiation(to: &PublicKey) -> Vec<u8> {
        let mut tunn = Tunn::new(key(), *to, None, None, 1, None);
        let mut buf = [0u8; 256];
        match tunn.format_handshake_initiation(&mut buf, false) {
            TunnResult::WriteToNetwork(init) => init.to_vec(),
            _ => panic!("an initiation"),
        }
    }

    #[test]
    fn junk_is_dropped_and_a_flood_past_the_limit_gets_cookies_not_key_agreements() {
        let private = key();
        let public = PublicKey::from(&private);
        let screen = HandshakeScreen::new(&public);
        let from: IpAddr = "198.51.100.7".parse().unwrap();
        let mut out = [0u8; 256];
        let mut junk = vec![0u8; 148];
        junk[0] = 1;
        assert!(matches!(
            screen.screen(from, &junk, &mut out),
            Screened::Drop
        ));
        let for_someone_else = initiation(&PublicKey::from(&key()));
        assert!(matches!(
            screen.screen(from, &for_someone_else, &mut out),
            Screened::Drop
        ));

        let init = initiation(&public);
        let (mut passed, mut cookies) = (0, 0);
        for _ in 0..(HANDSHAKES_PER_SECOND * 3) {
            match screen.screen(from, &init, &mut out) {
                Screened::Pass(packet) => {
                    passed += 1;
                    assert!(initiator_key(&private, &public, &packet).is_some());
                }
                Screened::CookieReply(reply) => {
                    cookies += 1;
                    assert_eq!(reply.len(), 64, "a cookie reply");
                }
                Screened::Drop => panic!("a valid initiation dropped"),
            }
        }
        assert_eq!(passed, HANDSHAKES_PER_SECOND);
        assert_eq!(cookies, HANDSHAKES_PER_SECOND * 2);
    }
}
