//! TLS plumbing shared by typha (server) and felix-client (client): loading PEM material,
//! building rustls configs for the mutual-TLS gRPC stream, and naming handshake failures.
//!
//! Why: Calico authenticates both ends of the Typha stream by a CA plus an *identity*
//! (Subject CN or URI SAN) rather than by hostname, so the verifiers here wrap rustls's
//! WebPki verifiers and add that identity check (see [`verifier`]).
//!
//! [`ReloadableServerTls`] is the server config typha runs with: its certificate, key and
//! client CA are swapped at runtime by [`TlsFileWatcher`];
//! [`ReloadableCertKey`] also serves as a client's reloadable certificate resolver.
//!
//! Invariants:
//! - Both configs speak TLS 1.3 only, use the ring provider explicitly (they do not depend
//!   on the process-wide default provider) and advertise ALPN `h2` (the stream is HTTP/2).
//! - The server always demands a client certificate chained to the configured CA and a
//!   configured [`PeerIdentity`]; an empty identity is a configuration error, never "allow all".
//! - The client checks the server's identity when one is configured, otherwise the ordinary
//!   hostname (DNS / IP SAN) of the `ServerName` passed to `connect()`.

mod failure;
mod flags;
mod identity;
mod reload;
mod verifier;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

pub use failure::HandshakeFailure;
pub use flags::{TlsFlagsError, TransportChoice};
pub use identity::{IdentityMismatch, PeerIdentity, PresentedIdentity, peer_summary};
pub use reload::{ReloadOutcome, ReloadableCertKey, ReloadableServerTls, TlsFileWatcher};

/// The ALPN protocol both sides offer: gRPC runs over HTTP/2.
pub const ALPN_H2: &[u8] = b"h2";

/// Paths of the three PEM files a TLS endpoint needs (`--tls-ca --tls-cert --tls-key`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TlsFiles {
    /// CA bundle (one or more certificates) that peers must chain to.
    pub ca: PathBuf,
    /// This endpoint's certificate chain, end entity first.
    pub cert: PathBuf,
    /// This endpoint's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// The in-memory form of [`TlsFiles`]: raw PEM bytes, parsed when a config is built.
#[derive(Clone, PartialEq, Eq)]
pub struct TlsMaterial {
    /// PEM of the CA bundle.
    pub ca_pem: Vec<u8>,
    /// PEM of this endpoint's certificate chain.
    pub cert_pem: Vec<u8>,
    /// PEM of this endpoint's private key.
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for TlsMaterial {
    // Never print key material, even in debug logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("ca_pem_len", &self.ca_pem.len())
            .field("cert_pem_len", &self.cert_pem.len())
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

impl TlsMaterial {
    /// Reads the three files; the error names the file that could not be read.
    pub fn load(files: &TlsFiles) -> Result<Self, TlsError> {
        Ok(Self {
            ca_pem: read_file(&files.ca)?,
            cert_pem: read_file(&files.cert)?,
            key_pem: read_file(&files.key)?,
        })
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Why TLS material or configuration was rejected. None of these is retryable: they are
/// startup configuration errors to print and exit on.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A configured file could not be read (missing, permissions).
    #[error("cannot read {path}: {source}", path = path.display())]
    Read {
        /// The file that failed.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// A PEM input (`what`: "CA", "certificate") held no CERTIFICATE block.
    #[error("no certificate found in the {what} PEM")]
    NoCertificate {
        /// Which input: "CA" or "certificate".
        what: &'static str,
    },
    /// A PEM input was malformed.
    #[error("malformed {what} PEM: {source}")]
    Pem {
        /// Which input: "CA", "certificate" or "key".
        what: &'static str,
        /// The PEM parser's error.
        source: rustls::pki_types::pem::Error,
    },
    /// The key PEM held no private key block.
    #[error("no private key found in the key PEM")]
    NoKey,
    /// The private key is unusable: unsupported, corrupt, or not the certificate's key.
    #[error("unusable private key: {0}")]
    BadKey(#[source] rustls::Error),
    /// Neither a CN nor a URI SAN was configured for the peer (`which` names the flags).
    #[error("no peer identity configured: set {0}")]
    NoIdentity(&'static str),
    /// A CA certificate could not be used as a trust anchor.
    #[error("unusable CA certificate: {0}")]
    BadCa(#[source] rustls::Error),
    /// rustls refused to build a verifier from the CA bundle.
    #[error("cannot build certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// Any other rustls configuration error.
    #[error("TLS configuration error: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Builds the server config: TLS 1.3, ALPN h2, mandatory client certificate chained to the
/// CA whose CN or URI SAN matches `client`. It is [`ReloadableServerTls`]'s config, for a
/// server whose files never change (tests, the load test's in-process typha).
pub fn server_config(
    material: &TlsMaterial,
    client: &PeerIdentity,
) -> Result<Arc<ServerConfig>, TlsError> {
    Ok(ReloadableServerTls::new(material, client)?.config())
}

/// Builds the client config: TLS 1.3, ALPN h2, presents our certificate, and checks the
/// server's chain against the CA plus its CN / URI SAN (`server`), or, when `server` is
/// empty, the hostname of the `ServerName` given to `connect()`.
pub fn client_config(
    material: &TlsMaterial,
    server: &PeerIdentity,
) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let roots = Arc::new(root_store(&material.ca_pem)?);
    let key = certified_key(material, &provider)?;
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let builder = if server.is_empty() {
        builder.with_root_certificates(roots)
    } else {
        let verifier = verifier::ServerIdentityVerifier::new(roots, server.clone(), &provider);
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
    };
    let mut config = builder.with_client_cert_resolver(Arc::new(SingleCertAndKey::from(key)));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// The server's check of client certificate chains: mandatory, chained to the CA bundle
/// (the identity rule is [`verifier::ClientIdentityVerifier`]'s, around it).
fn chain_verifier(
    ca_pem: &[u8],
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let roots = Arc::new(root_store(ca_pem)?);
    Ok(WebPkiClientVerifier::builder_with_provider(roots, provider.clone()).build()?)
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn parse_certs(pem: &[u8], what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem { what, source })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { what });
    }
    Ok(certs)
}

fn root_store(ca_pem: &[u8]) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in parse_certs(ca_pem, "CA")? {
        roots.add(cert).map_err(TlsError::BadCa)?;
    }
    Ok(roots)
}

fn certified_key(
    material: &TlsMaterial,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let chain = parse_certs(&material.cert_pem, "certificate")?;
    let key = match PrivateKeyDer::from_pem_slice(&material.key_pem) {
        Ok(key) => key,
        Err(rustls::pki_types::pem::Error::NoItemsFound) => return Err(TlsError::NoKey),
        Err(source) => {
            return Err(TlsError::Pem {
                what: "key",
                source,
            });
        }
    };
    // Also checks that the key belongs to the end-entity certificate.
    CertifiedKey::from_der(chain, key, provider).map_err(TlsError::BadKey)
}

#[cfg(test)]
mod tests;
