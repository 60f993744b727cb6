//! A client token from the workload's identity, without a stored secret: the workload's OIDC
//! ID token (a file its platform keeps fresh, such as a Kubernetes projected service-account
//! token, or a command that prints one, such as a CI job's token request) is exchanged at the
//! portal (`POST /v1/workload-identity/exchange`) for a short-lived client token, and exchanged
//! again before that one ends. Each renewal presents the current token, so the portal moves the
//! device's grants to the new one and the tunnels carry on.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use chrono::{DateTime, Utc};
use postern_token::{SecretString, TokenKind};
use serde::Deserialize;
use tokio::io::AsyncReadExt;
use tokio::sync::watch;
use tracing::{info, warn};
use url::Url;
use uuid::Uuid;

use crate::config::ConfigError;

/// The path of the exchange under the portal's base URL.
pub const EXCHANGE_PATH: &str = "v1/workload-identity/exchange";
/// How long one exchange may take (the portal may fetch the issuer's keys).
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(20);
/// How long an `--id-token-command` may run.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// The most an ID token (file or command output) may hold.
const MAX_ID_TOKEN_BYTES: usize = 16 * 1024;
/// Retries after a failed renewal start here and double up to the maximum.
const FIRST_RETRY: Duration = Duration::from_secs(5);
const MAX_RETRY: Duration = Duration::from_secs(120);

/// Where the workload's ID token comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdTokenSource {
    /// A file, read again at each exchange (its platform replaces it).
    File(PathBuf),
    /// A shell command that prints the token on its standard output.
    Command(String),
}

impl std::fmt::Display for IdTokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(path) => write!(f, "the ID token file {}", path.display()),
            Self::Command(command) => write!(f, "the ID token command `{command}`"),
        }
    }
}

/// How the device gets its tokens by exchange.
#[derive(Debug, Clone)]
pub struct WorkloadIdentity {
    pub source: IdTokenSource,
    /// The trust rule to use, when the ID token matches several.
    pub workload_identity_id: Option<Uuid>,
    /// The account whose trust rules the portal looks at (its slug; the portal's default
    /// account when `None`).
    pub account: Option<String>,
}

/// A token the portal issued for the ID token.
#[derive(Debug)]
pub struct ExchangedToken {
    pub token_id: Uuid,
    pub secret: SecretString,
    pub expires_at: DateTime<Utc>,
    /// When it should be exchanged for the next one.
    pub renew_at: DateTime<Utc>,
}

impl Clone for ExchangedToken {
    /// The renewal task and the session loop each hold the current token.
    fn clone(&self) -> Self {
        Self {
            token_id: self.token_id,
            secret: SecretString::new(self.secret.expose().to_string()),
            expires_at: self.expires_at,
            renew_at: self.renew_at,
        }
    }
}

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error("cannot read {source_name}: {reason}")]
    IdToken { source_name: String, reason: String },
    #[error("the portal refused the ID token ({status}): {detail}")]
    Refused { status: u16, detail: String },
    #[error("cannot reach the portal at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("the portal's answer is not an exchanged client token: {0}")]
    BadAnswer(String),
}

impl ExchangeError {
    /// Whether trying again later may help (the ID token itself was not refused).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Refused { status, .. } => *status == 429 || *status >= 500,
            Self::IdToken { .. } | Self::Unreachable { .. } => true,
            Self::BadAnswer(_) => false,
        }
    }
}

/// When to renew a token issued at `now` that ends at `expires_at`: with a third of its life
/// left (for the usual hour, 20 minutes before), so a few failed tries still fit.
pub fn renew_at(now: DateTime<Utc>, expires_at: DateTime<Utc>) -> DateTime<Utc> {
    let life = (expires_at - now).max(chrono::Duration::zero());
    now + life * 2 / 3
}

/// Exchanges ID tokens at the portal.
#[derive(Clone)]
pub struct Exchanger {
    identity: WorkloadIdentity,
    portals: Vec<Url>,
    http: reqwest::Client,
}

#[derive(Deserialize)]
struct Answer {
    data: AnswerData,
}

#[derive(Deserialize)]
struct AnswerData {
    secret: String,
    token_id: Uuid,
    expires_at: DateTime<Utc>,
}

#[derive(Deserialize)]
struct Problem {
    detail: Option<String>,
    title: Option<String>,
}

impl std::fmt::Debug for Exchanger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exchanger")
            .field("identity", &self.identity)
            .field("portals", &self.portals)
            .finish_non_exhaustive()
    }
}

impl Exchanger {
    pub fn new(
        identity: WorkloadIdentity,
        portals: Vec<Url>,
        tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    ) -> Result<Self, ConfigError> {
        // No pooled connections: the first exchange runs on a runtime of its own, and an
        // exchange is rare (once per token lifetime).
        let mut builder = reqwest::Client::builder()
            .timeout(EXCHANGE_TIMEOUT)
            .pool_max_idle_per_host(0)
            .user_agent(concat!("postern-client/", env!("CARGO_PKG_VERSION")));
        if let Some(tls) = tls {
            builder = builder.use_preconfigured_tls((*tls).clone());
        }
        let http = builder.build().map_err(|err| ConfigError::InvalidUrl {
            url: String::new(),
            reason: format!("cannot set up HTTPS for the exchange: {err}"),
        })?;
        // The portal URLs are kept as the session's ws:// or wss://; the exchange is HTTP.
        let portals = portals
            .into_iter()
            .map(|mut url| {
                let scheme = if url.scheme() == "wss" {
                    "https"
                } else {
                    "http"
                };
                let _ = url.set_scheme(scheme);
                url
            })
            .collect();
        Ok(Self {
            identity,
            portals,
            http,
        })
    }

    pub fn source(&self) -> &IdTokenSource {
        &self.identity.source
    }

    /// Reads a fresh ID token and exchanges it, presenting `current` (the token held now) so
    /// that the new one takes over from it. Each portal node is tried in turn while they
    /// cannot be reached.
    pub async fn exchange(
        &self,
        current: Option<&SecretString>,
    ) -> Result<ExchangedToken, ExchangeError> {
        let id_token = read_id_token(&self.identity.source).await?;
        let mut body = serde_json::json!({ "id_token": id_token.expose() });
        if let Some(id) = self.identity.workload_identity_id {
            body["workload_identity_id"] = serde_json::json!(id);
        }
        if let Some(account) = &self.identity.account {
            body["account"] = serde_json::json!(account);
        }
        if let Some(current) = current {
            body["actor_token"] = serde_json::json!(current.expose());
        }
        let mut last = None;
        for portal in &self.portals {
            let url = portal
                .join(EXCHANGE_PATH)
                .map_err(|err| ExchangeError::BadAnswer(err.to_string()))?;
            match self.http.post(url.clone()).json(&body).send().await {
                Ok(response) => return answer(response).await,
                Err(err) => {
                    last = Some(ExchangeError::Unreachable {
                        url: url.to_string(),
                        reason: err.to_string(),
                    })
                }
            }
        }
        Err(last.unwrap_or_else(|| ExchangeError::BadAnswer("no portal URL".into())))
    }
}

async fn answer(response: reqwest::Response) -> Result<ExchangedToken, ExchangeError> {
    let status = response.status();
    let bytes = response
        .bytes()
        .await
        .map_err(|err| ExchangeError::BadAnswer(err.to_string()))?;
    if !status.is_success() {
        let detail = serde_json::from_slice::<Problem>(&bytes)
            .ok()
            .and_then(|problem| problem.detail.or(problem.title))
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).chars().take(300).collect());
        return Err(ExchangeError::Refused {
            status: status.as_u16(),
            detail,
        });
    }
    let answer: Answer =
        serde_json::from_slice(&bytes).map_err(|err| ExchangeError::BadAnswer(err.to_string()))?;
    let secret = SecretString::new(answer.data.secret);
    let parsed = postern_token::parse(secret.expose())
        .map_err(|err| ExchangeError::BadAnswer(err.to_string()))?;
    if parsed.kind != TokenKind::Client || parsed.id != answer.data.token_id {
        return Err(ExchangeError::BadAnswer(
            "the secret is not the client token the answer names".into(),
        ));
    }
    let now = Utc::now();
    Ok(ExchangedToken {
        token_id: answer.data.token_id,
        secret,
        expires_at: answer.data.expires_at,
        renew_at: renew_at(now, answer.data.expires_at),
    })
}

/// Reads the ID token: the file as it is now, or what the command prints.
pub async fn read_id_token(source: &IdTokenSource) -> Result<SecretString, ExchangeError> {
    let failed = |reason: String| ExchangeError::IdToken {
        source_name: source.to_string(),
        reason,
    };
    let bytes = match source {
        IdTokenSource::File(path) => {
            let bytes = tokio::fs::read(path)
                .await
                .map_err(|err| failed(err.to_string()))?;
            if bytes.len() > MAX_ID_TOKEN_BYTES {
                return Err(failed(format!(
                    "it is larger than {MAX_ID_TOKEN_BYTES} bytes"
                )));
            }
            bytes
        }
        IdTokenSource::Command(command) => run_command(command).await.map_err(failed)?,
    };
    let text = String::from_utf8(bytes).map_err(|_| failed("it is not UTF-8 text".into()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(failed("it is empty".into()));
    }
    Ok(SecretString::new(token.to_string()))
}

async fn run_command(command: &str) -> Result<Vec<u8>, String> {
    let mut child = tokio::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|err| format!("cannot run it: {err}"))?;
    let Some(stdout) = child.stdout.take() else {
        return Err("its output cannot be read".into());
    };
    let run = async {
        let mut output = Vec::new();
        stdout
            .take(MAX_ID_TOKEN_BYTES as u64 + 1)
            .read_to_end(&mut output)
            .await
            .map_err(|err| format!("cannot read its output: {err}"))?;
        let status = child
            .wait()
            .await
            .map_err(|err| format!("cannot wait for it: {err}"))?;
        if !status.success() {
            return Err(format!("it failed ({status})"));
        }
        if output.len() > MAX_ID_TOKEN_BYTES {
            return Err(format!("it printed more than {MAX_ID_TOKEN_BYTES} bytes"));
        }
        Ok(output)
    };
    tokio::time::timeout(COMMAND_TIMEOUT, run)
        .await
        .map_err(|_| format!("it did not finish within {} s", COMMAND_TIMEOUT.as_secs()))?
}

/// The first exchange, before the device's session starts (on a runtime of its own: the
/// binaries load their configuration before theirs). A refused ID token, or one that cannot be
/// read, fails at once; an unreachable or busy portal is tried again with backoff.
pub fn first_exchange(exchanger: &Exchanger) -> Result<ExchangedToken, ExchangeError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| ExchangeError::Unreachable {
            url: String::new(),
            reason: format!("cannot start the async runtime: {err}"),
        })?;
    runtime.block_on(async {
        let mut retry = FIRST_RETRY;
        loop {
            match exchanger.exchange(None).await {
                Ok(token) => {
                    info!(
                        token = %token.token_id,
                        expires_at = %token.expires_at.to_rfc3339(),
                        "exchanged {} for a client token",
                        exchanger.source()
                    );
                    return Ok(token);
                }
                Err(err @ ExchangeError::IdToken { .. }) => return Err(err),
                Err(err) if err.is_transient() => {
                    warn!("{err}; trying again in {} s", retry.as_secs());
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(MAX_RETRY);
                }
                Err(err) => return Err(err),
            }
        }
    })
}

/// What the renewal task publishes: the token to use, and how renewing it goes.
#[derive(Debug, Clone)]
pub struct Renewal {
    pub token: ExchangedToken,
    /// Why the last try failed, until one succeeds.
    pub last_error: Option<String>,
}

impl Renewal {
    pub fn status(&self, source: &IdTokenSource) -> crate::status::WorkloadIdentityStatus {
        crate::status::WorkloadIdentityStatus {
            source: source.to_string(),
            token_id: self.token.token_id,
            token_expires_at: self.token.expires_at,
            renews_at: self.token.renew_at,
            last_error: self.last_error.clone(),
        }
    }
}

/// Keeps the device's token fresh: exchanges again at each token's renewal time (retrying with
/// backoff while that fails) and publishes each new token, and each failure. Runs until the
/// receiver is gone.
pub async fn renew(exchanger: Exchanger, first: ExchangedToken, renewals: watch::Sender<Renewal>) {
    let mut current = first;
    let mut retry = FIRST_RETRY;
    loop {
        let wait = (current.renew_at - Utc::now())
            .to_std()
            .unwrap_or(Duration::ZERO);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = renewals.closed() => return,
        }
        // An expired token cannot vouch for the device any more: start afresh.
        let presented = (current.expires_at > Utc::now()).then_some(&current.secret);
        let renewal = match exchanger.exchange(presented).await {
            Ok(next) => {
                info!(
                    token = %next.token_id,
                    replaced = %current.token_id,
                    expires_at = %next.expires_at.to_rfc3339(),
                    "exchanged {} for a new client token",
                    exchanger.source()
                );
                retry = FIRST_RETRY;
                current = next.clone();
                Renewal {
                    token: next,
                    last_error: None,
                }
            }
            Err(err) => {
                warn!(
                    "cannot renew the client token (it ends at {}): {err}; trying again in {} s",
                    current.expires_at.to_rfc3339(),
                    retry.as_secs()
                );
                current.renew_at = Utc::now()
                    + chrono::Duration::from_std(retry).unwrap_or(chrono::Duration::seconds(5));
                retry = (retry * 2).min(MAX_RETRY);
                Renewal {
                    token: current.clone(),
                    last_error: Some(err.to_string()),
                }
            }
        };
        if renewals.send(renewal).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_renewed_with_a_third_of_its_life_left() {
        let now = Utc::now();
        let at = renew_at(now, now + chrono::Duration::hours(1));
        assert_eq!(at, now + chrono::Duration::minutes(40));
        assert_eq!(renew_at(now, now - chrono::Duration::hours(1)), now);
    }

    #[tokio::test]
    async fn an_id_token_is_read_from_a_file_or_a_command() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "  header.payload.signature\n").unwrap();
        let read = read_id_token(&IdTokenSource::File(path.clone()))
            .await
            .unwrap();
        assert_eq!(read.expose(), "header.payload.signature");
        // Replaced by its platform: the next read sees the new one.
        std::fs::write(&path, "h.p2.s").unwrap();
        let read = read_id_token(&IdTokenSource::File(path.clone()))
            .await
            .unwrap();
        assert_eq!(read.expose(), "h.p2.s");

        let command = IdTokenSource::Command("printf 'h.p.s\\n'".into());
        assert_eq!(read_id_token(&command).await.unwrap().expose(), "h.p.s");

        let failing = IdTokenSource::Command("echo nope >&2; exit 3".into());
        let err = read_id_token(&failing).await.unwrap_err().to_string();
        assert!(err.contains("failed"), "{err}");
        let empty = IdTokenSource::Command("true".into());
        assert!(read_id_token(&empty)
            .await
            .unwrap_err()
            .to_string()
            .contains("empty"));
        let missing = IdTokenSource::File(dir.path().join("missing"));
        let err = read_id_token(&missing).await.unwrap_err().to_string();
        assert!(err.contains("missing"), "{err}");
        let huge = IdTokenSource::Command(format!(
            "head -c {} /dev/zero | tr '\\\\0' a",
            MAX_ID_TOKEN_BYTES + 10
        ));
        assert!(read_id_token(&huge).await.is_err());
    }
}
