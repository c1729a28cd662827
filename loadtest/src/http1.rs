//! A minimal HTTP/1.0 client over loopback TCP, for the load test's own traffic: churn
//! writes, the direct (no-typha) list+watch baseline and /metrics scrapes.
//!
//! HTTP/1.0 with `Connection: close` keeps it tiny: the server ends every body by
//! closing, so there is no chunked decoding, and every byte received is counted (the
//! load test subtracts its own traffic from the API server's bytes sent). Not a general
//! client: no redirects, no TLS, loopback only.

use std::net::SocketAddr;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A complete response.
#[derive(Debug)]
pub struct Response {
    /// HTTP status code.
    pub status: u16,
    /// The body.
    pub body: Vec<u8>,
    /// Bytes received in total (headers included).
    pub wire_bytes: u64,
}

/// A response whose body is still arriving (a watch).
pub struct Streaming {
    /// HTTP status code.
    pub status: u16,
    stream: TcpStream,
    /// Body bytes that arrived with the headers.
    pending: Vec<u8>,
    /// Bytes received so far, headers included.
    pub wire_bytes: u64,
}

fn request_head(
    method: &str,
    addr: SocketAddr,
    path: &str,
    content: Option<(&str, usize)>,
) -> String {
    let mut head =
        format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\nAccept: application/json\r\n");
    if let Some((content_type, len)) = content {
        head.push_str(&format!(
            "Content-Type: {content_type}\r\nContent-Length: {len}\r\n"
        ));
    }
    head.push_str("Connection: close\r\n\r\n");
    head
}

/// Sends a request and opens the response (headers read, body pending).
pub async fn open(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<(&str, &[u8])>,
) -> anyhow::Result<Streaming> {
    let mut stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    let head = request_head(method, addr, path, body.map(|(t, b)| (t, b.len())));
    let mut out = head.into_bytes();
    if let Some((_, b)) = body {
        out.extend_from_slice(b);
    }
    stream.write_all(&out).await?;
    let mut buf = Vec::with_capacity(8192);
    let mut chunk = [0u8; 8192];
    let header_end = loop {
        let n = stream.read(&mut chunk).await?;
        anyhow::ensure!(n > 0, "{addr} closed before the response headers");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(pos) = find(&buf, b"\r\n\r\n") {
            break pos + 4;
        }
        anyhow::ensure!(buf.len() < 64 * 1024, "{addr}: response headers too long");
    };
    let status_line = std::str::from_utf8(&buf[..header_end]).context("response headers")?;
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no status code in the response")?;
    anyhow::ensure!(
        !status_line
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{addr} answered HTTP/1.0 with a chunked body"
    );
    Ok(Streaming {
        status,
        wire_bytes: buf.len() as u64,
        pending: buf.split_off(header_end),
        stream,
    })
}

impl Streaming {
    /// The next piece of the body; `None` at the end.
    pub async fn next_chunk(&mut self, buf: &mut Vec<u8>) -> anyhow::Result<bool> {
        if !self.pending.is_empty() {
            buf.append(&mut self.pending);
            return Ok(true);
        }
        let start = buf.len();
        buf.resize(start + 64 * 1024, 0);
        let n = self.stream.read(&mut buf[start..]).await?;
        buf.truncate(start + n);
        self.wire_bytes += n as u64;
        Ok(n > 0)
    }

    /// Reads the whole body.
    pub async fn into_response(mut self) -> anyhow::Result<Response> {
        let mut body = Vec::new();
        while self.next_chunk(&mut body).await? {}
        Ok(Response {
            status: self.status,
            body,
            wire_bytes: self.wire_bytes,
        })
    }
}

/// One complete request.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<(&str, &[u8])>,
) -> anyhow::Result<Response> {
    open(addr, method, path, body).await?.into_response().await
}

/// GET `path` and the body as text; fails on a non-2xx status.
pub async fn get_text(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let response = request(addr, "GET", path, None).await?;
    anyhow::ensure!(
        (200..300).contains(&response.status),
        "GET {path} on {addr}: status {}",
        response.status
    );
    Ok(String::from_utf8_lossy(&response.body).into_owned())
}

/// The first position of `needle` in `haystack`.
pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Parsed Prometheus text exposition: (name, labels text, value) per sample.
#[derive(Clone, Debug, Default)]
pub struct Scrape {
    samples: Vec<(String, String, f64)>,
}

impl Scrape {
    /// Parses the text format (comments skipped; unparsable lines ignored).
    pub fn parse(text: &str) -> Scrape {
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                let value: f64 = value.trim().parse().ok()?;
                let (name, labels) = match series.split_once('{') {
                    Some((name, rest)) => (name, rest.trim_end_matches('}')),
                    None => (series, ""),
                };
                Some((name.to_string(), labels.to_string(), value))
            })
            .collect();
        Scrape { samples }
    }

    /// Sum of every series of `name` (0 if absent).
    pub fn sum(&self, name: &str) -> f64 {
        self.samples
            .iter()
            .filter(|(n, _, _)| n == name)
            .map(|(_, _, v)| v)
            .sum()
    }

    /// Series of `name` with one `resource` label, by resource (typha's per-resource
    /// gauges such as `typha_resume_floor`).
    pub fn per_resource(&self, name: &str) -> std::collections::BTreeMap<String, f64> {
        self.by_label(name)
            .into_iter()
            .filter_map(|(labels, value)| {
                let resource = labels.strip_prefix("resource=\"")?.strip_suffix('"')?;
                Some((resource.to_string(), value))
            })
            .collect()
    }

    /// Series of `name` by label text (`reason="slow"`), for labelled counters.
    pub fn by_label(&self, name: &str) -> Vec<(String, f64)> {
        self.samples
            .iter()
            .filter(|(n, _, _)| n == name)
            .map(|(_, l, v)| (l.clone(), *v))
            .collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_prometheus_text() {
        let text =
            "# TYPE a counter\na_total 3\nb{reason=\"slow\"} 2\nb{reason=\"gone\"} 5\nc_sum 0.25\n";
        let scrape = Scrape::parse(text);
        assert_eq!(scrape.sum("a_total"), 3.0);
        assert_eq!(scrape.sum("b"), 7.0);
        assert_eq!(
            scrape.by_label("b")[0],
            ("reason=\"slow\"".to_string(), 2.0)
        );
        assert_eq!(scrape.sum("missing"), 0.0);
        let gauges = Scrape::parse("g{resource=\"pods\"} 7\ng{resource=\"nodes\"} 3\n");
        assert_eq!(gauges.per_resource("g")["pods"], 7.0);
        assert_eq!(gauges.per_resource("g").len(), 2);
    }

    #[test]
    fn finds_needles() {
        assert_eq!(find(b"ab\r\n\r\ncd", b"\r\n\r\n"), Some(2));
        assert_eq!(find(b"abc", b"x"), None);
    }
}
