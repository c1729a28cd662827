//! Development PKI: a throwaway CA plus server and client certificates for mutual TLS,
//! and the engine of `typha certs --out DIR`. Also issues arbitrary leaves from a CA (tests
//! use it for wrong-identity and expired certificates).
//!
//! Why: the mTLS default must be easy to try locally and in tests without openssl.
//! Not for production: keys are generated in-process and written unencrypted.
//!
//! Invariants: every key is ECDSA P-256 (PKCS#8 PEM); leaves carry exactly one EKU
//! (serverAuth or clientAuth) and are not CAs; `write_to_dir` never overwrites a file unless
//! forced, checks all six names before writing any, and leaves key files mode 0600.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

use crate::tls::TlsMaterial;

/// Common name of the development server certificate (pass to `--typha-cn`).
pub const DEFAULT_SERVER_CN: &str = "typha-server";
/// Common name of the development client certificate (pass to `--client-cn`).
pub const DEFAULT_CLIENT_CN: &str = "typha-client";
/// URI SAN of the development server certificate (pass to `--typha-uri-san`).
pub const DEFAULT_SERVER_URI_SAN: &str = "spiffe://cluster.local/ns/calico-system/sa/typha";
/// URI SAN of the development client certificate (pass to `--client-uri-san`).
pub const DEFAULT_CLIENT_URI_SAN: &str = "spiffe://cluster.local/ns/calico-system/sa/felix-client";
/// Prefix of the development CA's common name; a per-CA suffix follows, so two generated
/// CAs never share a subject (a verifier would otherwise pick the wrong one by name).
pub const DEV_CA_CN_PREFIX: &str = "typha-dev-ca-";

/// How long generated certificates are valid.
const VALIDITY: Duration = Duration::days(365);
/// Certificates start this far in the past, to tolerate clock skew between nodes.
const BACKDATE: Duration = Duration::hours(1);

/// File names `write_to_dir` produces, in order: CA, server (typha), client (felix).
pub const FILE_NAMES: [&str; 6] = [
    "ca.crt",
    "ca.key",
    "typha.crt",
    "typha.key",
    "felix.crt",
    "felix.key",
];

/// A PEM certificate and its PEM (PKCS#8) private key.
#[derive(Clone, PartialEq, Eq)]
pub struct CertPair {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key, PEM.
    pub key_pem: String,
}

impl std::fmt::Debug for CertPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertPair")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// A development CA with one server and one client certificate issued by it.
#[derive(Clone, Debug)]
pub struct DevPki {
    /// The self-signed CA.
    pub ca: CertPair,
    /// typha's certificate: CN typha-server, URI SAN, DNS localhost, IPs 127.0.0.1 and ::1.
    pub server: CertPair,
    /// felix-client's certificate: CN typha-client and its URI SAN.
    pub client: CertPair,
}

/// What to put in a leaf certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertSpec {
    /// Subject common name.
    pub cn: String,
    /// Optional URI SAN (e.g. a SPIFFE id).
    pub uri_san: Option<String>,
    /// DNS SANs.
    pub dns: Vec<String>,
    /// IP SANs.
    pub ips: Vec<IpAddr>,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
    /// `true`: serverAuth EKU; `false`: clientAuth EKU.
    pub server: bool,
}

impl CertSpec {
    /// A leaf with only a CN, valid from an hour ago for a year.
    pub fn new(cn: impl Into<String>, server: bool) -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            cn: cn.into(),
            uri_san: None,
            dns: Vec::new(),
            ips: Vec::new(),
            not_before: now - BACKDATE,
            not_after: now + VALIDITY,
            server,
        }
    }

    /// The development server's spec (see [`DevPki::server`]).
    pub fn default_server() -> Self {
        Self {
            uri_san: Some(DEFAULT_SERVER_URI_SAN.to_owned()),
            dns: vec!["localhost".to_owned()],
            ips: vec![
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(Ipv6Addr::LOCALHOST),
            ],
            ..Self::new(DEFAULT_SERVER_CN, true)
        }
    }

    /// The development client's spec (see [`DevPki::client`]).
    pub fn default_client() -> Self {
        Self {
            uri_san: Some(DEFAULT_CLIENT_URI_SAN.to_owned()),
            ..Self::new(DEFAULT_CLIENT_CN, false)
        }
    }
}

/// Why certificate generation or writing failed.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// rcgen refused the parameters (e.g. a non-ASCII SAN) or could not parse the CA PEM.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// A target file exists and `force` was not given; nothing was written.
    #[error("{path} already exists (use --force to overwrite)", path = path.display())]
    Exists {
        /// The existing file.
        path: PathBuf,
    },
    /// Creating the directory or writing a file failed.
    #[error("cannot write {path}: {source}", path = path.display())]
    Io {
        /// The directory or file.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
}

impl DevPki {
    /// Generates a fresh CA, server and client certificate, each valid for a year.
    pub fn generate() -> Result<DevPki, CertError> {
        let ca = generate_ca()?;
        let server = issue_with_ca(&ca, &CertSpec::default_server())?;
        let client = issue_with_ca(&ca, &CertSpec::default_client())?;
        Ok(DevPki { ca, server, client })
    }

    /// Issues another leaf from this CA.
    pub fn issue(&self, spec: &CertSpec) -> Result<CertPair, CertError> {
        issue_with_ca(&self.ca, spec)
    }

    /// Writes the six files (see [`FILE_NAMES`]) into `dir`, creating it if needed. Without
    /// `force`, fails with [`CertError::Exists`] before writing anything if any exists.
    pub fn write_to_dir(&self, dir: &Path, force: bool) -> Result<Vec<PathBuf>, CertError> {
        fs::create_dir_all(dir).map_err(|source| CertError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let contents = [
            &self.ca.cert_pem,
            &self.ca.key_pem,
            &self.server.cert_pem,
            &self.server.key_pem,
            &self.client.cert_pem,
            &self.client.key_pem,
        ];
        let paths: Vec<PathBuf> = FILE_NAMES.iter().map(|name| dir.join(name)).collect();
        if !force && let Some(existing) = paths.iter().find(|p| p.exists()) {
            return Err(CertError::Exists {
                path: existing.clone(),
            });
        }
        for (path, content) in paths.iter().zip(contents) {
            let secret = path.extension().is_some_and(|ext| ext == "key");
            write_file(path, content.as_bytes(), secret, force)?;
        }
        Ok(paths)
    }

    /// typha's material: the CA plus the server certificate and key.
    pub fn server_material(&self) -> TlsMaterial {
        self.material(&self.server)
    }

    /// felix-client's material: the CA plus the client certificate and key.
    pub fn client_material(&self) -> TlsMaterial {
        self.material(&self.client)
    }

    /// This CA plus any leaf (e.g. one from [`DevPki::issue`]).
    pub fn material(&self, leaf: &CertPair) -> TlsMaterial {
        TlsMaterial {
            ca_pem: self.ca.cert_pem.clone().into_bytes(),
            cert_pem: leaf.cert_pem.clone().into_bytes(),
            key_pem: leaf.key_pem.clone().into_bytes(),
        }
    }
}

fn write_file(path: &Path, content: &[u8], secret: bool, force: bool) -> Result<(), CertError> {
    let io_err = |source| CertError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut options = OpenOptions::new();
    options.write(true);
    if force {
        options.create(true).truncate(true);
    } else {
        // create_new closes the race between the existence check and the write.
        options.create_new(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        options.mode(if secret { 0o600 } else { 0o644 });
        let mut file = options.open(path).map_err(io_err)?;
        // `mode` only applies to new files: tighten an overwritten key explicitly.
        if secret {
            file.set_permissions(fs::Permissions::from_mode(0o600))
                .map_err(io_err)?;
        }
        file.write_all(content).map_err(io_err)
    }
    #[cfg(not(unix))]
    {
        let _ = secret;
        let mut file = options.open(path).map_err(io_err)?;
        file.write_all(content).map_err(io_err)
    }
}

fn generate_ca() -> Result<CertPair, CertError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    let suffix: String = key
        .public_key_raw()
        .iter()
        .skip(1) // the SEC1 point-format byte is the same for every key
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect();
    name.push(DnType::CommonName, format!("{DEV_CA_CN_PREFIX}{suffix}"));
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + VALIDITY;
    let cert = params.self_signed(&key)?;
    Ok(CertPair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Issues a leaf described by `spec`, signed by the CA in `ca` (its PEM cert and key).
pub fn issue_with_ca(ca: &CertPair, spec: &CertSpec) -> Result<CertPair, CertError> {
    let ca_key = KeyPair::from_pem(&ca.key_pem)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key)?;

    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, spec.cn.as_str());
    params.distinguished_name = name;
    params.is_ca = IsCa::ExplicitNoCa;
    params.not_before = spec.not_before;
    params.not_after = spec.not_after;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![if spec.server {
        ExtendedKeyUsagePurpose::ServerAuth
    } else {
        ExtendedKeyUsagePurpose::ClientAuth
    }];
    params.use_authority_key_identifier_extension = true;
    let mut sans = Vec::new();
    if let Some(uri) = &spec.uri_san {
        sans.push(SanType::URI(uri.as_str().try_into()?));
    }
    for dns in &spec.dns {
        sans.push(SanType::DnsName(dns.as_str().try_into()?));
    }
    sans.extend(spec.ips.iter().copied().map(SanType::IpAddress));
    params.subject_alt_names = sans;

    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(CertPair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::tls::PresentedIdentity;
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    use x509_parser::extensions::GeneralName;

    fn der(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    }

    #[test]
    fn generated_leaves_carry_the_default_identities_and_sans() {
        let pki = DevPki::generate().unwrap();
        let server = PresentedIdentity::parse(&der(&pki.server.cert_pem)).unwrap();
        assert_eq!(server.cn.as_deref(), Some(DEFAULT_SERVER_CN));
        assert_eq!(server.uri_sans, vec![DEFAULT_SERVER_URI_SAN.to_owned()]);
        let client = PresentedIdentity::parse(&der(&pki.client.cert_pem)).unwrap();
        assert_eq!(client.cn.as_deref(), Some(DEFAULT_CLIENT_CN));
        assert_eq!(client.uri_sans, vec![DEFAULT_CLIENT_URI_SAN.to_owned()]);

        let server_der = der(&pki.server.cert_pem);
        let (_, x509) = x509_parser::parse_x509_certificate(&server_der).unwrap();
        let sans = x509.subject_alternative_name().unwrap().unwrap();
        let names = &sans.value.general_names;
        assert!(names.contains(&GeneralName::DNSName("localhost")));
        assert!(names.contains(&GeneralName::IPAddress(&[127, 0, 0, 1])));
        assert!(names.contains(&GeneralName::IPAddress(&Ipv6Addr::LOCALHOST.octets())));
        let eku = x509.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && !eku.client_auth);
        assert!(!x509.is_ca());
        let validity = x509.validity().time_to_expiration().unwrap();
        assert!(validity > Duration::days(364) && validity <= VALIDITY);

        let client_der = der(&pki.client.cert_pem);
        let (_, x509) = x509_parser::parse_x509_certificate(&client_der).unwrap();
        let eku = x509.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);

        let ca_der = der(&pki.ca.cert_pem);
        let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
        assert!(ca.is_ca());
        assert_eq!(x509.issuer(), ca.subject());
        let ca_cn = PresentedIdentity::parse(&ca_der).unwrap().cn.unwrap();
        assert!(ca_cn.starts_with(DEV_CA_CN_PREFIX), "{ca_cn}");
        assert_eq!(ca_cn.len(), DEV_CA_CN_PREFIX.len() + 12);

        let other = DevPki::generate().unwrap();
        let other_ca = PresentedIdentity::parse(&der(&other.ca.cert_pem)).unwrap();
        assert_ne!(other_ca.cn.unwrap(), ca_cn, "each CA gets its own subject");
    }

    #[test]
    fn issue_honours_the_spec() {
        let pki = DevPki::generate().unwrap();
        let now = OffsetDateTime::now_utc();
        let spec = CertSpec {
            not_before: now - Duration::days(10),
            not_after: now - Duration::days(1),
            uri_san: Some("spiffe://example/other".to_owned()),
            ..CertSpec::new("someone-else", false)
        };
        let leaf = pki.issue(&spec).unwrap();
        let cert = der(&leaf.cert_pem);
        let (_, x509) = x509_parser::parse_x509_certificate(&cert).unwrap();
        assert!(!x509.validity().is_valid());
        let presented = PresentedIdentity::parse(&cert).unwrap();
        assert_eq!(presented.cn.as_deref(), Some("someone-else"));
        assert_eq!(
            presented.uri_sans,
            vec!["spiffe://example/other".to_owned()]
        );
    }

    #[test]
    fn non_ascii_san_is_an_error_not_a_panic() {
        let pki = DevPki::generate().unwrap();
        let spec = CertSpec {
            dns: vec!["h\u{e9}llo".to_owned()],
            ..CertSpec::new("x", true)
        };
        assert!(matches!(pki.issue(&spec), Err(CertError::Generate(_))));
    }

    #[test]
    fn debug_output_redacts_keys() {
        let pki = DevPki::generate().unwrap();
        let printed = format!("{pki:?}");
        assert!(!printed.contains("PRIVATE KEY"), "{printed}");
        assert!(printed.contains("<redacted>"));
    }
}
