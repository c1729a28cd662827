//! Certificate, key and CA reload on a running typha: new handshakes see the new server
//! certificate (another CA, another serial) while established sessions keep streaming;
//! a broken or mismatched file is rejected, counted once, and the old material stays;
//! a new client CA applies to new handshakes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod ops_support;

use std::sync::Arc;

use edge::certs::{DEFAULT_CLIENT_CN, DEFAULT_SERVER_CN, DevPki};
use edge::tls::{
    PeerIdentity, ReloadOutcome, ReloadableServerTls, TlsFileWatcher, TlsFiles, TlsMaterial,
    client_config,
};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use ops_support::{RawClient, nodes, start_with};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use testkit::Scratch;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use typha::app::OpsConfig;
use typha::server::Transport;

fn write(files: &TlsFiles, ca: &str, cert: &str, key: &str) {
    std::fs::write(&files.ca, ca).unwrap();
    std::fs::write(&files.cert, cert).unwrap();
    std::fs::write(&files.key, key).unwrap();
}

fn der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

/// A client of `pki` that trusts every CA in `ca_bundle` and checks typha's CN.
fn client_tls(pki: &DevPki, ca_bundle: &str) -> Arc<rustls::ClientConfig> {
    let material = TlsMaterial {
        ca_pem: ca_bundle.as_bytes().to_vec(),
        ..pki.client_material()
    };
    client_config(&material, &PeerIdentity::with_cn(DEFAULT_SERVER_CN)).unwrap()
}

/// Handshakes with typha; the server certificate it presented, or None when typha
/// refused the client (TLS 1.3: the refusal shows on the first read).
async fn server_cert(
    addr: std::net::SocketAddr,
    tls: Arc<rustls::ClientConfig>,
) -> Option<CertificateDer<'static>> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .ok()?;
    let cert = stream.get_ref().1.peer_certificates().unwrap()[0].clone();
    // typha sends its HTTP/2 settings first; a refused client reads an alert instead.
    let mut buf = [0u8; 9];
    stream.read_exact(&mut buf).await.ok()?;
    Some(cert)
}

/// (reloads, reload errors) counted since the previous call (snapshots drain counters).
fn counted(snapshotter: &Snapshotter) -> (u64, u64) {
    let mut counts = (0, 0);
    for (key, .., value) in snapshotter.snapshot().into_vec() {
        let DebugValue::Counter(n) = value else {
            continue;
        };
        match key.key().name() {
            "typha_tls_reloads_total" => counts.0 += n,
            "typha_tls_reload_errors_total" => counts.1 += n,
            _ => {}
        }
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_reload_for_new_connections_only() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let dir = Scratch::new("typha-ops-tls");
    let files = TlsFiles {
        ca: dir.path().join("ca.crt"),
        cert: dir.path().join("typha.crt"),
        key: dir.path().join("typha.key"),
    };
    let (old, new) = (DevPki::generate().unwrap(), DevPki::generate().unwrap());
    assert_ne!(der(&old.server.cert_pem), der(&new.server.cert_pem));
    write(
        &files,
        &old.ca.cert_pem,
        &old.server.cert_pem,
        &old.server.key_pem,
    );
    let material = TlsMaterial::load(&files).unwrap();
    let tls =
        ReloadableServerTls::new(&material, &PeerIdentity::with_cn(DEFAULT_CLIENT_CN)).unwrap();
    let mut watcher = TlsFileWatcher::new(files.clone(), tls.clone(), material);
    let mut check = || metrics::with_local_recorder(&recorder, || watcher.check());

    let typha = start_with(Transport::Tls(tls.config()), OpsConfig::default(), None).await;
    typha.load(nodes(3)).await;
    let addr = typha.running.grpc_addr;
    let both_cas = format!("{}{}", old.ca.cert_pem, new.ca.cert_pem);
    let old_client = client_tls(&old, &both_cas);
    let mut established = RawClient::connect(addr, "established", Some(old_client.clone())).await;
    assert_eq!(
        server_cert(addr, old_client.clone()).await,
        Some(der(&old.server.cert_pem))
    );
    assert!(matches!(check(), ReloadOutcome::Unchanged));
    assert_eq!(counted(&snapshotter), (0, 0));

    // A certificate from another CA (so another serial too); the CA file trusts both.
    write(&files, &both_cas, &new.server.cert_pem, &new.server.key_pem);
    assert!(matches!(check(), ReloadOutcome::Reloaded));
    assert_eq!(counted(&snapshotter), (1, 0));
    assert_eq!(tls.certificate()[0], der(&new.server.cert_pem));
    assert_eq!(
        server_cert(addr, old_client.clone()).await,
        Some(der(&new.server.cert_pem))
    );
    let revision = typha.update(vec![ops_support::node(10)]).await;
    established.wait_delta(revision).await;
    let mut fresh = RawClient::connect(addr, "fresh", Some(old_client.clone())).await;

    // A broken certificate: rejected once (not once per poll), the new one stays.
    std::fs::write(&files.cert, "-----BEGIN CERTIFICATE-----\nnot base64\n").unwrap();
    assert!(matches!(check(), ReloadOutcome::Failed(_)));
    assert!(matches!(check(), ReloadOutcome::Unchanged));
    assert_eq!(counted(&snapshotter), (0, 1));
    assert_eq!(
        server_cert(addr, old_client.clone()).await,
        Some(der(&new.server.cert_pem))
    );
    // A key that is not the certificate's: rejected too.
    write(&files, &both_cas, &old.server.cert_pem, &new.server.key_pem);
    assert!(matches!(check(), ReloadOutcome::Failed(_)));
    assert_eq!(counted(&snapshotter), (0, 1));
    assert_eq!(
        server_cert(addr, old_client.clone()).await,
        Some(der(&new.server.cert_pem))
    );

    // Only the new CA now: new handshakes from the old CA's clients are refused, the new
    // CA's clients are accepted, and the sessions already open keep streaming.
    write(
        &files,
        &new.ca.cert_pem,
        &new.server.cert_pem,
        &new.server.key_pem,
    );
    assert!(matches!(check(), ReloadOutcome::Reloaded));
    assert_eq!(counted(&snapshotter), (1, 0));
    assert_eq!(server_cert(addr, old_client).await, None);
    let new_client = client_tls(&new, &new.ca.cert_pem);
    assert_eq!(
        server_cert(addr, new_client).await,
        Some(der(&new.server.cert_pem))
    );
    let revision = typha.update(vec![ops_support::node(11)]).await;
    established.wait_delta(revision).await;
    fresh.wait_delta(revision).await;
    typha.running.shutdown().await.unwrap();
}
