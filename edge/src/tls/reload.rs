//! Certificate, key and CA reload without a restart.
//!
//! Why: certificates are short-lived (cert-manager renews them in place) and restarting a
//! replica moves thousands of clients. The rustls config is built once around two
//! swappable parts: [`ReloadableCertKey`] (the certificate and key this endpoint presents;
//! usable by a server or a client config) and the client verifier's chain check, built
//! from the current CA. A reload builds and checks both new parts first
//! and swaps them together, so a broken file (bad PEM, a key that is not the
//! certificate's) changes nothing: the error is logged and counted and the old material
//! stays. Only new handshakes see new material; established connections are untouched.
//!
//! [`TlsFileWatcher`] polls the three files (reads them every interval and compares the
//! bytes: the files are small, and this works for Kubernetes secret volumes, whose
//! updates are symlink swaps that inotify reports awkwardly). A content already tried,
//! good or bad, is not tried again, so a broken file counts one error, not one per poll.
//!
//! Invariants: the certificate and the CA verifier always come from the same successful
//! reload; a reload empties the TLS resumption cache (a resumed handshake checks no
//! certificate, so it would bypass a CA change); the client identity rule never changes;
//! rustls is given no root hint subjects (see [`super::verifier`]).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use rustls::client::ResolvesClientCert;
use rustls::pki_types::CertificateDer;
use rustls::server::{
    ClientHello, ResolvesServerCert, ServerSessionMemoryCache, StoresServerSessions,
};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, SignatureScheme};
use tokio_util::sync::CancellationToken;

use super::verifier::ClientIdentityVerifier;
use super::{ALPN_H2, PeerIdentity, TlsError, TlsFiles, TlsMaterial};

/// The certificate chain and key an endpoint presents, swappable at runtime. Serves as
/// a server's certificate resolver and as a client's certificate resolver.
pub struct ReloadableCertKey {
    current: RwLock<Arc<CertifiedKey>>,
}

impl fmt::Debug for ReloadableCertKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadableCertKey").finish_non_exhaustive()
    }
}

impl ReloadableCertKey {
    /// Presents `key` until the next [`ReloadableCertKey::replace`].
    pub fn new(key: CertifiedKey) -> ReloadableCertKey {
        ReloadableCertKey {
            current: RwLock::new(Arc::new(key)),
        }
    }

    /// Parses and checks the certificate and key of `material` (the CA is not used).
    pub fn from_material(material: &TlsMaterial) -> Result<ReloadableCertKey, TlsError> {
        Ok(ReloadableCertKey::new(super::certified_key(
            material,
            &super::provider(),
        )?))
    }

    /// Presents `key` to every later handshake.
    pub fn replace(&self, key: CertifiedKey) {
        *self.current.write() = Arc::new(key);
    }

    /// What is presented now.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.read().clone()
    }
}

impl ResolvesServerCert for ReloadableCertKey {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl ResolvesClientCert for ReloadableCertKey {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Sessions kept for TLS 1.3 resumption (rustls' default size).
const SESSION_CACHE_SIZE: usize = 256;

/// rustls' in-memory resumption cache, emptied by every reload: a resumed handshake
/// skips both certificates, so without this a client whose CA was just removed could
/// still resume, and a client would keep seeing the old server certificate.
#[derive(Debug)]
struct SessionCache {
    current: RwLock<Arc<ServerSessionMemoryCache>>,
}

impl SessionCache {
    fn new() -> SessionCache {
        SessionCache {
            current: RwLock::new(ServerSessionMemoryCache::new(SESSION_CACHE_SIZE)),
        }
    }

    fn clear(&self) {
        *self.current.write() = ServerSessionMemoryCache::new(SESSION_CACHE_SIZE);
    }

    fn get_cache(&self) -> Arc<ServerSessionMemoryCache> {
        self.current.read().clone()
    }
}

impl StoresServerSessions for SessionCache {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        self.get_cache().put(key, value)
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.get_cache().get(key)
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.get_cache().take(key)
    }

    fn can_cache(&self) -> bool {
        true
    }
}

/// A server TLS config whose certificate, key and client CA can be replaced while it
/// serves. Clones share the swappable parts.
#[derive(Clone, Debug)]
pub struct ReloadableServerTls {
    config: Arc<ServerConfig>,
    cert: Arc<ReloadableCertKey>,
    verifier: Arc<ClientIdentityVerifier>,
    sessions: Arc<SessionCache>,
}

impl ReloadableServerTls {
    /// Like [`super::server_config`] (TLS 1.3, ALPN h2, mandatory client certificate
    /// chained to the CA with `client`'s CN or URI SAN), with reloadable material.
    pub fn new(material: &TlsMaterial, client: &PeerIdentity) -> Result<Self, TlsError> {
        if client.is_empty() {
            return Err(TlsError::NoIdentity("--client-cn and/or --client-uri-san"));
        }
        let provider = super::provider();
        let chain = super::chain_verifier(&material.ca_pem, &provider)?;
        let verifier = Arc::new(ClientIdentityVerifier::new(chain, client.clone()));
        let cert = Arc::new(ReloadableCertKey::new(super::certified_key(
            material, &provider,
        )?));
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier.clone())
            .with_cert_resolver(cert.clone());
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        let sessions = Arc::new(SessionCache::new());
        config.session_storage = sessions.clone();
        Ok(ReloadableServerTls {
            config: Arc::new(config),
            cert,
            verifier,
            sessions,
        })
    }

    /// The config to serve with (the same one before and after reloads).
    pub fn config(&self) -> Arc<ServerConfig> {
        self.config.clone()
    }

    /// The certificate chain presented now (end entity first).
    pub fn certificate(&self) -> Vec<CertificateDer<'static>> {
        self.cert.current().cert.clone()
    }

    /// Checks `material` completely, then makes new handshakes use it (and forgets the
    /// sessions clients could resume, so every new connection is verified against it).
    /// On error nothing changes.
    pub fn reload(&self, material: &TlsMaterial) -> Result<(), TlsError> {
        let provider = super::provider();
        let chain = super::chain_verifier(&material.ca_pem, &provider)?;
        let key = super::certified_key(material, &provider)?;
        self.verifier.replace_chain(chain);
        self.cert.replace(key);
        self.sessions.clear();
        Ok(())
    }
}

/// What one poll of the files found.
#[derive(Debug)]
pub enum ReloadOutcome {
    /// The files hold what was last tried.
    Unchanged,
    /// New material is in use.
    Reloaded,
    /// The files changed but could not be used; the previous material stays.
    Failed(TlsError),
}

/// Polls the TLS files and reloads a [`ReloadableServerTls`] when they change.
#[derive(Debug)]
pub struct TlsFileWatcher {
    files: TlsFiles,
    tls: ReloadableServerTls,
    /// The content last tried (applied or rejected); `None` after a read error.
    last: Option<TlsMaterial>,
}

impl TlsFileWatcher {
    /// Watches `files`, whose current content `tls` was built from (`loaded`).
    pub fn new(files: TlsFiles, tls: ReloadableServerTls, loaded: TlsMaterial) -> Self {
        TlsFileWatcher {
            files,
            tls,
            last: Some(loaded),
        }
    }

    /// Reads the files once and reloads if their content is new; counts
    /// `typha_tls_reloads_total` / `typha_tls_reload_errors_total` and logs.
    pub fn check(&mut self) -> ReloadOutcome {
        let material = match TlsMaterial::load(&self.files) {
            Ok(material) => material,
            Err(error) => {
                // One error per streak of unreadable files (a rotation in progress
                // may briefly remove one).
                if self.last.take().is_some() {
                    metrics::counter!("typha_tls_reload_errors_total").increment(1);
                    tracing::error!(%error, "cannot read TLS files; keeping the current certificate");
                }
                return ReloadOutcome::Failed(error);
            }
        };
        if self.last.as_ref() == Some(&material) {
            return ReloadOutcome::Unchanged;
        }
        let outcome = match self.tls.reload(&material) {
            Ok(()) => {
                metrics::counter!("typha_tls_reloads_total").increment(1);
                tracing::info!(cert = %self.files.cert.display(), "TLS material reloaded");
                ReloadOutcome::Reloaded
            }
            Err(error) => {
                metrics::counter!("typha_tls_reload_errors_total").increment(1);
                tracing::error!(%error, "new TLS material rejected; keeping the current certificate");
                ReloadOutcome::Failed(error)
            }
        };
        self.last = Some(material);
        outcome
    }

    /// Checks every `interval` until `shutdown`.
    pub async fn run(mut self, interval: Duration, shutdown: CancellationToken) {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticks.tick() => {}
            }
            // File reads block: off the runtime.
            let checked = tokio::task::spawn_blocking(move || {
                self.check();
                self
            });
            match checked.await {
                Ok(watcher) => self = watcher,
                Err(error) => {
                    tracing::error!(%error, "TLS file check failed; no more reloads");
                    return;
                }
            }
        }
    }
}
