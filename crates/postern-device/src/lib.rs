//! What the headless client (`postern-client`) and the gateway (`postern-gateway`) share: token
//! and configuration loading ([`config`]), the status file ([`status`]), the WebSocket
//! session with the portal ([`session`]), an I/O shell around the sans-IO state machines of
//! `postern-protocol`, and the data plane's event loop ([`engine`]), an I/O shell around
//! `postern_dataplane::peers`.

pub mod cli;
pub mod config;
pub mod dns_server;
pub mod engine;
pub mod keys;
pub mod net;
pub mod session;
pub mod status;
pub mod workload;

pub use config::{take_token_from_env, ConfigError, DeviceConfig, DeviceSettings};
pub use session::{run, shutdown_signal, Outcome, Role};

/// What a device binary prepares before it starts its runtime: with a tunnel (`tunnel_mtu`),
/// the MTU check and the WireGuard key pair (its public key joins the connect parameters); the
/// configuration in any case. On a problem it prints why and returns the exit code.
pub fn prepare(
    settings: DeviceSettings<'_>,
    tunnel_mtu: Option<u16>,
) -> Result<(DeviceConfig, Option<keys::KeyPair>), i32> {
    use postern_protocol::connection::exit_code::BAD_CONFIG;
    if let Some(mtu) = tunnel_mtu {
        if let Err(err) = net::check_mtu(mtu) {
            eprintln!("error: --mtu: {err}");
            return Err(BAD_CONFIG);
        }
    }
    let mut config = DeviceConfig::load(settings).map_err(|err| {
        eprintln!("error: {err}");
        match err {
            config::ConfigError::Exchange(workload::ExchangeError::Refused { .. }) => {
                postern_protocol::connection::exit_code::TOKEN_REJECTED
            }
            _ => BAD_CONFIG,
        }
    })?;
    if tunnel_mtu.is_none() {
        return Ok((config, None));
    }
    let keys = keys::load_or_create(&config.state_dir).map_err(|err| {
        eprintln!("error: {err}");
        BAD_CONFIG
    })?;
    config.params.public_key = Some(keys.public_key());
    Ok((config, Some(keys)))
}

/// A process exit code (from `postern_protocol::connection::exit_code`) as `main`'s return value.
pub fn exit(code: i32) -> std::process::ExitCode {
    std::process::ExitCode::from(u8::try_from(code).unwrap_or(1))
}

/// The multi-threaded tokio runtime of a device binary, or the exit code after saying why not.
pub fn runtime() -> Result<tokio::runtime::Runtime, i32> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|err| {
            eprintln!("error: cannot start the async runtime: {err}");
            postern_protocol::connection::exit_code::FAILURE
        })
}

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
