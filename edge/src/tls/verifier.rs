//! rustls certificate verifiers that add Calico's identity check to WebPki chain checks.
//!
//! - [`ClientIdentityVerifier`] (server side): delegates everything to a mandatory
//!   `WebPkiClientVerifier` built from the current CA (swapped by a reload), then requires
//!   the client's CN / URI SAN to match. rustls is given no root hint subjects: the hints
//!   would have to borrow from the swappable CA, and our clients present their one
//!   certificate regardless.
//! - [`ServerIdentityVerifier`] (client side, when `--typha-cn` / `--typha-uri-san` is set):
//!   verifies the chain to the CA (validity, serverAuth usage) but replaces the hostname
//!   check with the CN / URI SAN check.
//!
//! Invariant: the identity check runs only after the chain verified, so an identity error
//! always means "trusted CA, wrong peer". Its rustls error is
//! `InvalidCertificate(Other(IdentityMismatch))`, which `HandshakeFailure` classifies.

use std::sync::Arc;

use parking_lot::RwLock;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::crypto::{
    CryptoProvider, WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature,
};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error, OtherError, RootCertStore,
    SignatureScheme,
};

use super::identity::PeerIdentity;

fn check_identity(expected: &PeerIdentity, cert: &CertificateDer<'_>) -> Result<(), Error> {
    expected.check(cert).map_err(|mismatch| {
        Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(mismatch))))
    })
}

/// Server-side verifier: WebPki client-certificate verification against the current CA,
/// plus the identity rule (which never changes).
#[derive(Debug)]
pub(super) struct ClientIdentityVerifier {
    chain: RwLock<Arc<dyn ClientCertVerifier>>,
    expected: PeerIdentity,
}

impl ClientIdentityVerifier {
    /// Checks chains with `chain` (a mandatory WebPki verifier) and identities against
    /// `expected`.
    pub(super) fn new(chain: Arc<dyn ClientCertVerifier>, expected: PeerIdentity) -> Self {
        Self {
            chain: RwLock::new(chain),
            expected,
        }
    }

    /// Checks the chains of later handshakes with `chain` (built from a new CA).
    pub(super) fn replace_chain(&self, chain: Arc<dyn ClientCertVerifier>) {
        *self.chain.write() = chain;
    }

    fn chain(&self) -> Arc<dyn ClientCertVerifier> {
        self.chain.read().clone()
    }
}

impl ClientCertVerifier for ClientIdentityVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let verified = self
            .chain()
            .verify_client_cert(end_entity, intermediates, now)?;
        check_identity(&self.expected, end_entity)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.chain().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.chain().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chain().supported_verify_schemes()
    }
}

/// Client-side verifier used when a server identity is configured: chain to the CA, then
/// CN / URI SAN instead of the dialled hostname.
#[derive(Debug)]
pub(super) struct ServerIdentityVerifier {
    roots: Arc<RootCertStore>,
    expected: PeerIdentity,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerIdentityVerifier {
    pub(super) fn new(
        roots: Arc<RootCertStore>,
        expected: PeerIdentity,
        provider: &CryptoProvider,
    ) -> Self {
        Self {
            roots,
            expected,
            algs: provider.signature_verification_algorithms,
        }
    }
}

impl ServerCertVerifier for ServerIdentityVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.algs.all,
        )?;
        check_identity(&self.expected, end_entity)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }

    fn root_hint_subjects(&self) -> Option<&[DistinguishedName]> {
        None
    }
}
