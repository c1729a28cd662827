//! Hostile clients before a session exists: no TLS handshake, a handshake dripped byte by
//! byte, TLS without HTTP/2 or without a `Sync` stream, a stream without a ClientHello,
//! and certificates or TLS versions the server must refuse. Each is closed, counted in
//! `typha_connections_dropped_total{reason}`, frees its connection slot, and leaves a
//! well-behaved client connected throughout untouched (see `hostile_support`).
//! Run with nextest (one process, hence one metrics recorder, per test).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod hostile_support;
mod metrics_support;
mod sync_support;

use std::sync::Arc;
use std::time::Duration;

use edge::certs::CertSpec;
use hostile_support::{
    Ending, LIMIT, Metrics, TlsEnd, World, assert_no_data, ending, is_http2_settings_frame,
    raw_sync, tls_attempt, tls_with,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use typha::server::{DropReason, NO_STREAM_TIMEOUT, ServerConfig};

/// Short enough to keep the tests quick, long enough for the well-behaved client's own
/// handshake on a loaded machine.
const HANDSHAKE: Duration = Duration::from_secs(2);

fn config() -> ServerConfig {
    ServerConfig {
        handshake_timeout: HANDSHAKE,
        ..Default::default()
    }
}

/// Every TLS refusal reason: a test expecting one of them expects zero of the others.
const TLS_REASONS: [&str; 7] = [
    "tls_no_certificate",
    "tls_unknown_ca",
    "tls_bad_identity",
    "tls_expired",
    "tls_protocol_version",
    "tls_timeout",
    "tls_other",
];

/// Exactly one refusal, for `reason`, counted in the metric and by the server; only the
/// well-behaved client's connection is left open.
async fn assert_refused_once(world: &World, metrics: &mut Metrics, reason: &str) {
    let counts = world
        .wait_counts(reason, |c| c.refused(reason) >= 1 && c.open == 1)
        .await;
    assert_eq!(counts.refused(reason), 1, "{counts:?}");
    assert_eq!(counts.refused.values().sum::<u64>(), 1, "{counts:?}");
    assert_eq!(metrics.dropped(reason), 1);
    for other in TLS_REASONS.iter().filter(|r| **r != reason) {
        assert_eq!(metrics.dropped(other), 0, "{other}");
    }
    assert_eq!(metrics.open(), 1, "typha_connections_open");
}

/// 1. A TCP connection that never starts TLS is closed after the handshake timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_starts_tls_is_closed_and_counted() {
    let mut metrics = Metrics::install();
    let world = World::start(config()).await;
    let mut silent = TcpStream::connect(world.harness.typha.grpc_addr)
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(LIMIT, silent.read(&mut buf))
        .await
        .expect("the server kept a silent connection open");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert_refused_once(&world, &mut metrics, "tls_timeout").await;
    world.assert_unaffected().await;
}

/// 3a. A ClientHello sent one byte at a time, its last byte never, is cut off by the
/// handshake deadline (a deadline for the whole handshake, not per read).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_dripped_byte_by_byte_is_cut_off_and_counted() {
    let mut metrics = Metrics::install();
    let world = World::start(config()).await;
    let name = ServerName::try_from("localhost").unwrap();
    let mut client = rustls::ClientConnection::new(world.good_tls(), name).unwrap();
    let mut hello = Vec::new();
    client.write_tls(&mut hello).unwrap();
    assert!(hello.len() > 100, "a real ClientHello");

    let mut tcp = TcpStream::connect(world.harness.typha.grpc_addr)
        .await
        .unwrap();
    let mut drip = tokio::time::interval(HANDSHAKE / 16);
    let mut sent = 0;
    let mut buf = [0u8; 64];
    let drip_until_closed = async {
        loop {
            tokio::select! {
                read = tcp.read(&mut buf) => match read {
                    Ok(0) | Err(_) => return,
                    Ok(n) => panic!("the server answered a partial ClientHello with {n} bytes"),
                },
                _ = drip.tick(), if sent + 1 < hello.len() => {
                    if tcp.write_all(&hello[sent..=sent]).await.is_err() {
                        return;
                    }
                    sent += 1;
                }
            }
        }
    };
    tokio::time::timeout(LIMIT, drip_until_closed)
        .await
        .expect("the dripping client was never cut off");
    println!(
        "dripped {sent} of {} ClientHello bytes before the server closed",
        hello.len()
    );
    assert_refused_once(&world, &mut metrics, "tls_timeout").await;
    world.assert_unaffected().await;
}

/// 2. TLS completes but no HTTP/2 follows, or HTTP/2 starts but no `Sync` stream: both
/// are closed after the handshake timeout (`no_stream_timeout`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_without_a_sync_stream_are_closed_and_counted() {
    let mut metrics = Metrics::install();
    let world = World::start(config()).await;

    // TLS with the legitimate certificate, then silence: no HTTP/2 preface.
    // The server speaks first in HTTP/2 (its SETTINGS frame), then nothing more.
    let end = tls_attempt(&world, world.good_tls()).await;
    let TlsEnd::Closed(received) = end else {
        panic!("the legitimate certificate was refused");
    };
    assert!(is_http2_settings_frame(&received), "{received:?}");
    let counts = world
        .wait_counts("no HTTP/2", |c| {
            c.refused(NO_STREAM_TIMEOUT) == 1 && c.open == 1
        })
        .await;
    assert_eq!(counts.refused.values().sum::<u64>(), 1, "{counts:?}");

    // HTTP/2 (tonic connects eagerly: preface and settings) but no call.
    let channel = world.channel(world.good_tls()).await;
    let counts = world
        .wait_counts("no stream", |c| {
            c.refused(NO_STREAM_TIMEOUT) == 2 && c.open == 1
        })
        .await;
    assert_eq!(counts.refused.values().sum::<u64>(), 2, "{counts:?}");
    drop(channel);
    assert_eq!(metrics.dropped(NO_STREAM_TIMEOUT), 2);
    assert_eq!(metrics.open(), 1);
    world.assert_unaffected().await;
}

/// 2b. A `Sync` stream that never sends its ClientHello ends with `handshake_timeout`
/// (the client sees `DEADLINE_EXCEEDED`) and receives no state; its connection, left
/// without a stream, is then closed by the idle watchdog (`no_stream_timeout`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_without_client_hello_is_closed_and_counted() {
    let mut metrics = Metrics::install();
    let mut world = World::start(config()).await;
    let channel = world.channel(world.good_tls()).await;
    let (_tx, stream) = raw_sync(channel).await;
    let mut stream = stream.unwrap();
    let ended = world.next_hostile_end().await;
    assert_eq!(ended.reason, DropReason::HandshakeTimeout);
    assert_eq!(ended.node, "");
    let (end, state) = ending(&mut stream).await;
    assert_eq!(end, Ending::Status(tonic::Code::DeadlineExceeded));
    assert_eq!(state, 0);
    world.wait_counts("connection freed", |c| c.open == 1).await;
    assert_eq!(metrics.dropped("handshake_timeout"), 1);
    assert_eq!(metrics.dropped(NO_STREAM_TIMEOUT), 1);
    assert_eq!(metrics.open(), 1);
    world.assert_unaffected().await;
}

/// 6. A certificate from the right CA with the wrong CN and URI SAN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_with_the_wrong_identity_is_refused_and_counted() {
    let mut metrics = Metrics::install();
    let world = World::start(config()).await;
    let intruder = world
        .harness
        .pki
        .issue(&CertSpec {
            uri_san: Some("spiffe://cluster.local/ns/x/sa/intruder".to_string()),
            ..CertSpec::new("intruder", false)
        })
        .unwrap();
    assert_no_data(&tls_attempt(&world, tls_with(&world, &intruder)).await);
    assert_refused_once(&world, &mut metrics, "tls_bad_identity").await;
    world.assert_unaffected().await;
}

/// 7. The legitimate identity in a certificate that expired yesterday.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_certificate_is_refused_and_counted() {
    let mut metrics = Metrics::install();
    let world = World::start(config()).await;
    let day = Duration::from_secs(24 * 3600);
    let valid = CertSpec::default_client();
    let expired = world
        .harness
        .pki
        .issue(&CertSpec {
            not_before: valid.not_before - 30 * day,
            not_after: valid.not_before - day,
            ..valid
        })
        .unwrap();
    assert_no_data(&tls_attempt(&world, tls_with(&world, &expired)).await);
    assert_refused_once(&world, &mut metrics, "tls_expired").await;
    world.assert_unaffected().await;
}

/// 8. A client that speaks only TLS 1.2, with the legitimate certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls12_only_client_is_refused_and_counted() {
    let mut metrics = Metrics::install();
    let world = World::start(config()).await;
    let pki = &world.harness.pki;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(pki.ca.cert_pem.as_bytes()).unwrap())
        .unwrap();
    let chain = vec![CertificateDer::from_pem_slice(pki.client.cert_pem.as_bytes()).unwrap()];
    let key = PrivateKeyDer::from_pem_slice(pki.client.key_pem.as_bytes()).unwrap();
    let mut tls12 =
        rustls::ClientConfig::builder_with_protocol_versions(&[&rustls::version::TLS12])
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .unwrap();
    tls12.alpn_protocols = vec![b"h2".to_vec()];
    let end = tls_attempt(&world, Arc::new(tls12)).await;
    assert_eq!(end, TlsEnd::HandshakeFailed);
    assert_refused_once(&world, &mut metrics, "tls_protocol_version").await;
    world.assert_unaffected().await;
}
