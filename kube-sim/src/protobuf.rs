//! Kubernetes protobuf request bodies (`application/vnd.kubernetes.protobuf`), which
//! kubectl's typed clients send for built-in kinds: the 4-byte magic `k8s\0`, then a
//! `runtime.Unknown` (typeMeta, raw) whose `raw` is the object's message.
//!
//! Messages are decoded to the JSON the same object has in the API, driven by the field
//! tables of [`crate::protobuf_types`] (tag -> JSON name and kind, tags as in the
//! Kubernetes `generated.proto` files). Only the kinds and fields those tables cover are
//! accepted: a field kube-sim does not know is refused with a message naming it, never
//! dropped silently. Zero scalars of non-pointer Go fields (always on the wire) are
//! omitted, as the API server's JSON omits them.

use bytes::Buf;
use prost::encoding::{WireType, decode_key, decode_varint};
use serde_json::{Map, Value, json};

use crate::protobuf_types::{F, K, kind_message};

/// The 4 bytes every Kubernetes protobuf body starts with.
pub const MAGIC: &[u8; 4] = b"k8s\0";

/// Why a protobuf body could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    /// The body does not start with `k8s\0`.
    #[error("provided value is not a valid protobuf object: missing the k8s magic prefix")]
    Magic,
    /// The wire data is malformed (truncated, bad varint, wrong wire type).
    #[error("unable to decode protobuf body: {0}")]
    Malformed(String),
    /// The envelope names no kind, or one kube-sim cannot decode from protobuf.
    #[error("kube-sim cannot decode {0} from protobuf; send it as application/json")]
    UnsupportedKind(String),
    /// A field number kube-sim's tables do not cover.
    #[error(
        "kube-sim cannot decode protobuf field {tag} of {message}; send this object as application/json"
    )]
    UnknownField {
        /// The message (JSON path) it occurred in.
        message: String,
        /// The field number.
        tag: u32,
    },
}

fn malformed(e: impl std::fmt::Display) -> ProtoError {
    ProtoError::Malformed(e.to_string())
}

/// Reads one length-delimited field's bytes.
fn take_len<'a>(buf: &mut &'a [u8]) -> Result<&'a [u8], ProtoError> {
    let len = usize::try_from(decode_varint(buf).map_err(malformed)?).map_err(malformed)?;
    if buf.remaining() < len {
        return Err(ProtoError::Malformed(
            "truncated length-delimited field".into(),
        ));
    }
    let (head, tail) = buf.split_at(len);
    *buf = tail;
    Ok(head)
}

/// A raw field value.
enum Wire<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

/// Iterates (tag, value) over a message's fields.
fn fields(mut buf: &[u8]) -> Result<Vec<(u32, Wire<'_>)>, ProtoError> {
    let mut out = Vec::new();
    while buf.has_remaining() {
        let (tag, wt) = decode_key(&mut buf).map_err(malformed)?;
        let v = match wt {
            WireType::Varint => Wire::Varint(decode_varint(&mut buf).map_err(malformed)?),
            WireType::LengthDelimited => Wire::Bytes(take_len(&mut buf)?),
            WireType::SixtyFourBit if buf.remaining() >= 8 => Wire::Varint(buf.get_u64_le()),
            WireType::ThirtyTwoBit if buf.remaining() >= 4 => {
                Wire::Varint(u64::from(buf.get_u32_le()))
            }
            other => {
                return Err(ProtoError::Malformed(format!(
                    "unsupported or truncated wire type {other:?}"
                )));
            }
        };
        out.push((tag, v));
    }
    Ok(out)
}

fn as_str(w: &Wire<'_>) -> Result<String, ProtoError> {
    match w {
        Wire::Bytes(b) => String::from_utf8(b.to_vec()).map_err(malformed),
        Wire::Varint(_) => Err(ProtoError::Malformed("expected a string".into())),
    }
}

fn as_bytes<'a>(w: &Wire<'a>) -> Result<&'a [u8], ProtoError> {
    match w {
        Wire::Bytes(b) => Ok(b),
        Wire::Varint(_) => Err(ProtoError::Malformed("expected bytes".into())),
    }
}

fn as_int(w: &Wire<'_>) -> Result<i64, ProtoError> {
    match w {
        // int32/int64 are two's complement varints.
        Wire::Varint(v) => Ok(*v as i64),
        Wire::Bytes(_) => Err(ProtoError::Malformed("expected an integer".into())),
    }
}

fn base64(b: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(b.len().div_ceil(3) * 4);
    for chunk in b.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, c)| n | (u32::from(*c) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn time(b: &[u8]) -> Result<Value, ProtoError> {
    let mut secs = 0i64;
    for (tag, w) in fields(b)? {
        if tag == 1 {
            secs = as_int(&w)?;
        }
    }
    if secs == 0 {
        return Ok(Value::Null);
    }
    let t = time::OffsetDateTime::from_unix_timestamp(secs).map_err(malformed)?;
    Ok(json!(crate::object::rfc3339(t)))
}

fn int_or_string(b: &[u8]) -> Result<Value, ProtoError> {
    let (mut ty, mut int, mut s) = (0, 0, String::new());
    for (tag, w) in fields(b)? {
        match tag {
            1 => ty = as_int(&w)?,
            2 => int = as_int(&w)? as i32,
            3 => s = as_str(&w)?,
            _ => {}
        }
    }
    Ok(if ty == 1 { json!(s) } else { json!(int) })
}

fn quantity(b: &[u8]) -> Result<Value, ProtoError> {
    let mut s = String::new();
    for (tag, w) in fields(b)? {
        if tag == 1 {
            s = as_str(&w)?;
        }
    }
    Ok(json!(s))
}

/// A map entry message (key = 1, value = 2) with the value decoded by `val`.
fn map_entry(
    b: &[u8],
    val: impl Fn(&Wire<'_>) -> Result<Value, ProtoError>,
) -> Result<(String, Value), ProtoError> {
    let (mut k, mut v) = (String::new(), Value::Null);
    for (tag, w) in fields(b)? {
        match tag {
            1 => k = as_str(&w)?,
            2 => v = val(&w)?,
            _ => {}
        }
    }
    Ok((k, v))
}

fn push(m: &mut Map<String, Value>, name: &str, v: Value) {
    match m.entry(name).or_insert_with(|| json!([])) {
        Value::Array(a) => a.push(v),
        other => *other = json!([v]),
    }
}

fn insert_map(m: &mut Map<String, Value>, name: &str, (k, v): (String, Value)) {
    let e = m.entry(name).or_insert_with(|| json!({}));
    if let Value::Object(o) = e {
        o.insert(k, v);
    }
}

/// A decoded field value and where it goes in the parent object.
enum Placed {
    /// The field's value; `omit_zero`: a non-pointer Go field, left out when zero.
    Set { value: Value, omit_zero: bool },
    /// One element of a repeated field.
    Item(Value),
    /// One entry (key, value) of a map field.
    Entry((String, Value)),
    /// An embedded message's fields, inlined into the parent.
    Fields(Map<String, Value>),
}

/// Whether `v` is the zero value the API server's JSON omits.
fn is_zero(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_i64() == Some(0),
        Value::String(s) => s.is_empty(),
        Value::Array(_) | Value::Object(_) => false,
    }
}

/// Decodes one wire value of field `f` of the message at `path`.
fn decode(f: &F, w: &Wire<'_>, path: &str) -> Result<Placed, ProtoError> {
    let set = |value, omit_zero| Placed::Set { value, omit_zero };
    let sub = || format!("{path}.{}", f.name);
    Ok(match f.k {
        K::Str => set(json!(as_str(w)?), true),
        K::OptStr => set(json!(as_str(w)?), false),
        K::Int => set(json!(as_int(w)?), true),
        K::OptInt => set(json!(as_int(w)?), false),
        K::Bool => set(json!(as_int(w)? != 0), true),
        K::OptBool => set(json!(as_int(w)? != 0), false),
        K::Time => set(time(as_bytes(w)?)?, true),
        K::IntOrStr => set(int_or_string(as_bytes(w)?)?, false),
        K::Quantity => set(quantity(as_bytes(w)?)?, false),
        K::Msg(t) => set(Value::Object(message(as_bytes(w)?, t, &sub())?), false),
        K::Inline(t) => Placed::Fields(message(as_bytes(w)?, t, path)?),
        K::RepStr => Placed::Item(json!(as_str(w)?)),
        K::RepMsg(t) => Placed::Item(Value::Object(message(as_bytes(w)?, t, &sub())?)),
        K::MapStr => Placed::Entry(map_entry(as_bytes(w)?, |v| Ok(json!(as_str(v)?)))?),
        K::MapBytes => Placed::Entry(map_entry(as_bytes(w)?, |v| {
            Ok(json!(base64(as_bytes(v)?)))
        })?),
        K::MapQty => Placed::Entry(map_entry(as_bytes(w)?, |v| quantity(as_bytes(v)?))?),
    })
}

/// Decodes one field `w` described by `f` into `m`.
fn field(m: &mut Map<String, Value>, f: &F, w: &Wire<'_>, path: &str) -> Result<(), ProtoError> {
    match decode(f, w, path)? {
        Placed::Set { value, omit_zero } => {
            if !(omit_zero && is_zero(&value)) {
                m.insert(f.name.into(), value);
            }
        }
        Placed::Item(v) => push(m, f.name, v),
        Placed::Entry(entry) => insert_map(m, f.name, entry),
        Placed::Fields(fields) => m.extend(fields),
    }
    Ok(())
}

/// Decodes one message with the field table `table`; `path` names it in errors.
pub fn message(b: &[u8], table: &[F], path: &str) -> Result<Map<String, Value>, ProtoError> {
    let mut m = Map::new();
    for (tag, w) in fields(b)? {
        let Some(f) = table.iter().find(|f| f.tag == tag) else {
            return Err(ProtoError::UnknownField {
                message: path.to_string(),
                tag,
            });
        };
        field(&mut m, f, &w, path)?;
    }
    Ok(m)
}

/// Decodes a whole request body (magic + runtime.Unknown) into the object's JSON, with
/// `apiVersion` and `kind` from the envelope.
pub fn decode_body(body: &[u8]) -> Result<Value, ProtoError> {
    let rest = body.strip_prefix(MAGIC).ok_or(ProtoError::Magic)?;
    let (mut api_version, mut kind, mut raw, mut encoding) =
        (String::new(), String::new(), None, String::new());
    for (tag, w) in fields(rest)? {
        match tag {
            1 => {
                for (t, v) in fields(as_bytes(&w)?)? {
                    match t {
                        1 => api_version = as_str(&v)?,
                        2 => kind = as_str(&v)?,
                        _ => {}
                    }
                }
            }
            2 => raw = Some(as_bytes(&w)?),
            3 => encoding = as_str(&w)?,
            4 => {}
            other => {
                return Err(ProtoError::UnknownField {
                    message: "runtime.Unknown".into(),
                    tag: other,
                });
            }
        }
    }
    if !encoding.is_empty() {
        return Err(ProtoError::Malformed(format!(
            "unsupported content encoding {encoding:?}"
        )));
    }
    if kind.is_empty() {
        return Err(ProtoError::Malformed(
            "the envelope names no kind (typeMeta.kind is empty)".into(),
        ));
    }
    let table = kind_message(&api_version, &kind)
        .ok_or_else(|| ProtoError::UnsupportedKind(format!("{api_version}, Kind={kind}")))?;
    let mut obj = message(raw.unwrap_or_default(), table, &kind)?;
    obj.insert("apiVersion".into(), json!(api_version));
    obj.insert("kind".into(), json!(kind));
    Ok(Value::Object(obj))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// Encodes a length-delimited field.
    fn ld(tag: u32, b: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        prost::encoding::encode_key(tag, WireType::LengthDelimited, &mut out);
        prost::encoding::encode_varint(b.len() as u64, &mut out);
        out.extend_from_slice(b);
        out
    }

    fn varint(tag: u32, v: u64) -> Vec<u8> {
        let mut out = Vec::new();
        prost::encoding::encode_key(tag, WireType::Varint, &mut out);
        prost::encoding::encode_varint(v, &mut out);
        out
    }

    fn envelope(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
        let tm = [ld(1, api_version.as_bytes()), ld(2, kind.as_bytes())].concat();
        [MAGIC.to_vec(), ld(1, &tm), ld(2, raw)].concat()
    }

    #[test]
    fn configmap_decodes_with_maps_and_empty_fields_omitted() {
        let label = [ld(1, b"app"), ld(2, b"web")].concat();
        let meta = [ld(1, b"cfg"), ld(2, b""), ld(11, &label), varint(7, 0)].concat();
        let data = [ld(1, b"k"), ld(2, b"v")].concat();
        let bin = [ld(1, b"b"), ld(2, b"hi!")].concat();
        let raw = [ld(1, &meta), ld(2, &data), ld(3, &bin)].concat();
        let v = decode_body(&envelope("v1", "ConfigMap", &raw)).unwrap();
        assert_eq!(
            v,
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg", "labels": {"app": "web"}},
                   "data": {"k": "v"}, "binaryData": {"b": "aGkh"}})
        );
    }

    #[test]
    fn bad_bodies_are_refused() {
        assert_eq!(decode_body(b"{}"), Err(ProtoError::Magic));
        let full = envelope("v1", "Namespace", &ld(1, &ld(1, b"demo")));
        let cut = &full[..full.len() - 2];
        assert!(matches!(decode_body(cut), Err(ProtoError::Malformed(_))));
        let odd = envelope("v1", "Namespace", &varint(99, 1));
        assert!(matches!(
            decode_body(&odd),
            Err(ProtoError::UnknownField { tag: 99, .. })
        ));
        let unknown_kind = envelope("example.com/v1", "Widget", b"");
        assert!(matches!(
            decode_body(&unknown_kind),
            Err(ProtoError::UnsupportedKind(_))
        ));
        assert_eq!(base64(b"ab"), "YWI=");
    }
}
