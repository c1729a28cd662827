//! Replays every file of fuzz/corpus/<target>/ through the fuzz target's entry function,
//! on stable Rust, in the main workspace: the seeds and every reproducer a fuzzing run
//! found stay regression tests.
//!
//! The entry functions are the fuzz crate's own (fuzz/src, included by path: the fuzz
//! crate is outside this workspace so libfuzzer-sys never enters the main build).
//! `write_seeds` (ignored) regenerates the committed seed files from real server output:
//! `cargo test -p loadtest --test fuzz_corpus -- --ignored write_seeds`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../fuzz/src/lib.rs"]
mod typha_fuzz;

use std::path::{Path, PathBuf};

fn corpus_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus")
}

#[test]
fn every_corpus_file_replays_without_panic() {
    let root = corpus_root();
    let mut total = 0;
    for (name, entry) in typha_fuzz::TARGETS {
        let dir = root.join(name);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|f| f.unwrap().path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "target {name} has no seeds");
        for file in &files {
            let data = std::fs::read(file).unwrap();
            let outcome = std::panic::catch_unwind(|| entry(&data));
            assert!(outcome.is_ok(), "{name}: {} panics", file.display());
        }
        total += files.len();
    }
    assert!(total >= typha_fuzz::TARGETS.len());
}

/// Executions per target of [`bounded_mutation_run_finds_no_panic`].
const MUTATIONS_PER_TARGET: usize = 20_000;

/// A short, bounded, deterministic mutation run on stable (CI cannot afford cargo-fuzz's
/// nightly + sanitizer build): every target gets [`MUTATIONS_PER_TARGET`] inputs made
/// from its corpus by bit flips, byte overwrites, inserts, deletions, truncation,
/// duplication and splices with another seed, from a fixed RNG seed so that a failure
/// reproduces. It is not coverage-guided; `scripts/fuzz` is the real fuzzer. A panic
/// fails the test with the input in hex (add it to fuzz/corpus/<target>/ as a
/// reproducer); a stack overflow or abort fails the whole test process.
#[test]
fn bounded_mutation_run_finds_no_panic() {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    let root = corpus_root();
    for (t, (name, entry)) in typha_fuzz::TARGETS.iter().enumerate() {
        let dir = root.join(name);
        let seeds: Vec<Vec<u8>> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|f| std::fs::read(f.unwrap().path()).unwrap())
            .collect();
        let mut rng = StdRng::seed_from_u64(0x7e57_0000 + t as u64);
        let mut executed = 0;
        for i in 0..MUTATIONS_PER_TARGET {
            let mut data = seeds[i % seeds.len()].clone();
            for _ in 0..rng.random_range(1..=4) {
                mutate(&mut data, &seeds, &mut rng);
            }
            let outcome = std::panic::catch_unwind(|| entry(&data));
            assert!(
                outcome.is_ok(),
                "{name}: mutation {i} panics; input (hex): {}",
                hex(&data)
            );
            executed += 1;
        }
        assert_eq!(executed, MUTATIONS_PER_TARGET);
    }
}

fn mutate(data: &mut Vec<u8>, seeds: &[Vec<u8>], rng: &mut impl rand::Rng) {
    let len = data.len();
    match rng.random_range(0..8) {
        0 if len > 0 => {
            let at = rng.random_range(0..len);
            data[at] ^= 1 << rng.random_range(0..8);
        }
        1 if len > 0 => {
            let at = rng.random_range(0..len);
            data[at] = *[0u8, 1, 0x7f, 0x80, 0xff, b'{', b'"', b'(']
                .get(rng.random_range(0..8))
                .unwrap_or(&0);
        }
        2 => {
            let at = rng.random_range(0..=len);
            let byte: u8 = rng.random();
            data.insert(at, byte);
        }
        3 if len > 0 => {
            let at = rng.random_range(0..len);
            let n = rng.random_range(1..=(len - at).min(16));
            data.drain(at..at + n);
        }
        4 if len > 0 => data.truncate(rng.random_range(0..len)),
        5 if len > 0 && len < 1 << 16 => {
            let from = rng.random_range(0..len);
            let n = rng.random_range(1..=(len - from).min(64));
            let chunk: Vec<u8> = data[from..from + n].to_vec();
            let at = rng.random_range(0..=data.len());
            data.splice(at..at, chunk);
        }
        6 => {
            let other = &seeds[rng.random_range(0..seeds.len())];
            let cut = rng.random_range(0..=len);
            let from = rng.random_range(0..=other.len());
            data.truncate(cut);
            data.extend_from_slice(&other[from..]);
        }
        _ => {
            let at = rng.random_range(0..=len);
            let n = rng.random_range(1..=8);
            data.splice(at..at, std::iter::repeat_n(0xffu8, n));
        }
    }
}

fn hex(data: &[u8]) -> String {
    data.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn every_corpus_directory_has_a_target() {
    for dir in std::fs::read_dir(corpus_root()).unwrap() {
        let name = dir.unwrap().file_name().into_string().unwrap();
        assert!(
            typha_fuzz::TARGETS.iter().any(|(t, _)| *t == name),
            "fuzz/corpus/{name} has no fuzz target"
        );
    }
}

#[test]
fn mirror_seeds_reach_in_sync_and_apply_deltas() {
    // A recorded session: snapshot (zstd chunks), InSync, two delta batches.
    let session = std::fs::read(corpus_root().join("mirror/session")).unwrap();
    let mirror = typha_fuzz::replay_mirror(&session);
    assert!(mirror.has_synced());
    assert_eq!(mirror.len(), 2, "pod back, namespace deleted, node kept");
    // Uncompressed chunks whose checks the harness fixes up, then one batch.
    let fixed = std::fs::read(corpus_root().join("mirror/snapshot_fixed")).unwrap();
    let mirror = typha_fuzz::replay_mirror(&fixed);
    assert!(mirror.has_synced());
    assert_eq!(mirror.len(), 2);
    assert!(mirror.revision().0 > 1, "the fixed-up batch applied");
    // Without the fix-up flag the same frames are refused: the harness, not luck, passes.
    let unfixed: Vec<u8> = records_without_fixups(&fixed);
    assert!(!typha_fuzz::replay_mirror(&unfixed).has_synced());
}

fn records_without_fixups(data: &[u8]) -> Vec<u8> {
    let mut out = data.to_vec();
    let mut at = 0;
    while at + 3 <= out.len() {
        out[at] = 0;
        at += 3 + usize::from(u16::from_le_bytes([out[at + 1], out[at + 2]]));
    }
    out
}

/// Seed generation from real server output (typha's cache, converters and frame
/// builders). Kept small: a few frames of a few entries each.
mod seeds {
    use std::path::Path;

    use prost::Message;
    use serde_json::{Value, json};
    use snapshot_cache::{CacheConfig, SnapshotCache, compress};
    use typha_proto::frame;
    use typha_proto::pb::{self, client_message as cm, server_message as sm};

    fn write(dir: &Path, name: &str, data: &[u8]) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join(name), data).unwrap();
    }

    /// `[flags][len u16 LE][frame]` records of the mirror target.
    fn records(frames: &[(u8, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (flags, frame) in frames {
            out.push(*flags);
            out.extend_from_slice(&u16::try_from(frame.len()).unwrap().to_le_bytes());
            out.extend_from_slice(frame);
        }
        out
    }

    fn hello() -> pb::ClientHello {
        pb::ClientHello {
            node_name: "node-1".into(),
            syncer_type: pb::SyncerType::Felix as i32,
            protocol_version: 2,
            capabilities: vec![1, 2, 3, 4],
            resume: Some(pb::ResumePosition {
                epoch: "e1".into(),
                revision: 7,
                digest: vec![1; 16],
                versions: vec![pb::ResourceVersion {
                    resource: "pods".into(),
                    version: 42,
                }],
            }),
            client_version: "felix-client/0.1.0".into(),
        }
    }

    /// (kind byte of `convert_json`, object JSON).
    fn objects() -> Vec<(u8, &'static str, Value)> {
        let meta = |ns: Option<&str>, name: &str| {
            let mut m = json!({"name": name, "labels": {"app": "web"}});
            if let Some(ns) = ns {
                m["namespace"] = json!(ns);
            }
            m
        };
        vec![
            (
                0,
                "pod",
                json!({"metadata": meta(Some("x"), "a"), "spec": {"nodeName": "node-1", "serviceAccountName": "sa", "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 80}]}]}, "status": {"phase": "Running", "podIP": "10.0.0.5", "podIPs": [{"ip": "10.0.0.5"}, {"ip": "fd00::5"}]}}),
            ),
            (1, "namespace", json!({"metadata": meta(None, "x")})),
            (
                2,
                "serviceaccount",
                json!({"metadata": meta(Some("x"), "sa")}),
            ),
            (
                3,
                "node",
                json!({"metadata": meta(None, "node-1"), "spec": {"podCIDRs": ["10.244.1.0/24"]}, "status": {"addresses": [{"type": "InternalIP", "address": "192.168.0.2"}]}}),
            ),
            (
                4,
                "k8s_policy",
                json!({"metadata": meta(Some("x"), "allow-web"), "spec": {"podSelector": {"matchLabels": {"app": "web"}, "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}]}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "a"}}}, {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}], "ports": [{"port": 80}, {"port": "http", "protocol": "UDP"}, {"port": 1000, "endPort": 2000}]}], "policyTypes": ["Ingress", "Egress"]}}),
            ),
            (
                5,
                "calico_policy",
                json!({"metadata": meta(Some("x"), "p"), "spec": {"order": 10.5, "selector": "app == 'web'", "types": ["Ingress"], "ingress": [{"action": "Allow", "protocol": "TCP", "source": {"selector": "has(role)", "nets": ["10.0.0.0/8"], "ports": [80, "1000:2000", "http"]}, "destination": {"notPorts": [22]}}]}}),
            ),
            (
                6,
                "global_policy",
                json!({"metadata": meta(None, "g"), "spec": {"selector": "all()", "namespaceSelector": "team == 'a'", "egress": [{"action": "Deny", "protocol": "ICMP", "icmp": {"type": 8, "code": 0}, "destination": {"nets": ["0.0.0.0/0"]}}], "doNotTrack": false}}),
            ),
            (
                7,
                "global_network_set",
                json!({"metadata": meta(None, "gns"), "spec": {"nets": ["1.2.3.0/24", "fd00::/64"]}}),
            ),
            (
                8,
                "network_set",
                json!({"metadata": meta(Some("x"), "ns1"), "spec": {"nets": ["10.9.0.0/16"]}}),
            ),
            (
                9,
                "host_endpoint",
                json!({"metadata": meta(None, "hep"), "spec": {"node": "node-1", "interfaceName": "eth0", "expectedIPs": ["192.168.0.2"], "profiles": ["p"], "ports": [{"name": "ssh", "protocol": "TCP", "port": 22}]}}),
            ),
            (
                10,
                "ip_pool",
                json!({"metadata": meta(None, "pool"), "spec": {"cidr": "10.244.0.0/16", "natOutgoing": true, "vxlanMode": "CrossSubnet", "blockSize": 26, "nodeSelector": "all()"}}),
            ),
            (
                11,
                "felix_configuration",
                json!({"metadata": meta(None, "default"), "spec": {"logSeverityScreen": "Info", "reportingInterval": "30s", "bpfEnabled": false}}),
            ),
            (
                12,
                "cluster_information",
                json!({"metadata": meta(None, "default"), "spec": {"clusterGUID": "abc", "clusterType": "k8s", "calicoVersion": "v3", "datastoreReady": true}}),
            ),
        ]
    }

    fn updates() -> Vec<typha_proto::Update> {
        use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
        use netmodel::convert;
        let objs = objects();
        let pod: Pod = serde_json::from_value(objs[0].2.clone()).unwrap();
        let ns: Namespace = serde_json::from_value(objs[1].2.clone()).unwrap();
        let node: Node = serde_json::from_value(objs[3].2.clone()).unwrap();
        vec![
            convert(&pod).unwrap(),
            convert(&ns).unwrap(),
            convert(&node).unwrap(),
        ]
    }

    #[test]
    #[ignore = "regenerates the committed seeds"]
    fn write_seeds() {
        let root = super::corpus_root();

        let dir = root.join("client_message");
        let msg = |m: cm::Msg| pb::ClientMessage { msg: Some(m) }.encode_to_vec();
        write(&dir, "hello_resume", &msg(cm::Msg::Hello(hello())));
        let mut fresh = hello();
        fresh.resume = None;
        write(&dir, "hello_fresh", &msg(cm::Msg::Hello(fresh)));
        let mut bad = hello();
        bad.node_name = "bad name!".into();
        write(&dir, "hello_bad_name", &msg(cm::Msg::Hello(bad)));
        write(
            &dir,
            "ping",
            &msg(cm::Msg::Ping(pb::Ping {
                nonce: 3,
                sent_unix_nanos: 1_700_000_000,
            })),
        );
        write(&dir, "empty", b"");

        for (kind, name, value) in objects() {
            let mut data = vec![kind];
            data.extend_from_slice(&serde_json::to_vec(&value).unwrap());
            write(&root.join("convert_json"), name, &data);
        }
        for (i, bytes) in [
            &[0u8, 3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3, 2, 3, 8][..],
            &[1, 2, 1, 1, 3, 0, 2, 1, 1, 1, 0, 4, 2, 2, 1, 1, 1, 0, 1, 2][..],
            &[
                2, 1, 1, 2, 3, 4, 1, 1, 0, 2, 1, 1, 1, 2, 1, 3, 1, 1, 1, 1, 1, 1,
            ][..],
            &[
                3, 5, 1, 0, 1, 1, 2, 1, 2, 1, 1, 1, 0, 0, 1, 1, 2, 2, 1, 0, 1,
            ][..],
        ]
        .iter()
        .enumerate()
        {
            write(&root.join("convert_structured"), &format!("seed{i}"), bytes);
        }

        let dir = root.join("selector");
        for (i, text) in [
            &b"app == 'web' && has(tier)\0app=web\ntier=front"[..],
            b"a in { 'x', \"y\" } || !(b != 'c' && c not in {})\0a=y",
            b"k starts with 'p' && k ends with 's' && k contains \"it's\"\0k=pits",
            b"!has(x) && (a == 'b' || global()) && all()",
            b"projectcalico.org/namespace == 'x' && pcns.team == 'a'\0projectcalico.org/namespace=x",
        ]
        .iter()
        .enumerate()
        {
            write(&dir, &format!("seed{i}"), text);
        }

        // Real server output: typha's cache builds the snapshot and delta frames.
        let mut cache = SnapshotCache::new(CacheConfig {
            chunk_raw_bytes: 200,
            ..CacheConfig::default()
        });
        let mut all = updates();
        let first = all.remove(0);
        cache.apply(all.clone());
        let snapshot = compress(&cache.build_snapshot(), 1).unwrap();
        let mut moved = first.clone();
        if let Some(typha_proto::Value::WorkloadEndpoint(w)) = moved.value.as_mut() {
            w.labels.insert("moved".into(), "yes".into());
        }
        let crumbs = [
            cache.apply([first]).unwrap(),
            cache
                .apply([moved, typha_proto::Update::delete(all[0].key.clone())])
                .unwrap(),
        ];
        let server_hello = frame::encode(sm::Msg::Hello(pb::ServerHello {
            server_id: "typha-0".into(),
            protocol_version: 2,
            capabilities: vec![1, 2, 3, 4],
            epoch: cache.epoch().to_string(),
            resumed: false,
            server_version: "0.1.0".into(),
        }));
        let dir = root.join("server_frame");
        write(&dir, "hello", &server_hello);
        write(&dir, "chunk_zstd", &snapshot.chunk_frames[0]);
        write(&dir, "in_sync", &snapshot.in_sync_frame);
        write(&dir, "deltas", &crumbs[1].frame);
        let goodbye = pb::Goodbye {
            reason: pb::GoodbyeReason::Rebalance as i32,
            message: "bye".into(),
        };
        write(&dir, "goodbye", &frame::encode(sm::Msg::Goodbye(goodbye)));
        write(
            &dir,
            "ping",
            &frame::encode(sm::Msg::Ping(pb::Ping {
                nonce: 1,
                sent_unix_nanos: 2,
            })),
        );

        // A whole session as the server sends it, and the same state in uncompressed
        // chunks with every check left to the harness's fix-ups (flag 1).
        let mut session: Vec<(u8, &[u8])> = vec![(0, &server_hello)];
        session.extend(snapshot.chunk_frames.iter().map(|f| (0u8, f.as_ref())));
        session.push((0, &snapshot.in_sync_frame));
        session.extend(crumbs.iter().map(|c| (0u8, c.frame.as_ref())));
        let dir = root.join("mirror");
        write(&dir, "session", &records(&session));
        let raw = cache.build_snapshot();
        let count = raw.chunks.len() as u32;
        let plain: Vec<Vec<u8>> = raw
            .chunks
            .iter()
            .zip(0..)
            .map(|(payload, index)| {
                frame::encode(sm::Msg::SnapshotChunk(pb::SnapshotChunk {
                    revision: 1,
                    index,
                    count,
                    compression: pb::Compression::None as i32,
                    raw_len: 0,
                    payload: payload.encode().freeze(),
                }))
                .to_vec()
            })
            .collect();
        let in_sync = frame::encode(sm::Msg::InSync(pb::InSync::default()));
        let mut fixed: Vec<(u8, &[u8])> = vec![(0, &server_hello)];
        fixed.extend(plain.iter().map(|f| (1u8, f.as_slice())));
        fixed.push((1, &in_sync));
        fixed.push((1, &crumbs[0].frame));
        write(&dir, "snapshot_fixed", &records(&fixed));
    }
}
