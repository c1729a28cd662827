//! The Kubernetes API the load test writes to (churn) and, in the direct baseline, lists
//! and watches: kube-sim over plain loopback HTTP (the raw [`crate::http1`] client, so
//! every byte received is counted), or any API server named by a kubeconfig (through the
//! kube client: TLS and authentication as kubectl does them; only body bytes are
//! counted there, the client hides the headers).
//!
//! Invariant: both variants answer with the same [`Response`] shape and a non-2xx status
//! is returned, not turned into an error, so callers treat both alike.

use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;

use anyhow::Context;
use futures::{AsyncBufRead, AsyncReadExt};

use crate::http1::{self, Response, Streaming};

/// Where the API server is.
#[derive(Clone)]
pub enum Api {
    /// kube-sim started by the load test (plain HTTP on loopback).
    Sim(SocketAddr),
    /// An existing API server from a kubeconfig.
    Cluster(kube::Client),
}

impl Api {
    /// A client for the API server of `kubeconfig` (its current context).
    pub async fn from_kubeconfig(kubeconfig: &Path) -> anyhow::Result<Api> {
        let client = netmodel::kube_client(Some(kubeconfig)).await?;
        Ok(Api::Cluster(client))
    }

    /// One complete request; a non-2xx status is returned, not an error.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<(&str, &[u8])>,
    ) -> anyhow::Result<Response> {
        match self {
            Api::Sim(addr) => http1::request(*addr, method, path, body).await,
            Api::Cluster(client) => {
                let mut request = http::Request::builder()
                    .method(method)
                    .uri(path)
                    .header(http::header::ACCEPT, "application/json");
                if let Some((content_type, _)) = body {
                    request = request.header(http::header::CONTENT_TYPE, content_type);
                }
                let bytes = body.map(|(_, b)| b.to_vec()).unwrap_or_default();
                let request = request
                    .body(kube::client::Body::from(bytes))
                    .with_context(|| format!("{method} {path}"))?;
                let response = client
                    .send(request)
                    .await
                    .with_context(|| format!("{method} {path}"))?;
                let status = response.status().as_u16();
                let body = response.into_body().collect_bytes().await?.to_vec();
                Ok(Response {
                    status,
                    wire_bytes: body.len() as u64,
                    body,
                })
            }
        }
    }

    /// Opens a GET whose body keeps arriving (a watch). For a cluster, a non-2xx status
    /// is an error.
    pub async fn open(&self, path: &str) -> anyhow::Result<ApiStream> {
        match self {
            Api::Sim(addr) => Ok(ApiStream::Sim(http1::open(*addr, "GET", path, None).await?)),
            Api::Cluster(client) => {
                let request = http::Request::builder()
                    .method("GET")
                    .uri(path)
                    .header(http::header::ACCEPT, "application/json")
                    .body(Vec::new())
                    .with_context(|| format!("GET {path}"))?;
                let reader = client
                    .request_stream(request)
                    .await
                    .with_context(|| format!("GET {path}"))?;
                Ok(ApiStream::Cluster {
                    reader: Box::pin(reader),
                    wire_bytes: 0,
                })
            }
        }
    }
}

/// A response body still arriving.
pub enum ApiStream {
    /// From kube-sim.
    Sim(Streaming),
    /// From a cluster's API server (status already checked: 2xx).
    Cluster {
        /// The body.
        reader: Pin<Box<dyn AsyncBufRead + Send>>,
        /// Body bytes so far.
        wire_bytes: u64,
    },
}

impl ApiStream {
    /// The HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            ApiStream::Sim(s) => s.status,
            ApiStream::Cluster { .. } => 200,
        }
    }

    /// Bytes received so far.
    pub fn wire_bytes(&self) -> u64 {
        match self {
            ApiStream::Sim(s) => s.wire_bytes,
            ApiStream::Cluster { wire_bytes, .. } => *wire_bytes,
        }
    }

    /// Appends the next piece of the body to `buf`; `false` at the end.
    pub async fn next_chunk(&mut self, buf: &mut Vec<u8>) -> anyhow::Result<bool> {
        match self {
            ApiStream::Sim(s) => s.next_chunk(buf).await,
            ApiStream::Cluster { reader, wire_bytes } => {
                let start = buf.len();
                buf.resize(start + 64 * 1024, 0);
                let n = reader.read(&mut buf[start..]).await?;
                buf.truncate(start + n);
                *wire_bytes += n as u64;
                Ok(n > 0)
            }
        }
    }
}
