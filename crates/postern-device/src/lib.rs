//! What the headless client (`postern-client`) and the gateway (`postern-gateway`) share: token
//! and configuration loading ([`config`]), the status file ([`status`]), and the WebSocket
//! session with the portal ([`session`]), an I/O shell around the sans-IO state machines of
//! `postern-protocol`.

pub mod cli;
pub mod config;
pub mod keys;
pub mod net;
pub mod session;
pub mod status;

pub use config::{take_token_from_env, ConfigError, DeviceConfig, DeviceSettings};
pub use session::{run, shutdown_signal, Outcome, Role};

/// Logs to stderr, level from `RUST_LOG` (default `info`).
///
/// The `log` records of dependencies are deliberately not bridged into `tracing`: tungstenite
/// logs the raw upgrade request, `Authorization` header included, at trace level.
pub fn init_logging() {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .finish();
    let _ = tracing::subscriber::set_global_default(subscriber);
}
