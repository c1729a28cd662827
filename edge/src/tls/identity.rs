//! Peer identities: what a peer must present ([`PeerIdentity`]), what its end-entity
//! certificate actually presents ([`PresentedIdentity`], parsed with x509-parser), and the
//! Calico matching rule between the two.
//!
//! Rule: the peer is accepted when its Subject CN equals the configured CN, OR one of its
//! URI SANs equals the configured URI SAN. Unset fields never match; an identity with
//! neither field set matches nothing (callers reject that configuration up front).

use std::fmt;

use rustls::pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;

/// The identity a peer must present: its CN equals `cn`, or one of its URI SANs equals
/// `uri_san` (either suffices).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PeerIdentity {
    /// Required Subject common name (`--client-cn` / `--typha-cn`).
    pub cn: Option<String>,
    /// Required URI subject alternative name (`--client-uri-san` / `--typha-uri-san`).
    pub uri_san: Option<String>,
}

impl PeerIdentity {
    /// An identity matched by common name only.
    pub fn with_cn(cn: impl Into<String>) -> Self {
        Self {
            cn: Some(cn.into()),
            uri_san: None,
        }
    }

    /// An identity matched by URI SAN only.
    pub fn with_uri_san(uri_san: impl Into<String>) -> Self {
        Self {
            cn: None,
            uri_san: Some(uri_san.into()),
        }
    }

    /// True when nothing is configured (empty strings count as unset).
    pub fn is_empty(&self) -> bool {
        self.cn.as_deref().is_none_or(str::is_empty)
            && self.uri_san.as_deref().is_none_or(str::is_empty)
    }

    /// Whether `presented` satisfies this identity.
    pub fn matches(&self, presented: &PresentedIdentity) -> bool {
        let cn_ok = match (&self.cn, &presented.cn) {
            (Some(want), Some(got)) => !want.is_empty() && want == got,
            _ => false,
        };
        let uri_ok = match &self.uri_san {
            Some(want) if !want.is_empty() => presented.uri_sans.iter().any(|got| got == want),
            _ => false,
        };
        cn_ok || uri_ok
    }

    /// Parses `cert` and checks it against this identity.
    pub fn check(&self, cert: &CertificateDer<'_>) -> Result<(), IdentityMismatch> {
        let presented = PresentedIdentity::parse(cert).ok_or_else(|| IdentityMismatch {
            expected: self.clone(),
            presented: None,
        })?;
        if self.matches(&presented) {
            Ok(())
        } else {
            Err(IdentityMismatch {
                expected: self.clone(),
                presented: Some(presented),
            })
        }
    }
}

impl fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.cn, &self.uri_san) {
            (Some(cn), Some(uri)) => write!(f, "CN={cn} or URI={uri}"),
            (Some(cn), None) => write!(f, "CN={cn}"),
            (None, Some(uri)) => write!(f, "URI={uri}"),
            (None, None) => f.write_str("<none>"),
        }
    }
}

/// The names an end-entity certificate carries that identity checks look at.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PresentedIdentity {
    /// First Subject common name, if any.
    pub cn: Option<String>,
    /// Every URI subject alternative name, in certificate order.
    pub uri_sans: Vec<String>,
}

impl PresentedIdentity {
    /// Extracts the names from a DER certificate; `None` if it does not parse as X.509.
    pub fn parse(cert: &CertificateDer<'_>) -> Option<Self> {
        let (_, x509) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
        let cn = x509
            .subject()
            .iter_common_name()
            .next()
            .and_then(|attr| attr.as_str().ok())
            .map(str::to_owned);
        // A malformed SAN extension yields no URIs, so it can only fail a URI match.
        let uri_sans = match x509.subject_alternative_name() {
            Ok(Some(san)) => san
                .value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::URI(uri) => Some((*uri).to_owned()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        Some(Self { cn, uri_sans })
    }
}

impl fmt::Display for PresentedIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::with_capacity(1 + self.uri_sans.len());
        if let Some(cn) = &self.cn {
            parts.push(format!("CN={cn}"));
        }
        parts.extend(self.uri_sans.iter().map(|uri| format!("URI={uri}")));
        if parts.is_empty() {
            f.write_str("<no CN or URI SAN>")
        } else {
            f.write_str(&parts.join(", "))
        }
    }
}

/// A certificate chained to the CA but did not carry the required identity. Travels inside
/// `rustls::CertificateError::Other` so [`super::HandshakeFailure`] can recognise it.
#[derive(Clone, Debug, thiserror::Error)]
#[error("peer identity mismatch: expected {expected}, presented {}",
    .presented.as_ref().map_or_else(|| "<unparseable certificate>".to_owned(), ToString::to_string))]
pub struct IdentityMismatch {
    /// What was required.
    pub expected: PeerIdentity,
    /// What the certificate carried (`None`: it did not parse).
    pub presented: Option<PresentedIdentity>,
}

/// A one-line description of a peer's end-entity certificate for logs and span fields,
/// e.g. `CN=typha-client, URI=spiffe://...`.
pub fn peer_summary(cert: &CertificateDer<'_>) -> String {
    PresentedIdentity::parse(cert)
        .map_or_else(|| "<unparseable certificate>".to_owned(), |p| p.to_string())
}
