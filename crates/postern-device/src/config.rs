//! Configuration a device needs before it connects: its token, the portal's URL, its id and name,
//! and durations given on the command line. Every error here is a configuration error (exit 2).

use std::fs::{DirBuilder, File};
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use postern_protocol::ConnectParams;
use postern_token::{SecretString, TokenError, TokenKind};
use url::Url;
use uuid::Uuid;
use zeroize::Zeroize;

use crate::status::write_atomic;

/// The environment variable that may carry the token instead of a file.
pub const TOKEN_ENV: &str = "POSTERN_TOKEN";
/// The file in the state directory that keeps a generated device id.
pub const DEVICE_ID_FILE: &str = "device-id";
/// A token file is a few dozen bytes; anything much larger is not a token file.
const MAX_TOKEN_FILE_BYTES: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Exchange(crate::workload::ExchangeError),
    #[error(
        "both a token ({origin}) and an ID token to exchange ({source_name}) are given: use one"
    )]
    TwoTokenSources { origin: String, source_name: String },
    #[error(
        "token file {path} does not exist: write the token there (chmod 600 {path}), point \
         --token-path / POSTERN_TOKEN_PATH at another file, or pass the token in the \
         POSTERN_TOKEN environment variable"
    )]
    TokenFileMissing { path: String },
    #[error("cannot read token file {path}: {source}")]
    TokenFileUnreadable { path: String, source: io::Error },
    #[error("token file {path} is not a regular file")]
    TokenFileNotAFile { path: String },
    #[error(
        "token file {path} has mode {mode:04o}: it must not be readable by group or others \
         (chmod 600 {path})"
    )]
    TokenFileMode { path: String, mode: u32 },
    #[error("the token in {origin} is empty")]
    TokenEmpty { origin: String },
    #[error("the token in {origin} is not a Postern token: {error}")]
    TokenMalformed { origin: String, error: TokenError },
    #[error(
        "the token in {origin} is {} {found} token, but {program} needs a {expected} token \
         (starting with {})",
        article(*.found),
        .expected.prefix()
    )]
    WrongTokenKind {
        origin: String,
        found: TokenKind,
        expected: TokenKind,
        program: String,
    },
    #[error("invalid portal URL '{url}': {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error(
        "refusing to send the token unencrypted to {host}: use an https:// portal URL \
         (plain http:// and ws:// are only allowed to loopback addresses, or with --insecure)"
    )]
    InsecureUrl { host: String },
    #[error("cannot use the CA file {path}: {reason}")]
    CaFile { path: String, reason: String },
    #[error("cannot use state directory {path}: {source}")]
    StateDir { path: String, source: io::Error },
    #[error("device id in {path} is invalid: {reason}")]
    DeviceIdFile { path: String, reason: String },
    #[error("cannot determine the host name ({0}): pass --name")]
    Hostname(io::Error),
    #[error("invalid device settings: {0}")]
    Params(String),
}

fn article(kind: TokenKind) -> &'static str {
    match kind {
        TokenKind::Api => "an",
        TokenKind::Client | TokenKind::Gateway => "a",
    }
}

/// Reads [`TOKEN_ENV`] and removes it from the process environment, so that it is not
/// inherited by child processes nor visible in `/proc/<pid>/environ` of a later exec.
///
/// `std::env::remove_var` is only sound while no other thread reads or writes the environment
/// (it is an `unsafe fn` from edition 2024 on; this crate is edition 2021 where it is still a
/// safe fn). Call this first thing in `main`, before the async runtime or anything else starts
/// a thread: then this is the only thread, and nothing can race with it.
pub fn take_token_from_env() -> Option<SecretString> {
    let value = std::env::var_os(TOKEN_ENV)?;
    std::env::remove_var(TOKEN_ENV);
    let mut value = value.into_string().unwrap_or_default();
    let token = value.trim().to_string();
    value.zeroize();
    if token.is_empty() {
        return None;
    }
    Some(SecretString::new(token))
}

/// A token that passed the offline checks (prefix, length, checksum, kind).
#[derive(Debug)]
pub struct Token {
    pub secret: SecretString,
    pub id: Uuid,
    /// Where it came from, for messages: `POSTERN_TOKEN` or the file's path.
    pub origin: String,
    /// The token file it was read from; `None` when it came from the environment.
    pub file: Option<PathBuf>,
}

/// The token from the environment (if [`take_token_from_env`] found one) or else from `path`,
/// checked to be a well-formed token of kind `expected`.
pub fn load_token(
    from_env: Option<SecretString>,
    path: &Path,
    expected: TokenKind,
    program: &str,
) -> Result<Token, ConfigError> {
    let (secret, origin, file) = match from_env {
        Some(secret) => (
            secret,
            format!("the {TOKEN_ENV} environment variable"),
            None,
        ),
        None => (
            read_token_file(path)?,
            path.display().to_string(),
            Some(path.to_path_buf()),
        ),
    };
    if secret.expose().is_empty() {
        return Err(ConfigError::TokenEmpty { origin });
    }
    let parsed = match postern_token::parse(secret.expose()) {
        Ok(parsed) => parsed,
        Err(error) => return Err(ConfigError::TokenMalformed { origin, error }),
    };
    if parsed.kind != expected {
        return Err(ConfigError::WrongTokenKind {
            origin,
            found: parsed.kind,
            expected,
            program: program.to_string(),
        });
    }
    Ok(Token {
        id: parsed.id,
        secret,
        origin,
        file,
    })
}

/// Replaces the token in a token file: written to a temporary file beside it (mode 0600, the
/// owner and group of the file it replaces), flushed to disk, then renamed over it, so that a
/// crash leaves the old token or the new one, never a part.
pub fn replace_token_file(path: &Path, secret: &SecretString) -> io::Result<()> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let owner = std::fs::metadata(path)?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = dir.join(format!(".{name}.{}.new", std::process::id()));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)?;
        std::os::unix::fs::fchown(&file, Some(owner.uid()), Some(owner.gid()))?;
        io::Write::write_all(&mut file, secret.expose().as_bytes())?;
        io::Write::write_all(&mut file, b"\n")?;
        file.sync_all()?;
        std::fs::rename(&temp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}

/// Reads a token file, refusing one that group or others may read.
pub fn read_token_file(path: &Path) -> Result<SecretString, ConfigError> {
    let shown = path.display().to_string();
    let file = match File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            return Err(ConfigError::TokenFileMissing { path: shown });
        }
        Err(source) => {
            return Err(ConfigError::TokenFileUnreadable {
                path: shown,
                source,
            })
        }
    };
    // The metadata of the opened file, not of the path: no window for a swap in between.
    let metadata = file
        .metadata()
        .map_err(|source| ConfigError::TokenFileUnreadable {
            path: shown.clone(),
            source,
        })?;
    if !metadata.is_file() {
        return Err(ConfigError::TokenFileNotAFile { path: shown });
    }
    let mode = metadata.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(ConfigError::TokenFileMode { path: shown, mode });
    }
    let mut contents = String::new();
    if let Err(source) = file
        .take(MAX_TOKEN_FILE_BYTES)
        .read_to_string(&mut contents)
    {
        contents.zeroize();
        return Err(ConfigError::TokenFileUnreadable {
            path: shown,
            source,
        });
    }
    let token = contents.trim().to_string();
    contents.zeroize();
    Ok(SecretString::new(token))
}

/// Parses `--api-url` into the WebSocket base URL (`http` → `ws`, `https` → `wss`), refusing
/// an unencrypted URL to anything but a loopback host unless `insecure`.
pub fn portal_base_url(api_url: &str, insecure: bool) -> Result<Url, ConfigError> {
    let invalid = |reason: &str| ConfigError::InvalidUrl {
        url: api_url.to_string(),
        reason: reason.to_string(),
    };
    let mut url = Url::parse(api_url.trim()).map_err(|err| invalid(&err.to_string()))?;
    let secure = match url.scheme() {
        "https" | "wss" => true,
        "http" | "ws" => false,
        _ => return Err(invalid("the scheme must be https:// or http://")),
    };
    let Some(host) = url.host() else {
        return Err(invalid("it has no host"));
    };
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid("it must not contain credentials"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid("it must not have a query or fragment"));
    }
    if !secure && !insecure && !postern_protocol::transport::is_loopback_host(&host.to_string()) {
        return Err(ConfigError::InsecureUrl {
            host: host.to_string(),
        });
    }
    let scheme = if secure { "wss" } else { "ws" };
    url.set_scheme(scheme)
        .map_err(|()| invalid("cannot switch the scheme to ws"))?;
    Ok(url)
}

/// The URL of the session endpoint: the base URL's path joined with `path`, the connect
/// parameters as the query. The token is never part of it.
pub fn session_url(base: &Url, path: &str, params: &ConnectParams) -> Url {
    let mut url = base.clone();
    let joined = format!("{}{}", base.path().trim_end_matches('/'), path);
    url.set_path(&joined);
    {
        let mut query = url.query_pairs_mut();
        query.append_pair("id", &params.id);
        query.append_pair("name", &params.name);
        query.append_pair("version", &params.version);
        if let Some(key) = &params.public_key {
            query.append_pair("public_key", &key.to_string());
        }
        if let Some(endpoint) = &params.endpoint {
            query.append_pair("endpoint", endpoint);
        }
        if params.ephemeral {
            query.append_pair("ephemeral", "true");
        }
    }
    url
}

/// Creates the state directory (mode 0700) if it does not exist.
pub fn ensure_state_dir(dir: &Path) -> Result<(), ConfigError> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| ConfigError::StateDir {
            path: dir.display().to_string(),
            source,
        })
}

/// The device id: `explicit` when given, else the one kept in `<state_dir>/device-id`, created
/// (a random UUID) on first use.
pub fn device_id(explicit: Option<&str>, state_dir: &Path) -> Result<String, ConfigError> {
    if let Some(id) = explicit {
        return Ok(id.trim().to_string());
    }
    let path = state_dir.join(DEVICE_ID_FILE);
    let shown = path.display().to_string();
    match std::fs::read_to_string(&path) {
        Ok(contents) => {
            let id = contents.trim().to_string();
            if id.is_empty() {
                return Err(ConfigError::DeviceIdFile {
                    path: shown,
                    reason: "the file is empty (delete it to get a new id)".to_string(),
                });
            }
            Ok(id)
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            let id = Uuid::new_v4().to_string();
            write_atomic(&path, format!("{id}\n").as_bytes(), 0o600).map_err(|source| {
                ConfigError::StateDir {
                    path: state_dir.display().to_string(),
                    source,
                }
            })?;
            Ok(id)
        }
        Err(source) => Err(ConfigError::StateDir {
            path: shown,
            source,
        }),
    }
}

/// The host name, the default device name.
pub fn host_name() -> Result<String, ConfigError> {
    let name =
        std::fs::read_to_string("/proc/sys/kernel/hostname").map_err(ConfigError::Hostname)?;
    let name = name.trim();
    if name.is_empty() {
        return Err(ConfigError::Hostname(io::Error::new(
            io::ErrorKind::InvalidData,
            "the kernel's host name is empty",
        )));
    }
    Ok(name.to_string())
}

/// Parses a duration such as `30s`, `5m`, `1h` or `2d`.
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    let value = value.trim();
    let invalid = || {
        format!("'{value}' is not a duration: use a number and a unit, such as 30s, 5m, 1h or 2d")
    };
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(invalid)?;
    let (number, unit) = value.split_at(split);
    let number: u64 = number.parse().map_err(|_| invalid())?;
    if number == 0 {
        return Err(format!("'{value}': the duration must be longer than zero"));
    }
    let unit_secs = match unit {
        "s" | "sec" => 1,
        "m" | "min" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(invalid()),
    };
    number
        .checked_mul(unit_secs)
        .map(Duration::from_secs)
        .ok_or_else(invalid)
}

/// Where a device keeps its state, and the common settings resolved from the command line.
#[derive(Debug)]
pub struct DeviceConfig {
    pub token: Token,
    /// The portal nodes, in the order they are tried (at least one).
    pub portals: Vec<Url>,
    pub state_dir: PathBuf,
    pub params: ConnectParams,
    pub max_partition: Option<Duration>,
    /// TLS trusting only `--ca-file`'s certificates; `None`: the public roots.
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    /// With workload identity: what exchanges ID tokens, and the token it got first (renewed
    /// by the session loop). Taken by [`crate::session::run`].
    pub exchanged: Option<(crate::workload::Exchanger, crate::workload::ExchangedToken)>,
}

/// What each binary passes to [`DeviceConfig::load`].
pub struct DeviceSettings<'a> {
    pub program: &'a str,
    pub kind: TokenKind,
    pub env_token: Option<SecretString>,
    pub token_path: &'a Path,
    pub api_urls: &'a [String],
    pub insecure: bool,
    pub ca_file: Option<&'a Path>,
    pub state_dir: &'a Path,
    pub id: Option<&'a str>,
    pub name: Option<&'a str>,
    pub version: &'a str,
    pub public_key: Option<postern_protocol::WireGuardKey>,
    /// Gateways: where clients reach the WireGuard listener.
    pub endpoint: Option<String>,
    /// Clients: `--ephemeral`.
    pub ephemeral: bool,
    pub max_partition: Option<Duration>,
    /// Clients: exchange the workload's ID token for tokens instead of holding one.
    pub workload: Option<crate::workload::WorkloadIdentity>,
}

impl DeviceConfig {
    pub fn load(settings: DeviceSettings<'_>) -> Result<Self, ConfigError> {
        let portals = settings
            .api_urls
            .iter()
            .filter(|url| !url.trim().is_empty())
            .map(|url| portal_base_url(url, settings.insecure))
            .collect::<Result<Vec<Url>, ConfigError>>()?;
        if portals.is_empty() {
            return Err(ConfigError::InvalidUrl {
                url: String::new(),
                reason: "no portal URL given (--api-url)".into(),
            });
        }
        let tls = settings.ca_file.map(tls_trusting).transpose()?;
        let (token, exchanged) = match settings.workload {
            None => {
                let token = load_token(
                    settings.env_token,
                    settings.token_path,
                    settings.kind,
                    settings.program,
                )?;
                (token, None)
            }
            Some(workload) => {
                if let Some(_secret) = settings.env_token {
                    return Err(ConfigError::TwoTokenSources {
                        origin: format!("the {TOKEN_ENV} environment variable"),
                        source_name: workload.source.to_string(),
                    });
                }
                let exchanger =
                    crate::workload::Exchanger::new(workload, portals.clone(), tls.clone())?;
                let first =
                    crate::workload::first_exchange(&exchanger).map_err(ConfigError::Exchange)?;
                let token = Token {
                    secret: SecretString::new(first.secret.expose().to_string()),
                    id: first.token_id,
                    origin: format!("an exchange of {}", exchanger.source()),
                    file: None,
                };
                (token, Some((exchanger, first)))
            }
        };
        ensure_state_dir(settings.state_dir)?;
        let id = device_id(settings.id, settings.state_dir)?;
        let name = match settings.name {
            Some(name) => name.trim().to_string(),
            None => host_name()?,
        };
        let params = ConnectParams {
            id,
            name,
            version: settings.version.to_string(),
            public_key: settings.public_key,
            endpoint: settings.endpoint,
            ephemeral: settings.ephemeral,
        };
        params.validate().map_err(ConfigError::Params)?;
        Ok(Self {
            token,
            portals,
            state_dir: settings.state_dir.to_path_buf(),
            params,
            max_partition: settings.max_partition,
            tls,
            exchanged,
        })
    }
}

/// A TLS client configuration that trusts exactly the CA certificates in `path` (PEM).
pub fn tls_trusting(path: &Path) -> Result<std::sync::Arc<rustls::ClientConfig>, ConfigError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let error = |reason: String| ConfigError::CaFile {
        path: path.display().to_string(),
        reason,
    };
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|err| error(err.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| error(err.to_string()))?;
    if certificates.is_empty() {
        return Err(error("no PEM 'CERTIFICATE' block in the file".to_string()));
    }
    let mut roots = rustls::RootCertStore::empty();
    for certificate in certificates {
        roots
            .add(certificate)
            .map_err(|err| error(format!("not a usable CA certificate: {err}")))?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| error(err.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(std::sync::Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn token(kind: TokenKind) -> String {
        let key = postern_token::HashKey::generate();
        postern_token::generate(kind, Uuid::now_v7(), &key)
            .secret
            .expose()
            .to_string()
    }

    #[test]
    fn a_replaced_token_file_holds_the_new_token_with_its_owner_and_mode_600() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let old = token(TokenKind::Client);
        let path = token_file(dir.path(), &old, 0o400);
        let nobody = 65534;
        std::os::unix::fs::chown(&path, Some(nobody), Some(nobody)).unwrap();
        let new = token(TokenKind::Client);
        replace_token_file(&path, &SecretString::new(new.clone())).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
        assert_eq!((meta.uid(), meta.gid()), (nobody, nobody));
        let loaded = load_token(None, &path, TokenKind::Client, "postern-client").unwrap();
        assert_eq!(loaded.secret.expose(), new);
        assert_eq!(loaded.file.as_deref(), Some(path.as_path()));
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers.len(), 1, "no temporary file left: {leftovers:?}");
        // A directory that cannot be written keeps the old file as it was.
        assert!(
            replace_token_file(&dir.path().join("missing/token"), &SecretString::new(new)).is_err()
        );
    }

    fn token_file(dir: &Path, contents: &str, mode: u32) -> PathBuf {
        let path = dir.join("token");
        let mut file = File::create(&path).unwrap();
        file.write_all(contents.as_bytes()).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn a_token_file_readable_by_others_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = token_file(dir.path(), &token(TokenKind::Client), 0o644);
        let err = load_token(None, &path, TokenKind::Client, "postern-client").unwrap_err();
        let shown = path.display().to_string();
        assert_eq!(
            err.to_string(),
            format!(
                "token file {shown} has mode 0644: it must not be readable by group or others \
                 (chmod 600 {shown})"
            )
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(matches!(
            load_token(None, &path, TokenKind::Client, "postern-client"),
            Err(ConfigError::TokenFileMode { mode: 0o640, .. })
        ));
    }

    #[test]
    fn a_private_token_file_is_read_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let secret = token(TokenKind::Client);
        let path = token_file(dir.path(), &format!("  {secret}\n\n"), 0o600);
        let loaded = load_token(None, &path, TokenKind::Client, "postern-client").unwrap();
        assert_eq!(loaded.secret.expose(), secret);
        assert_eq!(loaded.origin, path.display().to_string());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert!(load_token(None, &path, TokenKind::Client, "postern-client").is_ok());
    }

    #[test]
    fn a_missing_token_file_names_the_path_and_the_env_alternative() {
        let err = load_token(
            None,
            Path::new("/nonexistent/postern/token"),
            TokenKind::Client,
            "postern-client",
        )
        .unwrap_err();
        let message = err.to_string();
        assert!(message.contains("/nonexistent/postern/token"), "{message}");
        assert!(message.contains("POSTERN_TOKEN"), "{message}");
    }

    #[test]
    fn the_kind_must_match_and_the_error_says_which_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let path = token_file(dir.path(), &token(TokenKind::Gateway), 0o600);
        let err = load_token(None, &path, TokenKind::Client, "postern-client").unwrap_err();
        let message = err.to_string();
        assert!(message.contains("is a gateway token"), "{message}");
        assert!(message.contains("needs a client token"), "{message}");
        let path = token_file(dir.path(), "postern_client_nope", 0o600);
        assert!(matches!(
            load_token(None, &path, TokenKind::Client, "postern-client"),
            Err(ConfigError::TokenMalformed { .. })
        ));
    }

    #[test]
    fn the_env_token_is_taken_and_removed_from_the_environment() {
        // The only test that touches POSTERN_TOKEN; nextest runs each test in its own process.
        let secret = token(TokenKind::Gateway);
        std::env::set_var(TOKEN_ENV, format!("{secret}\n"));
        let taken = take_token_from_env().unwrap();
        assert_eq!(taken.expose(), secret);
        assert!(std::env::var_os(TOKEN_ENV).is_none());
        assert!(take_token_from_env().is_none());
        // The environment wins over the file, which need not exist.
        let loaded = load_token(
            Some(taken),
            Path::new("/nonexistent"),
            TokenKind::Gateway,
            "postern-gateway",
        )
        .unwrap();
        assert!(loaded.origin.contains(TOKEN_ENV));
    }

    #[test]
    fn loopback_may_be_plain_anything_else_needs_tls_or_insecure() {
        for ok in [
            "http://127.0.0.1:8080",
            "http://127.1.2.3",
            "http://[::1]:8080",
            "http://localhost:8080",
            "ws://LOCALHOST",
        ] {
            let url = portal_base_url(ok, false).unwrap();
            assert_eq!(url.scheme(), "ws", "{ok}");
        }
        for refused in [
            "http://portal.example.com",
            "ws://10.0.0.1:8080",
            "http://[fd00::1]",
            "http://localhost.example.com",
        ] {
            assert!(
                matches!(
                    portal_base_url(refused, false),
                    Err(ConfigError::InsecureUrl { .. })
                ),
                "{refused}"
            );
            assert_eq!(portal_base_url(refused, true).unwrap().scheme(), "ws");
        }
        assert_eq!(
            portal_base_url("https://portal.example.com", false)
                .unwrap()
                .scheme(),
            "wss"
        );
        for bad in [
            "ftp://portal.example.com",
            "portal.example.com",
            "https://user:pw@portal.example.com",
            "https://portal.example.com/?x=1",
        ] {
            assert!(
                matches!(
                    portal_base_url(bad, false),
                    Err(ConfigError::InvalidUrl { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_session_url_joins_the_path_and_carries_only_the_params() {
        let params = ConnectParams {
            id: "dev-1".into(),
            name: "build box #1".into(),
            version: "0.1.0".into(),
            public_key: None,
            endpoint: None,
            ephemeral: false,
        };
        let base = portal_base_url("https://portal.example.com/postern/", false).unwrap();
        let url = session_url(&base, "/v1/client/websocket", &params);
        assert_eq!(
            url.as_str(),
            "wss://portal.example.com/postern/v1/client/websocket?id=dev-1&name=build+box+%231&version=0.1.0"
        );
        let base = portal_base_url("http://127.0.0.1:8080", false).unwrap();
        assert_eq!(
            session_url(&base, "/v1/gateway/websocket", &params).path(),
            "/v1/gateway/websocket"
        );
    }

    #[test]
    fn the_device_id_is_generated_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        ensure_state_dir(&state).unwrap();
        let mode = std::fs::metadata(&state).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let first = device_id(None, &state).unwrap();
        assert!(Uuid::parse_str(&first).is_ok());
        assert_eq!(device_id(None, &state).unwrap(), first);
        assert_eq!(device_id(Some("explicit"), &state).unwrap(), "explicit");
        assert_eq!(device_id(None, &state).unwrap(), first);
        std::fs::write(state.join(DEVICE_ID_FILE), "\n").unwrap();
        assert!(matches!(
            device_id(None, &state),
            Err(ConfigError::DeviceIdFile { .. })
        ));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
        for bad in [
            "",
            "s",
            "10",
            "0s",
            "-1s",
            "1w",
            "1.5h",
            "99999999999999999999d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
