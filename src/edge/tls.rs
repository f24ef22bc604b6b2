//! PEM files to rustls configurations (ring provider), shared by the MQTT publisher
//! (`mqtts://`) and DICOM TLS (the receiver's `[dicom] tls_*` with its client-certificate
//! allow-list, and the SR destinations' `tls_*`). Certificates are named in logs and
//! allow-lists by their SHA-256 fingerprint (lower-case hex of the DER, as
//! `openssl x509 -noout -fingerprint -sha256` prints it without colons). Main items:
//! [`client_config`], [`server_config`], [`fingerprint`], [`TlsError`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use sha2::{Digest, Sha256};
use thiserror::Error;

/// Why a TLS configuration could not be made.
#[derive(Debug, Error)]
pub enum TlsError {
    /// A configured file is unreadable or holds no usable PEM object; `key` names the setting.
    #[error("{key} {path}: {detail}")]
    File {
        key: &'static str,
        path: PathBuf,
        detail: String,
    },
    /// rustls refused the combination (e.g. a key that does not match its certificate).
    #[error("TLS configuration: {0}")]
    Config(String),
}

fn file_err(key: &'static str, path: &Path, detail: impl Into<String>) -> TlsError {
    TlsError::File {
        key,
        path: path.to_path_buf(),
        detail: detail.into(),
    }
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| file_err(key, path, e.to_string()))
}

/// The certificates of a PEM file (at least one). Errors: `File`.
pub fn certificates(
    key: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(key, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(key, path, e.to_string()))?;
    if certs.is_empty() {
        return Err(file_err(key, path, "no PEM certificate in it"));
    }
    Ok(certs)
}

/// The certificates of a PEM bundle as trust anchors. Errors: `File`.
pub fn roots(key: &'static str, path: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certificates(key, path)? {
        roots
            .add(cert)
            .map_err(|e| file_err(key, path, e.to_string()))?;
    }
    Ok(roots)
}

/// The private key of a PEM file. Errors: `File`.
pub fn private_key(key: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(key, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| file_err(key, path, e.to_string()))
}

/// The crypto provider of every configuration: ring (no aws-lc C build on the appliance).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A setting naming a file: its key in the configuration and its path.
pub type FileSetting<'a> = (&'static str, &'a Path);

/// A client configuration trusting only the certificates of `ca`, with the client certificate
/// chain and key of `client` (`(certificate, key)`) when given. Errors: `File`, `Config`.
pub fn client_config(
    ca: FileSetting<'_>,
    client: Option<(FileSetting<'_>, FileSetting<'_>)>,
) -> Result<rustls::ClientConfig, TlsError> {
    let roots = roots(ca.0, ca.1)?;
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots);
    match client {
        None => Ok(builder.with_no_client_auth()),
        Some((cert, key)) => builder
            .with_client_auth_cert(certificates(cert.0, cert.1)?, private_key(key.0, key.1)?)
            .map_err(|e| TlsError::Config(e.to_string())),
    }
}

/// SHA-256 of a certificate's DER, lower-case hex (64 characters).
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    Sha256::digest(cert.as_ref())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A fingerprint as written in a configuration (any case, colons allowed) in the form of
/// [`fingerprint`]; `None` if it is not 64 hex digits.
pub fn normalise_fingerprint(text: &str) -> Option<String> {
    let hex: String = text
        .trim()
        .chars()
        .filter(|c| *c != ':')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    (hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit())).then_some(hex)
}

/// A server configuration with the certificate chain and key of `cert` / `key` that requires
/// a client certificate issued under `client_ca` AND whose fingerprint is in `allow`
/// (normalised by [`normalise_fingerprint`]; an empty list refuses every client). A refused
/// certificate is logged with `what` and its fingerprint. Errors: `File`, `Config`.
pub fn server_config(
    cert: FileSetting<'_>,
    key: FileSetting<'_>,
    client_ca: FileSetting<'_>,
    allow: &[String],
    what: &'static str,
) -> Result<rustls::ServerConfig, TlsError> {
    let roots = Arc::new(roots(client_ca.0, client_ca.1)?);
    let inner = rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider())
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let verifier = Arc::new(AllowListed {
        inner,
        allow: allow
            .iter()
            .filter_map(|a| normalise_fingerprint(a))
            .collect(),
        what,
    });
    rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certificates(cert.0, cert.1)?, private_key(key.0, key.1)?)
        .map_err(|e| TlsError::Config(e.to_string()))
}

/// The WebPKI client verifier, then the fingerprint allow-list.
#[derive(Debug)]
struct AllowListed {
    inner: Arc<dyn ClientCertVerifier>,
    allow: Vec<String>,
    what: &'static str,
}

impl ClientCertVerifier for AllowListed {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let fp = fingerprint(end_entity);
        if let Err(e) = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)
        {
            log::warn!(
                "{}: TLS client certificate sha256 {fp} refused: {e}",
                self.what
            );
            return Err(e);
        }
        if !self.allow.contains(&fp) {
            log::warn!(
                "{}: TLS client certificate sha256 {fp} refused: not in the allow-list",
                self.what
            );
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::normalise_fingerprint;

    #[test]
    fn fingerprints_are_compared_without_case_or_colons() {
        let hex = "AB".repeat(32);
        let colons = vec!["ab"; 32].join(":");
        assert_eq!(normalise_fingerprint(&hex), Some("ab".repeat(32)));
        assert_eq!(normalise_fingerprint(&colons), Some("ab".repeat(32)));
        assert_eq!(normalise_fingerprint("abcd"), None);
        assert_eq!(normalise_fingerprint(&"zz".repeat(32)), None);
    }
}
