//! The `typha.sync.v1.Typha` service as tonic's router sees it: a tower service that
//! does the gRPC framing of `Sync` itself instead of tonic's generated server.
//!
//! Why: tonic's server encodes every response message into a per-stream buffer (a copy
//! per client of each shared frame) and needs a `Stream` fed by another task. This
//! service answers with the stream's own body ([`super::outbound::SyncBody`]), which
//! hands the cache's prefixed breadcrumb messages to HTTP/2 as they are.
//!
//! Invariant: what a client sees is what tonic's generated server sent: the same
//! `content-type`, a trailers-only response with the status for a refused stream or an
//! unsupported `grpc-encoding` (tonic's message and `grpc-accept-encoding: identity`),
//! `UNIMPLEMENTED` for any other method of the service, the request decoded by tonic's
//! own `Streaming` with the same size limit (so a bad message fails the same way), and
//! trailers written by the body exactly as tonic writes them.

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::Status;
use tonic::body::Body;
use tonic::metadata::{GRPC_CONTENT_TYPE, MetadataValue};
use tonic::server::NamedService;

use typha_proto::SYNC_PATH;

use super::SyncService;

/// The `Typha` gRPC service (one method, `Sync`).
#[derive(Clone)]
pub(super) struct SyncRoute(Arc<SyncService>);

impl SyncRoute {
    pub(super) fn new(service: SyncService) -> SyncRoute {
        SyncRoute(Arc::new(service))
    }

    fn respond(&self, request: http::Request<Body>) -> http::Response<Body> {
        if request.uri().path() != SYNC_PATH {
            let mut response = http::Response::new(Body::default());
            let headers = response.headers_mut();
            headers.insert(
                Status::GRPC_STATUS,
                (tonic::Code::Unimplemented as i32).into(),
            );
            headers.insert(http::header::CONTENT_TYPE, GRPC_CONTENT_TYPE);
            return response;
        }
        if let Err(status) = identity_only(request.headers()) {
            return status.into_http();
        }
        match self.0.sync(request) {
            Ok(body) => {
                let mut response = http::Response::new(Body::new(body));
                response
                    .headers_mut()
                    .insert(http::header::CONTENT_TYPE, GRPC_CONTENT_TYPE);
                response
            }
            Err(status) => status.into_http(),
        }
    }
}

/// Requests must not be compressed (typha enables no compression, as before): the
/// status tonic answers a compressed request with.
fn identity_only(headers: &http::HeaderMap) -> Result<(), Status> {
    let Some(encoding) = headers.get("grpc-encoding") else {
        return Ok(());
    };
    if encoding.as_bytes() == b"identity" {
        return Ok(());
    }
    let name = match std::str::from_utf8(encoding.as_bytes()) {
        Ok(name) => name.to_string(),
        Err(_) => format!("{:?}", encoding.as_bytes()),
    };
    let mut status = Status::unimplemented(format!(
        "Content is compressed with `{name}` which isn't supported"
    ));
    status.metadata_mut().insert(
        "grpc-accept-encoding",
        MetadataValue::from_static("identity"),
    );
    Err(status)
}

impl NamedService for SyncRoute {
    const NAME: &'static str = "typha.sync.v1.Typha";
}

impl tower::Service<http::Request<Body>> for SyncRoute {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Ready<Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        ready(Ok(self.respond(request)))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn a_compressed_request_gets_tonics_status() {
        let mut headers = http::HeaderMap::new();
        assert!(identity_only(&headers).is_ok());
        headers.insert("grpc-encoding", "identity".parse().unwrap());
        assert!(identity_only(&headers).is_ok());
        headers.insert("grpc-encoding", "gzip".parse().unwrap());
        let status = identity_only(&headers).unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unimplemented);
        assert_eq!(
            status.message(),
            "Content is compressed with `gzip` which isn't supported"
        );
        assert_eq!(
            status.metadata().get("grpc-accept-encoding").unwrap(),
            "identity"
        );
    }
}
