//! The TLS flags both binaries take (`--tls-ca --tls-cert --tls-key`, an identity to
//! require of the peer, `--insecure-plaintext`), validated once into a [`TransportChoice`].
//! Each binary adds only its own rule on top (typha insists on a client identity).

use std::path::PathBuf;
use std::sync::Arc;

use rustls::ClientConfig;

use super::{PeerIdentity, TlsError, TlsFiles, TlsMaterial, client_config};

/// How a binary secures its gRPC stream, once its flags are validated (serializable: the
/// load test hands it to its agent worker processes).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum TransportChoice {
    /// Mutual TLS from these files, requiring this identity of the peer.
    Tls(TlsFiles, PeerIdentity),
    /// No TLS (development only; the binaries log it loudly).
    Plaintext,
}

/// The TLS flags do not form a transport.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsFlagsError {
    /// Some but not all of the three files, or none without plaintext.
    #[error(
        "--tls-ca, --tls-cert and --tls-key are all required (or --insecure-plaintext for development)"
    )]
    Incomplete,
    /// Plaintext together with TLS files or an identity.
    #[error("--insecure-plaintext cannot be combined with TLS files or a peer identity")]
    Contradictory,
}

impl TransportChoice {
    /// A client's TLS configuration for this transport, requiring the server's identity
    /// (`None`: plaintext).
    pub fn client_config(&self) -> Result<Option<Arc<ClientConfig>>, TlsError> {
        match self {
            TransportChoice::Tls(files, server) => {
                Ok(Some(client_config(&TlsMaterial::load(files)?, server)?))
            }
            TransportChoice::Plaintext => Ok(None),
        }
    }

    /// Validates the flags: all three files (TLS), or explicit plaintext with none of them.
    pub fn from_flags(
        ca: &Option<PathBuf>,
        cert: &Option<PathBuf>,
        key: &Option<PathBuf>,
        identity: PeerIdentity,
        plaintext: bool,
    ) -> Result<TransportChoice, TlsFlagsError> {
        let any_tls = ca.is_some() || cert.is_some() || key.is_some() || !identity.is_empty();
        match (ca, cert, key) {
            _ if plaintext && any_tls => Err(TlsFlagsError::Contradictory),
            _ if plaintext => Ok(TransportChoice::Plaintext),
            (Some(ca), Some(cert), Some(key)) => Ok(TransportChoice::Tls(
                TlsFiles {
                    ca: ca.clone(),
                    cert: cert.clone(),
                    key: key.clone(),
                },
                identity,
            )),
            _ => Err(TlsFlagsError::Incomplete),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Option<PathBuf> {
        Some(PathBuf::from(s))
    }

    #[test]
    fn all_three_files_or_explicit_plaintext() {
        let none = PeerIdentity::default();
        let tls = TransportChoice::from_flags(&p("a"), &p("b"), &p("c"), none.clone(), false);
        assert!(matches!(tls, Ok(TransportChoice::Tls(_, ref id)) if id.is_empty()));
        assert_eq!(
            TransportChoice::from_flags(&p("a"), &None, &p("c"), none.clone(), false),
            Err(TlsFlagsError::Incomplete)
        );
        assert_eq!(
            TransportChoice::from_flags(&None, &None, &None, none.clone(), false),
            Err(TlsFlagsError::Incomplete)
        );
        assert_eq!(
            TransportChoice::from_flags(&None, &None, &None, none.clone(), true),
            Ok(TransportChoice::Plaintext)
        );
        assert_eq!(
            TransportChoice::from_flags(&p("a"), &None, &None, none, true),
            Err(TlsFlagsError::Contradictory)
        );
        assert_eq!(
            TransportChoice::from_flags(&None, &None, &None, PeerIdentity::with_cn("x"), true),
            Err(TlsFlagsError::Contradictory)
        );
    }
}
