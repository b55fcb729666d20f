//! Why a client's QUIC handshake failed, from the error quinn reports on the server side
//! (pure). A refused client certificate ends the handshake with a TLS alert, carried as a
//! QUIC `CRYPTO_ERROR` (0x100 + the alert), and rustls's reason text.

use crate::metrics::Refusal;

/// TLS alerts (RFC 8446 section 6).
const ALERT_CERTIFICATE_EXPIRED: u8 = 45;
const ALERT_UNKNOWN_CA: u8 = 48;
const ALERT_DECRYPT_ERROR: u8 = 51;

/// The refusal a failed handshake counts as.
pub fn refusal(e: &quinn::ConnectionError) -> Refusal {
    let quinn::ConnectionError::TransportError(t) = e else {
        return Refusal::Handshake;
    };
    let code = u64::from(t.code);
    if code & !0xff != 0x100 {
        return Refusal::Handshake;
    }
    match (code & 0xff) as u8 {
        // rustls sends certificate_expired for both ends of the validity period (as RFC
        // 8446 says: "expired or is not currently valid"); its reason tells them apart.
        ALERT_CERTIFICATE_EXPIRED
            if t.reason.contains("not valid yet") || t.reason.contains("NotValidYet") =>
        {
            Refusal::NotYetValidCertificate
        }
        ALERT_CERTIFICATE_EXPIRED => Refusal::ExpiredCertificate,
        ALERT_UNKNOWN_CA => Refusal::UnknownCa,
        // A signature that does not verify: a certificate from a foreign CA that carries the
        // mesh CA's name, or a certificate presented without its private key.
        ALERT_DECRYPT_ERROR => Refusal::BadSignature,
        _ => Refusal::Handshake,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quinn_proto::{TransportError, TransportErrorCode};

    fn tls_error(alert: u8, reason: &str) -> quinn::ConnectionError {
        quinn::ConnectionError::TransportError(TransportError {
            code: TransportErrorCode::crypto(alert),
            frame: None,
            reason: reason.into(),
        })
    }

    #[test]
    fn certificate_alerts_name_the_reason() {
        // The reasons as rustls 0.23 writes them.
        let cases = [
            (tls_error(45, "invalid peer certificate: certificate expired: verification time 1800000000 (UNIX), but certificate is not valid after 1700000000 (100000000 seconds ago)"), Refusal::ExpiredCertificate),
            (tls_error(45, "invalid peer certificate: certificate not valid yet: verification time 1700000000 (UNIX), but certificate is not valid before 1700003600 (3600 seconds in future)"), Refusal::NotYetValidCertificate),
            (tls_error(45, "invalid peer certificate: Expired"), Refusal::ExpiredCertificate),
            (tls_error(45, "invalid peer certificate: NotValidYet"), Refusal::NotYetValidCertificate),
            (tls_error(48, "invalid peer certificate: UnknownIssuer"), Refusal::UnknownCa),
            (tls_error(51, "invalid peer certificate: BadSignature"), Refusal::BadSignature),
            (tls_error(120, "peer doesn't support any known protocol"), Refusal::Handshake),
            (
                quinn::ConnectionError::TransportError(TransportError {
                    code: TransportErrorCode::PROTOCOL_VIOLATION,
                    frame: None,
                    reason: "TLS error: certificate expired".into(),
                }),
                Refusal::Handshake,
            ),
            (quinn::ConnectionError::TimedOut, Refusal::Handshake),
        ];
        for (e, want) in cases {
            assert_eq!(refusal(&e), want, "{e}");
        }
    }
}
