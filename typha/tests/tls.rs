//! Mutual-TLS handshakes over real loopback TCP with tokio-rustls: the server's
//! identity rules, the classification of every rejection, the client's server checks, and
//! the development PKI written to disk.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use edge::certs::{
    CertError, CertSpec, DEFAULT_CLIENT_CN, DEFAULT_CLIENT_URI_SAN, DEFAULT_SERVER_CN,
    DEFAULT_SERVER_URI_SAN, DevPki,
};
use edge::tls::{
    HandshakeFailure, PeerIdentity, TlsFiles, TlsMaterial, client_config, peer_summary,
    server_config,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use time::{Duration, OffsetDateTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector, client, server};

fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// What the server requires by default: the dev client's CN or URI SAN.
fn client_identity() -> PeerIdentity {
    PeerIdentity {
        cn: Some(DEFAULT_CLIENT_CN.to_owned()),
        uri_san: Some(DEFAULT_CLIENT_URI_SAN.to_owned()),
    }
}

/// A fresh dev PKI's server config (requiring the dev client identity) and client config
/// (checking the server as `server_check` says), with the ring provider installed.
fn dev_configs(
    server_check: &PeerIdentity,
) -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
    init();
    let pki = DevPki::generate().unwrap();
    let server_cfg = server_config(&pki.server_material(), &client_identity()).unwrap();
    let client_cfg = client_config(&pki.client_material(), server_check).unwrap();
    (server_cfg, client_cfg)
}

/// A client config (still to be given its certificate, or none) speaking `version`
/// only and trusting `pki`'s CA only.
fn client_trusting(
    pki: &DevPki,
    version: &'static rustls::SupportedProtocolVersion,
) -> rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(pki.ca.cert_pem.as_bytes()).unwrap())
        .unwrap();
    rustls::ClientConfig::builder_with_protocol_versions(&[version]).with_root_certificates(roots)
}

fn localhost() -> ServerName<'static> {
    ServerName::try_from("localhost").unwrap()
}

struct Outcome {
    server: io::Result<server::TlsStream<TcpStream>>,
    client: io::Result<client::TlsStream<TcpStream>>,
}

/// One handshake over loopback; both sides' results are returned once the server is done.
async fn handshake(
    server_cfg: Arc<rustls::ServerConfig>,
    client_cfg: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
) -> Outcome {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(server_cfg);
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await?;
        acceptor.accept(tcp).await
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    let client = TlsConnector::from(client_cfg).connect(name, tcp).await;
    let server = server.await.unwrap();
    Outcome { server, client }
}

/// Exchanges a message each way and checks ALPN and the identities each side sees.
async fn assert_working(outcome: Outcome) {
    let mut server = outcome.server.unwrap();
    let mut client = outcome.client.unwrap();
    client.write_all(b"hello from felix").await.unwrap();
    let mut buf = [0u8; 16];
    server.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"hello from felix");
    server.write_all(b"hello from typha").await.unwrap();
    client.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"hello from typha");

    let server_conn = server.get_ref().1;
    assert_eq!(server_conn.alpn_protocol(), Some(&b"h2"[..]));
    assert_eq!(
        server_conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    let client_cert = &server_conn.peer_certificates().unwrap()[0];
    assert!(peer_summary(client_cert).starts_with("CN="));
    let server_cert = &client.get_ref().1.peer_certificates().unwrap()[0];
    assert!(peer_summary(server_cert).starts_with("CN="));
}

/// A rejected client: the server's accept fails with `want`, and the client, whose TLS 1.3
/// connect may already have "succeeded", cannot read any application data.
async fn assert_rejected_by_server(outcome: Outcome, want: HandshakeFailure) {
    let err = failed(outcome.server, "server must refuse the client");
    assert_eq!(
        HandshakeFailure::classify(&err),
        want,
        "server error: {err}"
    );
    if let Ok(mut client) = outcome.client {
        let mut buf = [0u8; 64];
        let read = client.read(&mut buf).await;
        assert!(
            matches!(read, Err(_) | Ok(0)),
            "client read application data: {read:?}"
        );
    }
}

/// The error of a side that must have failed.
fn failed<T, E>(result: Result<T, E>, why: &str) -> E {
    match result {
        Ok(_) => panic!("{why}"),
        Err(err) => err,
    }
}

fn spec_with(cn: &str, uri: Option<&str>) -> CertSpec {
    CertSpec {
        uri_san: uri.map(str::to_owned),
        ..CertSpec::new(cn, false)
    }
}

#[tokio::test]
async fn good_client_by_cn_exchanges_data() {
    init();
    let pki = DevPki::generate().unwrap();
    let server_cfg = server_config(
        &pki.server_material(),
        &PeerIdentity::with_cn(DEFAULT_CLIENT_CN),
    )
    .unwrap();
    let client_cfg = client_config(
        &pki.client_material(),
        &PeerIdentity::with_cn(DEFAULT_SERVER_CN),
    )
    .unwrap();
    let outcome = handshake(server_cfg, client_cfg, localhost()).await;
    let summary = peer_summary(
        &outcome
            .server
            .as_ref()
            .unwrap()
            .get_ref()
            .1
            .peer_certificates()
            .unwrap()[0],
    );
    assert_eq!(
        summary,
        format!("CN={DEFAULT_CLIENT_CN}, URI={DEFAULT_CLIENT_URI_SAN}")
    );
    assert_working(outcome).await;
}

#[tokio::test]
async fn uri_san_alone_identifies_a_client_with_another_cn() {
    init();
    let pki = DevPki::generate().unwrap();
    let leaf = pki
        .issue(&spec_with(
            "not-the-configured-cn",
            Some(DEFAULT_CLIENT_URI_SAN),
        ))
        .unwrap();
    let server_cfg = server_config(
        &pki.server_material(),
        &PeerIdentity::with_uri_san(DEFAULT_CLIENT_URI_SAN),
    )
    .unwrap();
    let client_cfg = client_config(
        &pki.material(&leaf),
        &PeerIdentity::with_uri_san(DEFAULT_SERVER_URI_SAN),
    )
    .unwrap();
    assert_working(handshake(server_cfg, client_cfg, localhost()).await).await;
}

#[tokio::test]
async fn client_without_certificate_is_refused() {
    init();
    let pki = DevPki::generate().unwrap();
    let server_cfg = server_config(&pki.server_material(), &client_identity()).unwrap();
    let client_cfg = client_trusting(&pki, &rustls::version::TLS13).with_no_client_auth();
    let outcome = handshake(server_cfg, Arc::new(client_cfg), localhost()).await;
    assert_rejected_by_server(outcome, HandshakeFailure::NoCertificate).await;
}

#[tokio::test]
async fn client_from_another_ca_is_refused() {
    init();
    let pki = DevPki::generate().unwrap();
    let other = DevPki::generate().unwrap();
    // Trusts the real CA (so it accepts the server) but presents the other CA's client cert.
    let material = TlsMaterial {
        ca_pem: pki.ca.cert_pem.clone().into_bytes(),
        ..other.client_material()
    };
    assert_client_refused(
        &pki,
        client_identity(),
        &material,
        HandshakeFailure::UnknownCa,
    )
    .await;
}

/// A client presenting `client` to a server of `pki` accepting `accept` is refused by the
/// server's handshake for `expected`, and reads no application data.
async fn assert_client_refused(
    pki: &DevPki,
    accept: PeerIdentity,
    client: &TlsMaterial,
    expected: HandshakeFailure,
) {
    let server_cfg = server_config(&pki.server_material(), &accept).unwrap();
    let client_cfg = client_config(client, &PeerIdentity::default()).unwrap();
    let outcome = handshake(server_cfg, client_cfg, localhost()).await;
    assert_rejected_by_server(outcome, expected).await;
}

/// A client with a leaf of the right CA issued for `spec` is refused for `expected` by a
/// server accepting `accept`.
async fn assert_leaf_refused(spec: CertSpec, accept: PeerIdentity, expected: HandshakeFailure) {
    init();
    let pki = DevPki::generate().unwrap();
    let leaf = pki.issue(&spec).unwrap();
    assert_client_refused(&pki, accept, &pki.material(&leaf), expected).await;
}

#[tokio::test]
async fn client_with_wrong_cn_and_uri_san_is_refused() {
    let intruder = spec_with("intruder", Some("spiffe://cluster.local/ns/x/sa/intruder"));
    assert_leaf_refused(intruder, client_identity(), HandshakeFailure::BadIdentity).await;
}

#[tokio::test]
async fn right_cn_is_refused_when_only_uri_san_is_configured() {
    let accept = PeerIdentity::with_uri_san(DEFAULT_CLIENT_URI_SAN);
    let spec = spec_with(DEFAULT_CLIENT_CN, None);
    assert_leaf_refused(spec, accept, HandshakeFailure::BadIdentity).await;
}

#[tokio::test]
async fn expired_client_certificate_is_refused() {
    let now = OffsetDateTime::now_utc();
    let expired = CertSpec {
        not_before: now - Duration::days(30),
        not_after: now - Duration::days(1),
        ..CertSpec::default_client()
    };
    assert_leaf_refused(expired, client_identity(), HandshakeFailure::Expired).await;
}

#[tokio::test]
async fn server_certificate_is_not_accepted_as_a_client_certificate() {
    // Right CA and a CN the server would accept, but serverAuth EKU only.
    init();
    let pki = DevPki::generate().unwrap();
    assert_client_refused(
        &pki,
        PeerIdentity::with_cn(DEFAULT_SERVER_CN),
        &pki.server_material(),
        HandshakeFailure::Other,
    )
    .await;
}

#[tokio::test]
async fn tls12_only_client_is_refused() {
    init();
    let pki = DevPki::generate().unwrap();
    let server_cfg = server_config(&pki.server_material(), &client_identity()).unwrap();
    let chain = vec![CertificateDer::from_pem_slice(pki.client.cert_pem.as_bytes()).unwrap()];
    let key = PrivateKeyDer::from_pem_slice(pki.client.key_pem.as_bytes()).unwrap();
    let client_cfg = client_trusting(&pki, &rustls::version::TLS12)
        .with_client_auth_cert(chain, key)
        .unwrap();
    let outcome = handshake(server_cfg, Arc::new(client_cfg), localhost()).await;
    let client_err = failed(outcome.client.as_ref(), "TLS 1.2 handshake must fail");
    assert_eq!(
        HandshakeFailure::classify(client_err),
        HandshakeFailure::ProtocolVersion
    );
    assert_rejected_by_server(outcome, HandshakeFailure::ProtocolVersion).await;
}

/// The client's error, which must be classified as `expected`.
fn assert_client_failed<T>(client: io::Result<T>, expected: HandshakeFailure) -> io::Error {
    let err = failed(client, "client must refuse the server");
    assert_eq!(HandshakeFailure::classify(&err), expected, "{err}");
    err
}

/// A client with `pki`'s client certificate, requiring typha's CN, refuses a server
/// presenting `server` (as localhost) for `expected`; the server's result and the
/// client's error.
async fn client_refuses(
    pki: &DevPki,
    server: &TlsMaterial,
    expected: HandshakeFailure,
) -> (io::Result<server::TlsStream<TcpStream>>, io::Error) {
    let server_cfg = server_config(server, &client_identity()).unwrap();
    let client_cfg = client_config(
        &pki.client_material(),
        &PeerIdentity::with_cn(DEFAULT_SERVER_CN),
    )
    .unwrap();
    let outcome = handshake(server_cfg, client_cfg, localhost()).await;
    (
        outcome.server,
        assert_client_failed(outcome.client, expected),
    )
}

#[tokio::test]
async fn client_refuses_server_with_wrong_cn() {
    init();
    let pki = DevPki::generate().unwrap();
    // Valid for localhost by hostname, but not the configured typha CN.
    let impostor = pki
        .issue(&CertSpec {
            dns: vec!["localhost".to_owned()],
            ips: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
            ..CertSpec::new("impostor", true)
        })
        .unwrap();
    let (server, err) = client_refuses(
        &pki,
        &pki.material(&impostor),
        HandshakeFailure::BadIdentity,
    )
    .await;
    assert!(err.to_string().contains("impostor"), "{err}");
    assert!(server.is_err());
}

#[tokio::test]
async fn client_refuses_server_from_another_ca() {
    init();
    let pki = DevPki::generate().unwrap();
    let other = DevPki::generate().unwrap();
    let (_server, _err) =
        client_refuses(&pki, &other.server_material(), HandshakeFailure::UnknownCa).await;
}

#[tokio::test]
async fn identity_mode_ignores_the_dialled_name() {
    let (server_cfg, client_cfg) = dev_configs(&PeerIdentity::with_uri_san(DEFAULT_SERVER_URI_SAN));
    let name = ServerName::try_from("typha.calico-system.svc").unwrap();
    assert_working(handshake(server_cfg, client_cfg, name).await).await;
}

#[tokio::test]
async fn hostname_mode_accepts_localhost_and_loopback_ip() {
    let (server_cfg, client_cfg) = dev_configs(&PeerIdentity::default());
    for name in [
        localhost(),
        ServerName::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST).into()),
    ] {
        let outcome = handshake(server_cfg.clone(), client_cfg.clone(), name).await;
        assert_working(outcome).await;
    }
}

#[tokio::test]
async fn hostname_mode_refuses_a_name_not_in_the_certificate() {
    let (server_cfg, client_cfg) = dev_configs(&PeerIdentity::default());
    let name = ServerName::try_from("typha.example").unwrap();
    let outcome = handshake(server_cfg, client_cfg, name).await;
    assert_client_failed(outcome.client, HandshakeFailure::BadIdentity);
}

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("typha-tls-test-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(unix)]
fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn written_pki_loads_back_and_handshakes() {
    init();
    let dir = TempDir::new();
    let out = dir.0.join("certs");
    let pki = DevPki::generate().unwrap();
    let written = pki.write_to_dir(&out, false).unwrap();
    let names: Vec<_> = written
        .iter()
        .map(|p| p.file_name().unwrap().to_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        names,
        [
            "ca.crt",
            "ca.key",
            "typha.crt",
            "typha.key",
            "felix.crt",
            "felix.key"
        ]
    );
    #[cfg(unix)]
    for path in &written {
        let want = if path.extension().unwrap() == "key" {
            0o600
        } else {
            0o644
        };
        assert_eq!(mode(path), want, "{}", path.display());
    }

    let files = |cert: &str, key: &str| TlsFiles {
        ca: out.join("ca.crt"),
        cert: out.join(cert),
        key: out.join(key),
    };
    let server_material = TlsMaterial::load(&files("typha.crt", "typha.key")).unwrap();
    let client_material = TlsMaterial::load(&files("felix.crt", "felix.key")).unwrap();
    assert_eq!(server_material, pki.server_material());
    assert_eq!(client_material, pki.client_material());
    let server_cfg = server_config(&server_material, &client_identity()).unwrap();
    let client_cfg =
        client_config(&client_material, &PeerIdentity::with_cn(DEFAULT_SERVER_CN)).unwrap();
    assert_working(handshake(server_cfg, client_cfg, localhost()).await).await;
}

#[test]
fn write_to_dir_refuses_to_overwrite_without_force() {
    let dir = TempDir::new();
    let first = DevPki::generate().unwrap();
    first.write_to_dir(&dir.0, false).unwrap();

    // Only one existing file is enough to refuse, and nothing is written.
    std::fs::remove_file(dir.0.join("felix.crt")).unwrap();
    let second = DevPki::generate().unwrap();
    let err = second.write_to_dir(&dir.0, false).unwrap_err();
    assert!(
        matches!(&err, CertError::Exists { path } if path.ends_with("ca.crt")),
        "{err}"
    );
    assert!(!dir.0.join("felix.crt").exists());
    let ca = std::fs::read_to_string(dir.0.join("ca.crt")).unwrap();
    assert_eq!(ca, first.ca.cert_pem);

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let key = dir.0.join("typha.key");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        second.write_to_dir(&dir.0, true).unwrap();
        assert_eq!(
            mode(&key),
            0o600,
            "forced overwrite must re-tighten key files"
        );
    }
    #[cfg(not(unix))]
    second.write_to_dir(&dir.0, true).unwrap();
    let ca = std::fs::read_to_string(dir.0.join("ca.crt")).unwrap();
    assert_eq!(ca, second.ca.cert_pem);
    assert!(dir.0.join("felix.crt").exists());
}
