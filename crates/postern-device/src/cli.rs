//! Command-line settings common to the client and the gateway.

use std::path::PathBuf;
use std::time::Duration;

use crate::config::parse_duration;

/// Text for `--help`: the exit codes supervisors act on.
pub const EXIT_CODES_HELP: &str = "Exit codes:\n  \
    0  stopped by SIGTERM or SIGINT\n  \
    1  other failure (portal unreachable for longer than --max-partition-time, protocol \
    version no longer supported, ...)\n  \
    2  bad configuration (missing or unsafe token file, wrong token kind, bad flags; a device \
    id or key the portal says is bound to another service account or site)\n  \
    3  token rejected (unknown, expired, revoked, holder disabled or deleted): do not restart\n  \
    4  this device was blocked by an administrator, or connects from outside its token's \
    allowed networks (the token still works for other devices): do not restart until that changes\n  \
    5  the token already serves as many devices as its max_clients allows: do not restart until \
    one of them stops or the limit is raised";

#[derive(clap::Args, Debug, Clone)]
pub struct CommonArgs {
    /// The portal's URL (https://; plain http:// only to loopback addresses or with
    /// --insecure). Repeat it (or separate URLs with commas in POSTERN_API_URL) for several
    /// portal nodes without a load balancer: they are tried in order, then in turn with the
    /// usual backoff; a session that ends moves on to the next one.
    #[arg(
        long = "api-url",
        env = "POSTERN_API_URL",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:8080"
    )]
    pub api_urls: Vec<String>,

    /// Allow plain http:// to a non-loopback portal (the token travels unencrypted: testing only)
    #[arg(long)]
    pub insecure: bool,

    /// Trust only the CA certificates in this PEM file for the portal's https:// (a private CA)
    /// instead of the public roots
    #[arg(long, env = "POSTERN_CA_FILE", value_name = "FILE")]
    pub ca_file: Option<PathBuf>,

    /// File holding the token (mode 600 or stricter); the POSTERN_TOKEN environment variable,
    /// when set, takes precedence and is removed from the environment at start
    #[arg(long, env = "POSTERN_TOKEN_PATH", default_value = "/etc/postern/token")]
    pub token_path: PathBuf,

    /// Device id (default: a random id generated once and kept in the state directory)
    #[arg(long, env = "POSTERN_ID")]
    pub id: Option<String>,

    /// Device name shown to administrators (default: the host name)
    #[arg(long, env = "POSTERN_NAME")]
    pub name: Option<String>,

    /// Exit with code 1 after this long without a session with the portal, e.g. 30s, 5m, 1h
    /// (default: retry forever)
    #[arg(long, env = "POSTERN_MAX_PARTITION_TIME", value_parser = parse_duration)]
    pub max_partition_time: Option<Duration>,
}
