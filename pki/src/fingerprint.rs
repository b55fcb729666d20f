//! CA fingerprints: SHA-256 of a certificate's SubjectPublicKeyInfo (as kubeadm's discovery
//! hash), so a new node can pin its coordinator's CA before it has a certificate.

use std::fmt;
use std::str::FromStr;

/// SHA-256 of a CA certificate's SubjectPublicKeyInfo.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

/// A fingerprint that is not 64 hex digits (optionally prefixed `sha256:`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid CA fingerprint {0:?}: expected sha256:<64 hex digits>")]
pub struct BadFingerprint(pub String);

impl Fingerprint {
    /// The fingerprint of a DER certificate, or `None` if it is not X.509.
    pub fn of_certificate(der: &[u8]) -> Option<Fingerprint> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        Some(Fingerprint::of_spki(cert.public_key().raw))
    }

    /// The fingerprint of a DER SubjectPublicKeyInfo.
    pub fn of_spki(spki_der: &[u8]) -> Fingerprint {
        let digest = ring::digest::digest(&ring::digest::SHA256, spki_der);
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.as_ref());
        Fingerprint(out)
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.to_hex())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Fingerprint {
    type Err = BadFingerprint;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex_part = s.strip_prefix("sha256:").unwrap_or(s);
        let mut out = [0u8; 32];
        if hex_part.len() != 64
            || !hex_part
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            || hex::decode_to_slice(hex_part, &mut out).is_err()
        {
            return Err(BadFingerprint(s.to_string()));
        }
        Ok(Fingerprint(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_with_and_without_prefix() {
        let fp = Fingerprint([0xab; 32]);
        assert_eq!(fp.to_string().parse::<Fingerprint>().unwrap(), fp);
        assert_eq!(fp.to_hex().parse::<Fingerprint>().unwrap(), fp);
        for bad in ["", "sha256:", "sha256:zz", &"A".repeat(64), &"a".repeat(63)] {
            assert!(bad.parse::<Fingerprint>().is_err(), "{bad}");
        }
    }
}
