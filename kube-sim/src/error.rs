//! Kubernetes-style API errors.
//!
//! Every failure the simulated API server can report is an [`ApiError`]; the HTTP layer
//! turns it into a `Status` object (`kind: Status`, `status: Failure`, `reason`, `code`)
//! exactly like a real API server, so unmodified clients (kubectl, the kube crate) react
//! to it the way they would in a cluster. Errors are produced before any state changes:
//! a failed request never leaves a partial write behind.

use serde_json::{Value, json};

/// A request the simulated API server refuses, with the HTTP code and `reason` it maps to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// The object or resource does not exist (404, `NotFound`). Not retryable as is.
    #[error("{0}")]
    NotFound(String),
    /// Create of a name that already exists (409, `AlreadyExists`).
    #[error("{0}")]
    AlreadyExists(String),
    /// Optimistic-concurrency failure: stale resourceVersion or precondition (409, `Conflict`).
    /// Retryable after re-reading the object.
    #[error("{0}")]
    Conflict(String),
    /// Malformed request: bad JSON, bad selector, mismatched namespace (400, `BadRequest`).
    #[error("{0}")]
    BadRequest(String),
    /// Well-formed but semantically invalid object, e.g. a bad name (422, `Invalid`).
    #[error("{0}")]
    Invalid(String),
    /// The requested resourceVersion or continue token is older than the retained history
    /// (410, `Expired`). Clients must relist.
    #[error("{0}")]
    Expired(String),
    /// The verb is not supported on this path (405, `MethodNotAllowed`).
    #[error("{0}")]
    MethodNotAllowed(String),
    /// The patch content type is not supported (415, `UnsupportedMediaType`).
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The request body exceeds the size limit (413, `RequestEntityTooLarge`).
    #[error("{0}")]
    TooLarge(String),
    /// The response cannot be given in any media type the client accepts (406, `NotAcceptable`).
    #[error("{0}")]
    NotAcceptable(String),
    /// Any of the above with a `details` object (kind, name, causes), as the API server
    /// sends for invalid objects; `code` and `reason` as in the plain variants.
    #[error("{message}")]
    Detailed {
        /// HTTP code.
        code: u16,
        /// Status reason.
        reason: &'static str,
        /// Status message.
        message: String,
        /// Status details.
        details: Value,
    },
}

impl ApiError {
    /// The HTTP status code of this error.
    pub fn code(&self) -> u16 {
        match self {
            ApiError::NotFound(_) => 404,
            ApiError::AlreadyExists(_) | ApiError::Conflict(_) => 409,
            ApiError::BadRequest(_) => 400,
            ApiError::Invalid(_) => 422,
            ApiError::Expired(_) => 410,
            ApiError::MethodNotAllowed(_) => 405,
            ApiError::UnsupportedMediaType(_) => 415,
            ApiError::TooLarge(_) => 413,
            ApiError::NotAcceptable(_) => 406,
            ApiError::Detailed { code, .. } => *code,
        }
    }

    /// The machine-readable `reason` field of the Status object.
    pub fn reason(&self) -> &'static str {
        match self {
            ApiError::NotFound(_) => "NotFound",
            ApiError::AlreadyExists(_) => "AlreadyExists",
            ApiError::Conflict(_) => "Conflict",
            ApiError::BadRequest(_) => "BadRequest",
            ApiError::Invalid(_) => "Invalid",
            ApiError::Expired(_) => "Expired",
            ApiError::MethodNotAllowed(_) => "MethodNotAllowed",
            ApiError::UnsupportedMediaType(_) => "UnsupportedMediaType",
            ApiError::TooLarge(_) => "RequestEntityTooLarge",
            ApiError::NotAcceptable(_) => "NotAcceptable",
            ApiError::Detailed { reason, .. } => reason,
        }
    }

    /// The error as a Kubernetes `Status` object.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.to_string(),
            "reason": self.reason(),
            "code": self.code(),
        });
        if let ApiError::Detailed { details, .. } = self
            && !details.is_null()
        {
            status["details"] = details.clone();
        }
        status
    }

    /// `<Kind> "<name>" is invalid: <field>: <message>` with one cause per field, the
    /// 422 a real API server sends for an object failing validation.
    pub fn invalid_object(
        group: &str,
        kind: &str,
        name: &str,
        causes: &[(String, String)],
    ) -> Self {
        let text: Vec<String> = causes.iter().map(|(f, m)| format!("{f}: {m}")).collect();
        let joined = if text.len() == 1 {
            text.join("")
        } else {
            format!("[{}]", text.join(", "))
        };
        let causes: Vec<Value> = causes
            .iter()
            .map(|(f, m)| json!({"reason": "FieldValueInvalid", "message": m, "field": f}))
            .collect();
        ApiError::Detailed {
            code: 422,
            reason: "Invalid",
            message: format!("{kind} \"{name}\" is invalid: {joined}"),
            details: json!({"name": name, "group": group, "kind": kind, "causes": causes}),
        }
    }

    /// `<plural> "<name>" not found`, the message a real API server uses.
    pub fn not_found(plural: &str, name: &str) -> Self {
        ApiError::NotFound(format!("{plural} \"{name}\" not found"))
    }

    /// The message a real API server uses for a stale resourceVersion.
    pub fn conflict(plural: &str, name: &str) -> Self {
        ApiError::Conflict(format!(
            "Operation cannot be fulfilled on {plural} \"{name}\": the object has been \
             modified; please apply your changes to the latest version and try again"
        ))
    }

    /// The message a real API server uses for too-old resource versions.
    pub fn expired(rv: u64) -> Self {
        ApiError::Expired(format!("too old resource version: {rv}"))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn status_has_kubernetes_shape() {
        let s = ApiError::not_found("pods", "x").to_status();
        assert_eq!(s["kind"], "Status");
        assert_eq!(s["status"], "Failure");
        assert_eq!(s["reason"], "NotFound");
        assert_eq!(s["code"], 404);
        assert_eq!(s["message"], "pods \"x\" not found");
    }
}
