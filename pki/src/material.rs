//! Certificates and keys as they move between CAs, files and TLS configs.

use std::fmt;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::identity::{Identity, IdentityError};

/// Why certificate or key material could not be used.
#[derive(Debug, thiserror::Error)]
pub enum MaterialError {
    #[error("{what} is not valid PEM: {reason}")]
    BadPem { what: String, reason: String },
    #[error("{what} contains no certificate")]
    NoCertificate { what: String },
    #[error("{what} is not a private key usable for TLS (expected an ECDSA, Ed25519 or RSA key): {reason}")]
    BadKey { what: String, reason: String },
    #[error("certificate {what} could not be parsed: {reason}")]
    BadCertificate { what: String, reason: String },
    #[error("certificate's identity is invalid: {0}")]
    Identity(#[from] IdentityError),
    #[error("could not write {path}: {source}; check the directory exists and is writable")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("could not read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} already exists; refusing to overwrite key material (remove it first if you mean to replace it)")]
    Exists { path: String },
    #[error(transparent)]
    Untrusted(#[from] crate::files::Untrusted),
}

/// A PEM private key. Its `Debug` never prints the key.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretPem(String);

impl SecretPem {
    pub fn new(pem: String) -> SecretPem {
        SecretPem(pem)
    }

    /// The PEM text; handle with care (never log it).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretPem([redacted])")
    }
}

/// An issued leaf certificate with its chain, its private key and the CA that signed it.
#[derive(Clone, Debug)]
pub struct CertBundle {
    /// Leaf first, then any intermediates.
    pub chain: Vec<CertificateDer<'static>>,
    pub key: SecretPem,
    /// The CA certificates the bundle chains to (trust anchors for peers).
    pub ca: Vec<CertificateDer<'static>>,
    pub identity: Identity,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// Lower-case hex serial number of the leaf.
    pub serial: String,
}

impl CertBundle {
    /// Builds a bundle from PEM text, reading identity, validity and serial from the leaf.
    pub fn from_pem(
        chain_pem: &str,
        key_pem: SecretPem,
        ca_pem: &str,
    ) -> Result<CertBundle, MaterialError> {
        let chain = parse_certs("certificate chain", chain_pem)?;
        let ca = parse_certs("CA certificate", ca_pem)?;
        let info = CertInfo::parse(&chain[0])?;
        // Fail now, not at the first handshake, if the key is unusable.
        signing_key(&key_pem)?;
        Ok(CertBundle {
            chain,
            key: key_pem,
            ca,
            identity: info.identity?,
            not_before: info.not_before,
            not_after: info.not_after,
            serial: info.serial,
        })
    }

    /// The leaf's lifetime.
    pub fn lifetime(&self) -> Duration {
        self.not_after
            .duration_since(self.not_before)
            .unwrap_or_default()
    }

    /// The chain as PEM, leaf first.
    pub fn chain_pem(&self) -> String {
        certs_to_pem(&self.chain)
    }

    /// The CA certificates as PEM.
    pub fn ca_pem(&self) -> String {
        certs_to_pem(&self.ca)
    }

    /// A rustls certified key for this bundle. The chain it presents ends with the CA
    /// certificates so that a node pinning the CA by fingerprint (enrollment) can find it.
    pub fn certified_key(&self) -> Result<Arc<CertifiedKey>, MaterialError> {
        let mut chain = self.chain.clone();
        for ca in &self.ca {
            if !chain.contains(ca) {
                chain.push(ca.clone());
            }
        }
        Ok(Arc::new(CertifiedKey::new(chain, signing_key(&self.key)?)))
    }

    /// Writes `cert.pem` (chain), `ca.pem` and `key.pem` into `dir`, each mode 0600 and
    /// atomically, replacing earlier files.
    pub fn save(&self, dir: &Path) -> Result<(), MaterialError> {
        write_file(&dir.join("cert.pem"), self.chain_pem().as_bytes(), 0o600)?;
        write_file(&dir.join("ca.pem"), self.ca_pem().as_bytes(), 0o600)?;
        write_file(&dir.join("key.pem"), self.key.expose().as_bytes(), 0o600)
    }

    /// Loads a bundle written by [`CertBundle::save`], refusing files another user could
    /// have written and a key others can read (see [`crate::files`]).
    pub fn load(dir: &Path) -> Result<CertBundle, MaterialError> {
        use crate::files::{check_file, Sensitivity};
        check_file(&dir.join("cert.pem"), Sensitivity::Integrity)?;
        check_file(&dir.join("ca.pem"), Sensitivity::Integrity)?;
        check_file(&dir.join("key.pem"), Sensitivity::Secret)?;
        let chain = read_to_string(&dir.join("cert.pem"))?;
        let ca = read_to_string(&dir.join("ca.pem"))?;
        let key = read_to_string(&dir.join("key.pem"))?;
        CertBundle::from_pem(&chain, SecretPem::new(key), &ca)
    }
}

/// What Strait reads from a leaf certificate.
#[derive(Debug)]
pub struct CertInfo {
    pub identity: Result<Identity, IdentityError>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub serial: String,
}

impl CertInfo {
    pub fn parse(der: &[u8]) -> Result<CertInfo, MaterialError> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| {
            MaterialError::BadCertificate {
                what: "leaf".into(),
                reason: e.to_string(),
            }
        })?;
        let validity = cert.validity();
        Ok(CertInfo {
            identity: Identity::from_certificate(der),
            not_before: unix_to_system(validity.not_before.timestamp()),
            not_after: unix_to_system(validity.not_after.timestamp()),
            serial: hex::encode(cert.raw_serial()),
        })
    }
}

fn unix_to_system(secs: i64) -> SystemTime {
    if secs >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64)
    } else {
        SystemTime::UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

/// Parses every certificate in a PEM text; at least one is required.
pub fn parse_certs(what: &str, pem: &str) -> Result<Vec<CertificateDer<'static>>, MaterialError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| MaterialError::BadPem {
            what: what.to_string(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(MaterialError::NoCertificate {
            what: what.to_string(),
        });
    }
    Ok(certs)
}

/// Encodes certificates as concatenated PEM blocks.
pub fn certs_to_pem(certs: &[CertificateDer<'_>]) -> String {
    certs
        .iter()
        .map(|c| pem_block("CERTIFICATE", c.as_ref()))
        .collect()
}

fn pem_block(label: &str, der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new(label, der),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// Turns a PEM private key (PKCS#8, SEC1 or PKCS#1) into a rustls signing key using ring.
pub fn signing_key(key: &SecretPem) -> Result<Arc<dyn rustls::sign::SigningKey>, MaterialError> {
    let der = PrivateKeyDer::from_pem_slice(key.expose().as_bytes()).map_err(|e| {
        MaterialError::BadKey {
            what: "private key".into(),
            reason: e.to_string(),
        }
    })?;
    rustls::crypto::ring::sign::any_supported_type(&der).map_err(|e| MaterialError::BadKey {
        what: "private key".into(),
        reason: e.to_string(),
    })
}

/// Writes `bytes` to `path` with `mode`, atomically (temp file + rename), so a crash never
/// leaves a half-written key and a key file is never readable by others even briefly.
pub fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), MaterialError> {
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| MaterialError::Write {
        path: path.display().to_string(),
        source,
    };
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(bytes).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)?;
    Ok(())
}

/// Like [`write_file`] but refuses to replace an existing file.
pub fn write_new_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), MaterialError> {
    if path.exists() {
        return Err(MaterialError::Exists {
            path: path.display().to_string(),
        });
    }
    write_file(path, bytes, mode)
}

pub fn read_to_string(path: &Path) -> Result<String, MaterialError> {
    std::fs::read_to_string(path).map_err(|source| MaterialError::Read {
        path: path.display().to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_pem_debug_is_redacted() {
        let s = SecretPem::new("-----BEGIN PRIVATE KEY-----\nAAAA\n".into());
        assert_eq!(format!("{s:?}"), "SecretPem([redacted])");
    }

    #[test]
    fn pem_encoding_round_trips() {
        for len in [0usize, 1, 2, 3, 47, 48, 49, 100] {
            let der: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let pem = pem_block("CERTIFICATE", &der);
            let back: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
                .collect::<Result<_, _>>()
                .unwrap();
            if len > 0 {
                assert_eq!(back[0].as_ref(), der.as_slice());
            }
        }
    }

    #[test]
    fn key_files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.pem");
        write_new_file(&p, b"x", 0o600).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(
            write_new_file(&p, b"y", 0o600),
            Err(MaterialError::Exists { .. })
        ));
    }

    #[test]
    fn garbage_is_refused_with_a_named_error() {
        let err = parse_certs("CA certificate", "hello").unwrap_err();
        assert!(err.to_string().contains("CA certificate"), "{err}");
        let err = signing_key(&SecretPem::new("nope".into())).unwrap_err();
        assert!(err.to_string().contains("private key"), "{err}");
    }
}
