//! What the handlers sign with. The built-in CA signs enrollments, renewals and operator
//! certificates; with Vault's PKI the coordinator only trusts Vault's CA and those handlers
//! refuse (`unsupported`). A simulation may bring its own [`Signer`].

use std::time::SystemTime;

use strait_pki::ca::{BuiltinCa, Validity, SERIAL_BYTES};
use strait_pki::material::{certs_to_pem, CertInfo};
use strait_pki::{Fingerprint, Identity};
use strait_proto::msg::{ErrorBody, ErrorCode};

use super::unix;

/// The coordinator's PKI, as the handlers see it.
pub trait Pki: Send + Sync {
    /// `builtin` or `vault`, as `straitctl status` shows it.
    fn name(&self) -> &'static str;
    /// The CA that signs here; `None` when nodes get their certificates elsewhere.
    fn signer(&self) -> Option<&dyn Signer>;
}

/// A CA the coordinator signs with.
pub trait Signer: Send + Sync {
    /// The CA certificate handed out with every certificate signed here.
    fn ca_pem(&self) -> &str;
    /// What join tokens carry, so a new node can pin the CA before it has a certificate.
    fn fingerprint(&self) -> Fingerprint;
    /// Signs the public key of `csr_pem` for `identity` (the CSR's names are ignored),
    /// with the serial number's bytes given by the caller.
    fn sign_csr(
        &self,
        csr_pem: &str,
        identity: &Identity,
        validity: Validity,
        serial: [u8; SERIAL_BYTES],
    ) -> Result<Signed, SignError>;
}

/// A certificate just signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    pub cert_pem: String,
    pub serial: String,
    /// Unix seconds.
    pub not_after: u64,
}

/// Why a certificate was not signed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    /// The request cannot be signed (a CSR that does not parse or verify, an identity of
    /// another mesh): the client's to fix.
    #[error("{0}")]
    Refused(String),
    /// The certificate made cannot be read back: a broken CA, not the client's doing.
    #[error("{0}")]
    Internal(String),
}

impl From<SignError> for ErrorBody {
    fn from(e: SignError) -> ErrorBody {
        match e {
            SignError::Refused(m) => ErrorBody::new(ErrorCode::BadRequest, m),
            SignError::Internal(m) => ErrorBody::new(ErrorCode::Internal, m),
        }
    }
}

impl Pki for BuiltinCa {
    fn name(&self) -> &'static str {
        "builtin"
    }

    fn signer(&self) -> Option<&dyn Signer> {
        Some(self)
    }
}

impl Signer for BuiltinCa {
    fn ca_pem(&self) -> &str {
        self.cert_pem()
    }

    fn fingerprint(&self) -> Fingerprint {
        BuiltinCa::fingerprint(self)
    }

    fn sign_csr(
        &self,
        csr_pem: &str,
        identity: &Identity,
        validity: Validity,
        serial: [u8; SERIAL_BYTES],
    ) -> Result<Signed, SignError> {
        let leaf = self
            .sign_csr_with_serial(csr_pem, identity, validity, serial)
            .map_err(|e| SignError::Refused(e.to_string()))?;
        let info = CertInfo::parse(&leaf).map_err(|e| SignError::Internal(e.to_string()))?;
        Ok(Signed {
            cert_pem: certs_to_pem(&[leaf]),
            serial: info.serial,
            not_after: unix(info.not_after),
        })
    }
}

/// Vault's PKI engine: agents get certificates from Vault; this coordinator only trusts
/// its CA and cannot enroll, renew or create join tokens.
#[derive(Debug, Default, Clone, Copy)]
pub struct VaultMode;

impl Pki for VaultMode {
    fn name(&self) -> &'static str {
        "vault"
    }

    fn signer(&self) -> Option<&dyn Signer> {
        None
    }
}

/// The signer of `pki`, or the refusal naming `what` cannot be done here.
pub fn signer<'p>(pki: &'p dyn Pki, what: &str) -> Result<&'p dyn Signer, ErrorBody> {
    pki.signer().ok_or_else(|| {
        ErrorBody::new(
            ErrorCode::Unsupported,
            format!("{what} is not available: this coordinator uses Vault's PKI, so nodes get certificates from Vault"),
        )
    })
}

/// Valid from shortly before `now` for `lifetime` (see [`Validity::starting_at`]).
pub(crate) fn validity(now: SystemTime, lifetime: std::time::Duration) -> Validity {
    Validity::starting_at(now, lifetime)
}
