//! Naming why a TLS handshake failed, for `typha_connections_dropped_total{reason}` and logs.
//!
//! Invariant: the label set is closed (seven `&'static str` values), so the metric's
//! cardinality is bounded whatever the peer sends. Classification reads the rustls error
//! that tokio-rustls wraps in the `io::Error` (our own verdict), or the alert the peer sent
//! (its verdict on us), and falls back to `Other`.

use std::io;

use rustls::{AlertDescription, CertificateError, Error, PeerIncompatible};

use super::identity::IdentityMismatch;

/// Why a handshake failed; [`HandshakeFailure::as_str`] is the metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HandshakeFailure {
    /// The client sent no certificate although one is mandatory.
    NoCertificate,
    /// The certificate does not chain to the configured CA (unknown issuer, or an issuer
    /// name that matches but a signature that does not verify).
    UnknownCa,
    /// The certificate chains to the CA but carries the wrong CN / URI SAN (or hostname).
    BadIdentity,
    /// The certificate is outside its validity window (expired or not yet valid).
    Expired,
    /// The peer does not speak TLS 1.3.
    ProtocolVersion,
    /// The handshake did not finish in time (an `io::ErrorKind::TimedOut` error).
    Timeout,
    /// Anything else: disconnects, garbage, unsupported algorithms.
    Other,
}

impl HandshakeFailure {
    /// Classifies the error of a tokio-rustls `accept`/`connect` (or of the first read that
    /// surfaced a post-handshake alert). Wrap a handshake deadline as `TimedOut`.
    pub fn classify(err: &io::Error) -> Self {
        if err.kind() == io::ErrorKind::TimedOut {
            return Self::Timeout;
        }
        let mut source = err
            .get_ref()
            .map(|e| e as &(dyn std::error::Error + 'static));
        while let Some(e) = source {
            if let Some(tls) = e.downcast_ref::<Error>() {
                return Self::from_rustls(tls);
            }
            source = e.source();
        }
        Self::Other
    }

    /// Classifies a rustls error directly.
    pub fn from_rustls(err: &Error) -> Self {
        match err {
            Error::NoCertificatesPresented => Self::NoCertificate,
            Error::InvalidCertificate(cert) => Self::from_certificate_error(cert),
            Error::PeerIncompatible(
                PeerIncompatible::Tls12NotOffered
                | PeerIncompatible::Tls12NotOfferedOrEnabled
                | PeerIncompatible::SupportedVersionsExtensionRequired
                | PeerIncompatible::ServerDoesNotSupportTls12Or13
                | PeerIncompatible::ServerTlsVersionIsDisabledByOurConfig,
            ) => Self::ProtocolVersion,
            Error::AlertReceived(alert) => Self::from_alert(*alert),
            _ => Self::Other,
        }
    }

    fn from_certificate_error(err: &CertificateError) -> Self {
        match err {
            // BadSignature: a trusted CA's *name* matched the issuer but its key did not sign
            // the certificate (e.g. two dev CAs with the same subject): not our CA either.
            CertificateError::UnknownIssuer | CertificateError::BadSignature => Self::UnknownCa,
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. } => Self::Expired,
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                Self::BadIdentity
            }
            CertificateError::Other(other) if other.0.is::<IdentityMismatch>() => Self::BadIdentity,
            _ => Self::Other,
        }
    }

    // The peer's verdict on our handshake. `CertificateUnknown` is what rustls sends for our
    // identity mismatch, `BadCertificate` for a hostname mismatch.
    fn from_alert(alert: AlertDescription) -> Self {
        match alert {
            AlertDescription::CertificateRequired => Self::NoCertificate,
            AlertDescription::UnknownCA => Self::UnknownCa,
            AlertDescription::CertificateExpired => Self::Expired,
            AlertDescription::CertificateUnknown | AlertDescription::BadCertificate => {
                Self::BadIdentity
            }
            AlertDescription::ProtocolVersion => Self::ProtocolVersion,
            _ => Self::Other,
        }
    }

    /// The metric label / log value, e.g. `"tls_unknown_ca"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::NoCertificate => "tls_no_certificate",
            Self::UnknownCa => "tls_unknown_ca",
            Self::BadIdentity => "tls_bad_identity",
            Self::Expired => "tls_expired",
            Self::ProtocolVersion => "tls_protocol_version",
            Self::Timeout => "tls_timeout",
            Self::Other => "tls_other",
        }
    }
}

impl std::fmt::Display for HandshakeFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
