//! The built-in mesh CA (the embedded default): ECDSA P-256 with rcgen.
//!
//! The CA key lives in the coordinator's state directory (`ca.key`, mode 0600). Agents never
//! send it their private key: they send a CSR ([`generate_csr`]) and receive a certificate
//! whose identity is decided by the CA, not by the CSR's contents.

use std::path::Path;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

use crate::fingerprint::Fingerprint;
use crate::identity::{Identity, Label};
use crate::material::{read_to_string, write_new_file, CertBundle, MaterialError, SecretPem};

/// Default lifetime of agent (gateway and member) certificates.
pub const DEFAULT_AGENT_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Default lifetime of coordinator and operator certificates.
pub const DEFAULT_SERVICE_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);
/// Lifetime of the mesh CA certificate.
pub const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Issued certificates start this far in the past to tolerate clock skew between nodes.
pub const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(60);

const CA_CERT_FILE: &str = "ca.pem";
const CA_KEY_FILE: &str = "ca.key";

/// Why the CA could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("the CSR is invalid ({0}); generate a new one with the agent")]
    BadCsr(rcgen::Error),
    #[error("CA material: {0}")]
    Material(#[from] MaterialError),
    #[error("identity {identity} is for mesh {found}, but this CA serves mesh {mesh}")]
    WrongMesh {
        identity: String,
        found: String,
        mesh: String,
    },
    #[error("validity is empty: not_after must be later than not_before")]
    EmptyValidity,
    #[error("{path} does not hold this mesh's CA: {reason}")]
    Corrupt { path: String, reason: String },
}

/// A certificate's validity window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Validity {
    /// Valid from shortly before `now` (clock-skew allowance) for `lifetime` after `now`.
    pub fn starting_at(now: SystemTime, lifetime: Duration) -> Validity {
        Validity {
            not_before: now - CLOCK_SKEW_ALLOWANCE,
            not_after: now + lifetime,
        }
    }

    /// Valid from now for `lifetime`.
    pub fn for_lifetime(lifetime: Duration) -> Validity {
        Validity::starting_at(SystemTime::now(), lifetime)
    }
}

/// The mesh's own certificate authority.
pub struct BuiltinCa {
    mesh: Label,
    cert: CertificateDer<'static>,
    cert_pem: String,
    key: KeyPair,
}

impl std::fmt::Debug for BuiltinCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuiltinCa")
            .field("mesh", &self.mesh)
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

impl BuiltinCa {
    /// Creates a new CA for `mesh`. Nothing is written; see [`BuiltinCa::save`].
    pub fn generate(mesh: &str) -> Result<BuiltinCa, CaError> {
        let mesh = Label::parse("mesh", mesh).map_err(MaterialError::from)?;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Strait");
        dn.push(DnType::CommonName, format!("Strait mesh CA {mesh}"));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = SystemTime::now();
        params.not_before = to_offset(now - CLOCK_SKEW_ALLOWANCE);
        params.not_after = to_offset(now + CA_LIFETIME);
        params.serial_number = Some(serial_number(random_serial_bytes()));
        let cert = params.self_signed(&key)?;
        Ok(BuiltinCa {
            mesh,
            cert_pem: cert.pem(),
            cert: cert.der().clone(),
            key,
        })
    }

    /// Writes `ca.pem` and `ca.key` (0600) into `dir`; refuses to overwrite an existing CA.
    pub fn save(&self, dir: &Path) -> Result<(), CaError> {
        write_new_file(
            &dir.join(CA_KEY_FILE),
            self.key.serialize_pem().as_bytes(),
            0o600,
        )?;
        write_new_file(&dir.join(CA_CERT_FILE), self.cert_pem.as_bytes(), 0o644)?;
        Ok(())
    }

    /// Loads the CA that [`BuiltinCa::save`] wrote into `dir`.
    pub fn load(dir: &Path, mesh: &str) -> Result<BuiltinCa, CaError> {
        let mesh = Label::parse("mesh", mesh).map_err(MaterialError::from)?;
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        use crate::files::{check_file, Sensitivity};
        check_file(&cert_path, Sensitivity::Integrity).map_err(MaterialError::from)?;
        check_file(&key_path, Sensitivity::Secret).map_err(MaterialError::from)?;
        let cert_pem = read_to_string(&cert_path)?;
        let key_pem = read_to_string(&key_path)?;
        let corrupt = |path: &Path, reason: String| CaError::Corrupt {
            path: path.display().to_string(),
            reason,
        };
        let key = KeyPair::from_pem(&key_pem).map_err(|e| corrupt(&key_path, e.to_string()))?;
        let cert = crate::material::parse_certs("CA certificate", &cert_pem)?
            .into_iter()
            .next()
            .ok_or_else(|| corrupt(&cert_path, "no certificate".into()))?;
        let spki_matches = {
            let (_, parsed) = x509_parser::parse_x509_certificate(&cert)
                .map_err(|e| corrupt(&cert_path, e.to_string()))?;
            parsed.public_key().subject_public_key.data.as_ref() == key.public_key_raw()
        };
        if !spki_matches {
            return Err(corrupt(
                &key_path,
                format!("the key does not belong to {}", cert_path.display()),
            ));
        }
        Ok(BuiltinCa {
            mesh,
            cert,
            cert_pem,
            key,
        })
    }

    pub fn mesh(&self) -> &str {
        self.mesh.as_str()
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The fingerprint that join tokens carry (SHA-256 of the CA's SubjectPublicKeyInfo).
    pub fn fingerprint(&self) -> Fingerprint {
        // Invariant: `cert` was produced or validated as X.509 when this CA was built.
        Fingerprint::of_certificate(&self.cert).unwrap_or(Fingerprint([0; 32]))
    }

    /// Issues a certificate and a fresh key pair for `identity` (for coordinator and operator
    /// identities created on the CA's own host).
    pub fn issue(&self, identity: &Identity, validity: Validity) -> Result<CertBundle, CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let der = self.sign(identity, validity, &key, random_serial_bytes())?;
        self.bundle(der, SecretPem::new(key.serialize_pem()))
    }

    /// Signs the public key of `csr_pem` for `identity`. The CSR proves possession of the
    /// key; its requested names are ignored: the identity comes from the caller (who got it
    /// from a join token or an authenticated request), never from the CSR.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        identity: &Identity,
        validity: Validity,
    ) -> Result<CertificateDer<'static>, CaError> {
        self.sign_csr_with_serial(csr_pem, identity, validity, random_serial_bytes())
    }

    /// [`BuiltinCa::sign_csr`] with the serial number's 16 bytes given by the caller (made
    /// a positive INTEGER without a leading zero byte), so a caller whose randomness is an
    /// input (the coordinator's handlers, a simulation) decides it.
    pub fn sign_csr_with_serial(
        &self,
        csr_pem: &str,
        identity: &Identity,
        validity: Validity,
        serial: [u8; SERIAL_BYTES],
    ) -> Result<CertificateDer<'static>, CaError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(CaError::BadCsr)?;
        self.sign(identity, validity, &csr.public_key, serial)
    }

    fn sign(
        &self,
        identity: &Identity,
        validity: Validity,
        public_key: &impl rcgen::PublicKeyData,
        serial: [u8; SERIAL_BYTES],
    ) -> Result<CertificateDer<'static>, CaError> {
        if identity.mesh() != self.mesh.as_str() {
            return Err(CaError::WrongMesh {
                identity: identity.to_string(),
                found: identity.mesh().to_string(),
                mesh: self.mesh.to_string(),
            });
        }
        if validity.not_after <= validity.not_before {
            return Err(CaError::EmptyValidity);
        }
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, identity.dns_name());
        params.distinguished_name = dn;
        params.subject_alt_names = vec![
            SanType::DnsName(identity.dns_name().try_into()?),
            SanType::URI(identity.spiffe_id().try_into()?),
        ];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = to_offset(validity.not_before);
        params.not_after = to_offset(validity.not_after);
        params.serial_number = Some(serial_number(serial));
        params.use_authority_key_identifier_extension = true;
        let issuer = Issuer::from_ca_cert_der(&self.cert, &self.key)?;
        Ok(params.signed_by(public_key, &issuer)?.der().clone())
    }

    fn bundle(&self, leaf: CertificateDer<'static>, key: SecretPem) -> Result<CertBundle, CaError> {
        let chain_pem = crate::material::certs_to_pem(&[leaf]);
        Ok(CertBundle::from_pem(&chain_pem, key, &self.cert_pem)?)
    }
}

/// A key pair and CSR generated on the node that will use them. The private key stays here.
pub struct NodeKey {
    pub key: SecretPem,
    pub csr_pem: String,
}

/// Generates an ECDSA P-256 key pair and a CSR for it. The CSR's names are advisory.
pub fn generate_csr(identity_hint: &str) -> Result<NodeKey, CaError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, identity_hint);
    params.distinguished_name = dn;
    let csr = params.serialize_request(&key)?;
    Ok(NodeKey {
        key: SecretPem::new(key.serialize_pem()),
        csr_pem: csr.pem()?,
    })
}

/// Completes a bundle for a node from the certificate its CA returned and the key it kept.
pub fn bundle_from_signed(
    leaf: &CertificateDer<'static>,
    key: SecretPem,
    ca_pem: &str,
) -> Result<CertBundle, MaterialError> {
    CertBundle::from_pem(
        &crate::material::certs_to_pem(std::slice::from_ref(leaf)),
        key,
        ca_pem,
    )
}

fn to_offset(t: SystemTime) -> OffsetDateTime {
    OffsetDateTime::from(t)
}

/// Bytes of a certificate serial number.
pub const SERIAL_BYTES: usize = 16;

fn random_serial_bytes() -> [u8; SERIAL_BYTES] {
    let mut bytes = [0u8; SERIAL_BYTES];
    // SystemRandom only fails if the OS has no entropy source; a fixed serial would still be
    // a valid (if weaker) certificate, and the fill is retried by the OS in practice.
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
    bytes
}

fn serial_number(mut bytes: [u8; SERIAL_BYTES]) -> SerialNumber {
    bytes[0] &= 0x7f; // positive INTEGER
    bytes[0] |= 0x01; // no leading zero byte to strip
    SerialNumber::from_slice(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Role;

    #[test]
    fn csr_path_binds_identity_from_the_caller_not_the_csr() {
        let ca = BuiltinCa::generate("prod").unwrap();
        let node = generate_csr("admin.operators.prod.strait.internal").unwrap();
        let id = Identity::node("prod", "aws-use1", "gw1", Role::Gateway).unwrap();
        let leaf = ca
            .sign_csr(
                &node.csr_pem,
                &id,
                Validity::for_lifetime(DEFAULT_AGENT_LIFETIME),
            )
            .unwrap();
        let bundle = bundle_from_signed(&leaf, node.key, ca.cert_pem()).unwrap();
        assert_eq!(bundle.identity, id);
        let life = bundle.lifetime().as_secs();
        assert!((24 * 3600..=24 * 3600 + 61).contains(&life), "{life}");
    }

    #[test]
    fn the_caller_may_choose_the_serial() {
        let ca = BuiltinCa::generate("prod").unwrap();
        let node = generate_csr("x").unwrap();
        let id = Identity::node("prod", "s", "n", Role::Member).unwrap();
        let validity = Validity::for_lifetime(Duration::from_secs(60));
        let sign = |serial| {
            let leaf = ca
                .sign_csr_with_serial(&node.csr_pem, &id, validity, serial)
                .unwrap();
            crate::material::CertInfo::parse(&leaf).unwrap().serial
        };
        let a = sign([0xab; SERIAL_BYTES]);
        assert_eq!(a, sign([0xab; SERIAL_BYTES]), "same bytes, same serial");
        assert_ne!(a, sign([0xac; SERIAL_BYTES]));
        // Zero bytes still make a positive serial of full length.
        let zero = sign([0; SERIAL_BYTES]);
        assert!(
            zero.trim_start_matches('0').len() >= 2 * SERIAL_BYTES - 1,
            "{zero}"
        );
    }

    #[test]
    fn tampered_csr_is_refused() {
        let ca = BuiltinCa::generate("prod").unwrap();
        let node = generate_csr("x").unwrap();
        let id = Identity::node("prod", "s", "n", Role::Member).unwrap();
        let mut bad = node
            .csr_pem
            .replace("-----BEGIN CERTIFICATE REQUEST-----\n", "");
        bad.insert_str(0, "-----BEGIN CERTIFICATE REQUEST-----\nAAAA");
        let err = ca
            .sign_csr(&bad, &id, Validity::for_lifetime(Duration::from_secs(60)))
            .unwrap_err();
        assert!(matches!(err, CaError::BadCsr(_)), "{err}");
        assert!(ca
            .sign_csr(
                "garbage",
                &id,
                Validity::for_lifetime(Duration::from_secs(60))
            )
            .is_err());
    }

    #[test]
    fn other_mesh_and_empty_validity_are_refused() {
        let ca = BuiltinCa::generate("prod").unwrap();
        let id = Identity::node("staging", "s", "n", Role::Member).unwrap();
        assert!(matches!(
            ca.issue(&id, Validity::for_lifetime(Duration::from_secs(60))),
            Err(CaError::WrongMesh { .. })
        ));
        let id = Identity::node("prod", "s", "n", Role::Member).unwrap();
        let now = SystemTime::now();
        let empty = Validity {
            not_before: now,
            not_after: now,
        };
        assert!(matches!(ca.issue(&id, empty), Err(CaError::EmptyValidity)));
    }

    #[test]
    fn save_and_load_round_trip_with_private_key_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let ca = BuiltinCa::generate("prod").unwrap();
        ca.save(dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join("ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(ca.save(dir.path()).is_err(), "overwrote an existing CA");
        let loaded = BuiltinCa::load(dir.path(), "prod").unwrap();
        assert_eq!(loaded.fingerprint(), ca.fingerprint());
        let id = Identity::service("prod", "c1", Role::Coordinator).unwrap();
        let b = loaded
            .issue(&id, Validity::for_lifetime(Duration::from_secs(60)))
            .unwrap();
        assert_eq!(b.identity, id);
        assert_ne!(format!("{b:?}").find("PRIVATE KEY"), Some(0));
        assert!(!format!("{b:?}").contains("PRIVATE KEY"));
    }

    #[test]
    fn mismatched_key_is_detected_on_load() {
        let dir = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        BuiltinCa::generate("prod")
            .unwrap()
            .save(dir.path())
            .unwrap();
        BuiltinCa::generate("prod")
            .unwrap()
            .save(other.path())
            .unwrap();
        std::fs::copy(other.path().join("ca.key"), dir.path().join("ca.key")).unwrap();
        let err = BuiltinCa::load(dir.path(), "prod").unwrap_err();
        assert!(err.to_string().contains("does not belong"), "{err}");
    }
}
