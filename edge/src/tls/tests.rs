#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::{AlertDescription, CertificateError, Error, OtherError, PeerIncompatible};

use super::*;
use crate::certs::{CertSpec, DEFAULT_CLIENT_CN, DEFAULT_CLIENT_URI_SAN, DevPki};

fn presented(cn: Option<&str>, uris: &[&str]) -> PresentedIdentity {
    PresentedIdentity {
        cn: cn.map(str::to_owned),
        uri_sans: uris.iter().map(|u| (*u).to_owned()).collect(),
    }
}

#[test]
fn identity_matches_cn_or_uri_san() {
    let both = PeerIdentity {
        cn: Some("typha-client".into()),
        uri_san: Some("spiffe://a".into()),
    };
    assert!(both.matches(&presented(Some("typha-client"), &[])));
    assert!(both.matches(&presented(Some("other"), &["spiffe://b", "spiffe://a"])));
    assert!(!both.matches(&presented(Some("other"), &["spiffe://b"])));
    assert!(!both.matches(&presented(None, &[])));

    let cn_only = PeerIdentity::with_cn("typha-client");
    assert!(!cn_only.matches(&presented(Some("Typha-Client"), &["typha-client"])));
    let uri_only = PeerIdentity::with_uri_san("spiffe://a");
    assert!(!uri_only.matches(&presented(Some("spiffe://a"), &[])));
    assert!(uri_only.matches(&presented(None, &["spiffe://a"])));
}

#[test]
fn empty_identity_matches_nothing() {
    let empty = PeerIdentity {
        cn: Some(String::new()),
        uri_san: Some(String::new()),
    };
    assert!(empty.is_empty());
    assert!(PeerIdentity::default().is_empty());
    assert!(!empty.matches(&presented(Some(""), &[""])));
}

#[test]
fn check_reports_expected_and_presented() {
    let pki = DevPki::generate().unwrap();
    let cert = CertificateDer::from_pem_slice(pki.client.cert_pem.as_bytes()).unwrap();
    PeerIdentity::with_cn(DEFAULT_CLIENT_CN)
        .check(&cert)
        .unwrap();
    let err = PeerIdentity::with_cn("typha-server")
        .check(&cert)
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("expected CN=typha-server"), "{msg}");
    assert!(msg.contains("CN=typha-client"), "{msg}");
    assert_eq!(
        peer_summary(&cert),
        format!("CN={DEFAULT_CLIENT_CN}, URI={DEFAULT_CLIENT_URI_SAN}")
    );
    assert_eq!(
        peer_summary(&CertificateDer::from(vec![1, 2, 3])),
        "<unparseable certificate>"
    );
}

fn io_wrap(err: Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, err)
}

#[test]
fn classify_maps_rustls_errors_and_alerts() {
    let mismatch = IdentityMismatch {
        expected: PeerIdentity::with_cn("a"),
        presented: None,
    };
    let cases = [
        (
            Error::NoCertificatesPresented,
            HandshakeFailure::NoCertificate,
        ),
        (
            Error::InvalidCertificate(CertificateError::UnknownIssuer),
            HandshakeFailure::UnknownCa,
        ),
        (
            Error::InvalidCertificate(CertificateError::BadSignature),
            HandshakeFailure::UnknownCa,
        ),
        (
            Error::InvalidCertificate(CertificateError::Expired),
            HandshakeFailure::Expired,
        ),
        (
            Error::InvalidCertificate(CertificateError::NotValidYet),
            HandshakeFailure::Expired,
        ),
        (
            Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(mismatch)))),
            HandshakeFailure::BadIdentity,
        ),
        (
            Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(
                io::Error::other("unrelated"),
            )))),
            HandshakeFailure::Other,
        ),
        (
            Error::InvalidCertificate(CertificateError::NotValidForName),
            HandshakeFailure::BadIdentity,
        ),
        (
            Error::PeerIncompatible(PeerIncompatible::Tls12NotOfferedOrEnabled),
            HandshakeFailure::ProtocolVersion,
        ),
        (
            Error::PeerIncompatible(PeerIncompatible::NoCipherSuitesInCommon),
            HandshakeFailure::Other,
        ),
        (
            Error::AlertReceived(AlertDescription::UnknownCA),
            HandshakeFailure::UnknownCa,
        ),
        (
            Error::AlertReceived(AlertDescription::CertificateRequired),
            HandshakeFailure::NoCertificate,
        ),
        (
            Error::AlertReceived(AlertDescription::ProtocolVersion),
            HandshakeFailure::ProtocolVersion,
        ),
        (Error::DecryptError, HandshakeFailure::Other),
    ];
    for (err, want) in cases {
        let shown = format!("{err:?}");
        assert_eq!(HandshakeFailure::classify(&io_wrap(err)), want, "{shown}");
    }
}

#[test]
fn classify_handles_timeouts_and_plain_io_errors() {
    let timeout = io::Error::new(io::ErrorKind::TimedOut, "handshake deadline");
    assert_eq!(
        HandshakeFailure::classify(&timeout),
        HandshakeFailure::Timeout
    );
    let eof = io::Error::new(io::ErrorKind::UnexpectedEof, "tls handshake eof");
    assert_eq!(HandshakeFailure::classify(&eof), HandshakeFailure::Other);
    assert_eq!(HandshakeFailure::Timeout.as_str(), "tls_timeout");
    assert_eq!(
        HandshakeFailure::BadIdentity.to_string(),
        "tls_bad_identity"
    );
}

#[test]
fn server_config_requires_an_identity() {
    let pki = DevPki::generate().unwrap();
    let err = server_config(&pki.server_material(), &PeerIdentity::default()).unwrap_err();
    assert!(matches!(err, TlsError::NoIdentity(_)), "{err}");
    assert!(err.to_string().contains("--client-cn"));
}

#[test]
fn configs_speak_h2() {
    let pki = DevPki::generate().unwrap();
    let server = server_config(&pki.server_material(), &PeerIdentity::with_cn("x")).unwrap();
    assert_eq!(server.alpn_protocols, vec![b"h2".to_vec()]);
    let client = client_config(&pki.client_material(), &PeerIdentity::default()).unwrap();
    assert_eq!(client.alpn_protocols, vec![b"h2".to_vec()]);
}

#[test]
fn bad_material_gives_specific_errors() {
    let pki = DevPki::generate().unwrap();
    let id = PeerIdentity::with_cn("x");
    let good = pki.server_material();

    let no_ca = TlsMaterial {
        ca_pem: b"not pem at all".to_vec(),
        ..good.clone()
    };
    let err = server_config(&no_ca, &id).unwrap_err();
    assert!(
        matches!(err, TlsError::NoCertificate { what: "CA" }),
        "{err}"
    );

    let no_cert = TlsMaterial {
        cert_pem: pki.server.key_pem.clone().into_bytes(),
        ..good.clone()
    };
    let err = client_config(&no_cert, &id).unwrap_err();
    assert!(
        matches!(
            err,
            TlsError::NoCertificate {
                what: "certificate"
            }
        ),
        "{err}"
    );

    let no_key = TlsMaterial {
        key_pem: pki.server.cert_pem.clone().into_bytes(),
        ..good.clone()
    };
    assert!(matches!(
        server_config(&no_key, &id).unwrap_err(),
        TlsError::NoKey
    ));

    let garbage_key = TlsMaterial {
        key_pem: b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".to_vec(),
        ..good.clone()
    };
    let err = server_config(&garbage_key, &id).unwrap_err();
    assert!(matches!(err, TlsError::BadKey(_)), "{err}");

    // The client's key with the server's certificate.
    let wrong_key = TlsMaterial {
        key_pem: pki.client.key_pem.clone().into_bytes(),
        ..good
    };
    let err = server_config(&wrong_key, &id).unwrap_err();
    assert!(matches!(err, TlsError::BadKey(_)), "{err}");
}

#[test]
fn load_names_the_missing_file() {
    let files = TlsFiles {
        ca: "/nonexistent/typha-test/ca.crt".into(),
        cert: "/nonexistent/typha-test/typha.crt".into(),
        key: "/nonexistent/typha-test/typha.key".into(),
    };
    let err = TlsMaterial::load(&files).unwrap_err();
    assert!(matches!(err, TlsError::Read { .. }));
    assert!(
        err.to_string().contains("/nonexistent/typha-test/ca.crt"),
        "{err}"
    );
}

#[test]
fn material_debug_redacts_the_key() {
    let pki = DevPki::generate().unwrap();
    let printed = format!("{:?}", pki.server_material());
    assert!(!printed.contains("PRIVATE"), "{printed}");
}

#[test]
fn expired_spec_roundtrips_through_issue() {
    // Guards the helper the integration tests rely on for the expired case.
    let pki = DevPki::generate().unwrap();
    let now = time::OffsetDateTime::now_utc();
    let spec = CertSpec {
        not_before: now - time::Duration::days(2),
        not_after: now - time::Duration::days(1),
        ..CertSpec::default_client()
    };
    let leaf = pki.issue(&spec).unwrap();
    let cert = CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).unwrap();
    let (_, x509) = x509_parser::parse_x509_certificate(&cert).unwrap();
    assert!(x509.validity().time_to_expiration().is_none());
}
