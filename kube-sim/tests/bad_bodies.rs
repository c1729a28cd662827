//! Bad request bodies get the Kubernetes `Status` a real API server answers with, are
//! counted, and leave the stored state unchanged: truncated protobuf, a body without the
//! protobuf envelope, protobuf of a kind or field kube-sim cannot read, an unknown media
//! type, a 10 MiB body, a JSON patch whose `test` fails, a malformed JSON patch, and a
//! client that accepts only protobuf answers. Plain HTTP/1.1 over a TCP socket, so the
//! bytes on the wire are exactly the test's.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;

use kube_sim::{Config, KubeSim};
use prost::encoding::{WireType, encode_key, encode_varint};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends one request; returns the status code and the parsed JSON body.
async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Value) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let (mut rd, mut wr) = stream.split();
    let write = async {
        wr.write_all(head.as_bytes()).await?;
        wr.write_all(body).await?;
        wr.flush().await
    };
    let mut response = Vec::new();
    let read = rd.read_to_end(&mut response);
    let (written, read) = tokio::join!(write, read);
    written.unwrap();
    read.unwrap();
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").expect("no HTTP head");
    let code: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (
        code,
        serde_json::from_str(body).unwrap_or(Value::String(body.to_string())),
    )
}

fn ld(tag: u32, b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_key(tag, WireType::LengthDelimited, &mut out);
    encode_varint(b.len() as u64, &mut out);
    out.extend_from_slice(b);
    out
}

/// `k8s\0` + runtime.Unknown{typeMeta{apiVersion, kind}, raw}.
fn envelope(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
    let type_meta = [ld(1, api_version.as_bytes()), ld(2, kind.as_bytes())].concat();
    [b"k8s\0".to_vec(), ld(1, &type_meta), ld(2, raw)].concat()
}

/// A protobuf ConfigMap `name` with data {a: b}.
fn configmap(name: &str) -> Vec<u8> {
    let meta = ld(1, name.as_bytes());
    let entry = [ld(1, b"a"), ld(2, b"b")].concat();
    envelope("v1", "ConfigMap", &[ld(1, &meta), ld(2, &entry)].concat())
}

fn assert_status(got: &(u16, Value), code: u16, reason: &str, message_part: &str) {
    let (c, v) = got;
    assert_eq!(*c, code, "{v}");
    assert_eq!(v["kind"], "Status", "{v}");
    assert_eq!(v["status"], "Failure", "{v}");
    assert_eq!(v["code"], code, "{v}");
    assert_eq!(v["reason"], reason, "{v}");
    let message = v["message"].as_str().unwrap();
    assert!(
        message.contains(message_part),
        "{message:?} lacks {message_part:?}"
    );
}

const PB: (&str, &str) = ("Content-Type", "application/vnd.kubernetes.protobuf");
const CMS: &str = "/api/v1/namespaces/demo/configmaps";

#[tokio::test]
async fn bad_bodies_get_kubernetes_status_errors_and_change_nothing() {
    let sim = KubeSim::start(Config::default()).await.unwrap();
    let addr = sim.addr();
    // A well-formed protobuf create works (the baseline the bad ones differ from).
    let ok = send(addr, "POST", CMS, &[PB], &configmap("good")).await;
    assert_eq!(ok.0, 201, "{}", ok.1);
    assert_eq!(ok.1["data"], json!({"a": "b"}));
    let rv = sim.store().resource_version();
    let before = sim.metrics().snapshot().rejected_bodies;

    // Bad POST bodies: (Content-Type, body, code, reason, part of the message).
    let full = configmap("cut");
    let (pb, json) = (PB.1, "application/json");
    let no_kind = envelope("v1", "", b"");
    let unknown_kind = envelope("v1", "Binding", b"");
    let mut odd_field = Vec::new();
    encode_key(42, WireType::Varint, &mut odd_field);
    encode_varint(1, &mut odd_field);
    let odd = envelope("v1", "ConfigMap", &odd_field);
    let big = vec![b' '; 10 * 1024 * 1024];
    let not_pb = "not a valid protobuf object";
    let unsupported = "UnsupportedMediaType";
    let cases: [(&str, &[u8], u16, &str, &str); 9] = [
        (pb, &full[..full.len() - 3], 400, "BadRequest", "truncated"),
        (pb, &full[4..], 400, "BadRequest", not_pb),
        (
            pb,
            br#"{"metadata":{"name":"x"}}"#,
            400,
            "BadRequest",
            not_pb,
        ),
        (pb, &no_kind, 400, "BadRequest", "names no kind"),
        (pb, &unknown_kind, 415, unsupported, "Kind=Binding"),
        (pb, &odd, 415, unsupported, "field 42 of ConfigMap"),
        (
            "application/xml",
            b"<x/>",
            415,
            unsupported,
            "application/xml",
        ),
        (json, &big, 413, "RequestEntityTooLarge", "limit is 3145728"),
        (
            json,
            b"{\"metadata\":",
            400,
            "BadRequest",
            "json parse error",
        ),
    ];
    for (content_type, body, code, reason, message) in cases {
        let got = send(addr, "POST", CMS, &[("Content-Type", content_type)], body).await;
        assert_status(&got, code, reason, message);
    }

    // JSON patches: a failing test op is 422 (the object is untouched), a malformed patch 400.
    let obj = format!("{CMS}/good");
    let jp = ("Content-Type", "application/json-patch+json");
    let failing =
        br#"[{"op":"test","path":"/data/a","value":"nope"},{"op":"remove","path":"/data"}]"#;
    let failed = send(addr, "PATCH", &obj, &[jp], failing).await;
    assert_status(
        &failed,
        422,
        "Invalid",
        "the server rejected our request due to an error in our request",
    );
    let malformed = send(addr, "PATCH", &obj, &[jp], br#"{"op":"add"}"#).await;
    assert_status(&malformed, 400, "BadRequest", "error decoding patch");
    let status_path = "/api/v1/namespaces/demo/pods/none/status";
    let missing = send(addr, "PATCH", status_path, &[jp], b"[]").await;
    assert_status(&missing, 404, "NotFound", "pods \"none\" not found");

    // A client that accepts only protobuf answers.
    let pb_only = send(
        addr,
        "GET",
        CMS,
        &[("Accept", "application/vnd.kubernetes.protobuf")],
        b"",
    )
    .await;
    assert_status(&pb_only, 406, "NotAcceptable", "application/json");

    assert_eq!(
        sim.store().resource_version(),
        rv,
        "a rejected request wrote something"
    );
    let stored = sim
        .store()
        .get_object("v1", "ConfigMap", "demo", "good")
        .unwrap();
    assert_eq!(stored["data"], json!({"a": "b"}));
    assert!(
        sim.store()
            .get_object("v1", "ConfigMap", "demo", "cut")
            .is_none()
    );
    // Every rejected body above (not the 404 or the 406) is counted.
    assert_eq!(sim.metrics().snapshot().rejected_bodies - before, 11);

    // The passing test op then applies.
    let passing = br#"[{"op":"test","path":"/data/a","value":"b"},{"op":"add","path":"/data/c","value":"d"}]"#;
    let applied = send(addr, "PATCH", &obj, &[jp], passing).await;
    assert_eq!(applied.0, 200, "{}", applied.1);
    assert_eq!(applied.1["data"], json!({"a": "b", "c": "d"}));
    sim.shutdown().await;
}
