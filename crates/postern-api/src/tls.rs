//! The portal's TLS certificate: read from PEM files, served by rustls, and replaced when the
//! files change or on SIGHUP. Only new connections see a new certificate; open connections and
//! their WebSocket sessions keep going. A certificate that cannot be read or does not match its
//! key is refused with an error naming the file, and the previous one stays in use.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::RwLock;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// How often the files are checked for a change.
const POLL: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the TLS certificate {path}: {reason}")]
    Certificate { path: PathBuf, reason: String },
    #[error("cannot read the TLS private key {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("cannot set up TLS: {0}")]
    Config(String),
    #[error("the TLS private key {key} does not belong to the certificate {cert}: {reason}")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
}

/// Where the certificate chain and its private key are.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    fn modified(&self) -> (Option<SystemTime>, Option<SystemTime>) {
        let modified = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
        (modified(&self.cert), modified(&self.key))
    }

    fn load(&self, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
        let certificate_error = |reason: String| TlsError::Certificate {
            path: self.cert.clone(),
            reason,
        };
        let chain = CertificateDer::pem_file_iter(&self.cert)
            .map_err(|err| certificate_error(err.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| certificate_error(err.to_string()))?;
        if chain.is_empty() {
            return Err(certificate_error(
                "no PEM 'CERTIFICATE' block in the file".to_string(),
            ));
        }
        let key = PrivateKeyDer::from_pem_file(&self.key).map_err(|err| TlsError::Key {
            path: self.key.clone(),
            reason: err.to_string(),
        })?;
        CertifiedKey::from_der(chain, key, provider).map_err(|err| TlsError::Mismatch {
            cert: self.cert.clone(),
            key: self.key.clone(),
            reason: err.to_string(),
        })
    }
}

/// The certificate in use, swapped atomically when its files change.
pub struct ReloadingCertificate {
    files: TlsFiles,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
    seen: parking_lot::Mutex<(Option<SystemTime>, Option<SystemTime>)>,
}

impl std::fmt::Debug for ReloadingCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingCertificate")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl ReloadingCertificate {
    /// Reads the files once; fails if they are not a certificate chain and its key.
    pub fn load(files: TlsFiles) -> Result<Arc<Self>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let seen = files.modified();
        let certified = files.load(&provider)?;
        Ok(Arc::new(Self {
            files,
            provider,
            current: RwLock::new(Arc::new(certified)),
            seen: parking_lot::Mutex::new(seen),
        }))
    }

    /// Reads the files again; on failure the certificate in use stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        *self.seen.lock() = self.files.modified();
        let certified = self.files.load(&self.provider)?;
        *self.current.write() = Arc::new(certified);
        Ok(())
    }

    /// The rustls configuration that serves this certificate (HTTP/2 and HTTP/1.1).
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let mut config = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|err| TlsError::Config(err.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    fn changed(&self) -> bool {
        *self.seen.lock() != self.files.modified()
    }

    /// Reloads when the files change (checked every 2 s) and on SIGHUP, until the task is
    /// aborted.
    pub fn spawn_reloader(self: &Arc<Self>) -> std::io::Result<tokio::task::JoinHandle<()>> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangup = signal(SignalKind::hangup())?;
        let certificate = self.clone();
        Ok(tokio::spawn(async move {
            let mut poll = tokio::time::interval(POLL);
            poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let cause = tokio::select! {
                    _ = hangup.recv() => "SIGHUP",
                    _ = poll.tick() => {
                        if !certificate.changed() {
                            continue;
                        }
                        "its files changed"
                    }
                };
                match certificate.reload() {
                    Ok(()) => tracing::info!(
                        cert = %certificate.files.cert.display(),
                        "reloaded the TLS certificate ({cause}); new connections use it"
                    ),
                    Err(err) => tracing::error!(
                        error = %err,
                        "keeping the previous TLS certificate ({cause})"
                    ),
                }
            }
        }))
    }
}

impl ResolvesServerCert for ReloadingCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().clone())
    }
}
