//! Mutual-TLS configs for the mesh: TLS 1.3 only, ring as the one crypto provider,
//! certificates swapped live through a [`CertStore`] when they are renewed.
//!
//! Servers require (or, for enrollment, allow the absence of) a client certificate that
//! chains to the mesh CA. Clients verify the server by chain *and* identity: the server's
//! certificate must name a coordinator of the expected mesh, so no host name is needed.

use std::sync::{Arc, RwLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ParsedCertificate, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig,
    SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::fingerprint::Fingerprint;
use crate::identity::{Identity, IdentityError, Role};
use crate::material::{CertBundle, MaterialError};

/// Why a TLS config could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS configuration failed: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client-certificate verifier: {0}; check the CA certificate")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("CA certificate is not usable as a trust anchor: {0}")]
    BadTrustAnchor(String),
    #[error("certificate material: {0}")]
    Material(#[from] MaterialError),
    #[error("QUIC refused the TLS config: {0}")]
    Quic(String),
}

/// The one crypto provider in the workspace: ring.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Whether a server insists on a client certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// Every client must present a certificate chained to the mesh CA.
    Required,
    /// Clients may connect without a certificate (to enroll with a join token); a
    /// certificate that *is* presented must still be valid. The application must then
    /// refuse everything but enrollment to peers without an identity.
    OptionalForEnrollment,
}

/// The live certificate of this process. TLS configs built over it pick up a renewed
/// certificate for every new handshake; established connections are untouched.
#[derive(Clone)]
pub struct CertStore {
    inner: Arc<RwLock<Arc<Loaded>>>,
}

struct Loaded {
    bundle: CertBundle,
    key: Arc<CertifiedKey>,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let l = self.current();
        f.debug_struct("CertStore")
            .field("identity", &l.bundle.identity.to_string())
            .field("serial", &l.bundle.serial)
            .finish()
    }
}

impl CertStore {
    pub fn new(bundle: CertBundle) -> Result<CertStore, MaterialError> {
        let key = bundle.certified_key()?;
        Ok(CertStore {
            inner: Arc::new(RwLock::new(Arc::new(Loaded { bundle, key }))),
        })
    }

    /// Swaps in a renewed certificate.
    pub fn replace(&self, bundle: CertBundle) -> Result<(), MaterialError> {
        let key = bundle.certified_key()?;
        let loaded = Arc::new(Loaded { bundle, key });
        match self.inner.write() {
            Ok(mut g) => *g = loaded,
            Err(poisoned) => *poisoned.into_inner() = loaded,
        }
        Ok(())
    }

    fn current(&self) -> Arc<Loaded> {
        match self.inner.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The current bundle (a copy).
    pub fn bundle(&self) -> CertBundle {
        self.current().bundle.clone()
    }

    pub fn identity(&self) -> Identity {
        self.current().bundle.identity.clone()
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current().key.clone())
    }
}

impl ResolvesClientCert for CertStore {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.current().key.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Builds a root store from CA certificates.
pub fn root_store(cas: &[CertificateDer<'static>]) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for ca in cas {
        roots
            .add(ca.clone())
            .map_err(|e| TlsError::BadTrustAnchor(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(TlsError::BadTrustAnchor("no CA certificate given".into()));
    }
    Ok(Arc::new(roots))
}

/// A server config presenting `certs` and verifying clients against `cas`.
pub fn server_config(
    cas: &[CertificateDer<'static>],
    certs: CertStore,
    auth: ClientAuth,
    alpn: &[u8],
) -> Result<ServerConfig, TlsError> {
    let builder = WebPkiClientVerifier::builder_with_provider(root_store(cas)?, provider());
    let verifier = match auth {
        ClientAuth::Required => builder.build()?,
        ClientAuth::OptionalForEnrollment => builder.allow_unauthenticated().build()?,
    };
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(certs));
    config.alpn_protocols = vec![alpn.to_vec()];
    // No session resumption: a resumed session would carry the client certificate of the
    // original handshake, so a renewed, expired or revoked certificate would go unseen.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(config)
}

/// A client config that presents `certs` (if any) and accepts only servers whose
/// certificate chains to `cas` and names one of `roles` in `mesh`.
pub fn client_config(
    cas: &[CertificateDer<'static>],
    certs: Option<CertStore>,
    mesh: &str,
    roles: &[Role],
    alpn: &[u8],
) -> Result<ClientConfig, TlsError> {
    let verifier = MeshServerVerifier {
        anchors: Anchors::Roots(root_store(cas)?),
        mesh: mesh.to_string(),
        roles: roles.to_vec(),
        provider: provider(),
    };
    finish_client(verifier, certs, alpn)
}

/// A client config for enrollment: no client certificate, and the server's chain must
/// contain the CA whose SubjectPublicKeyInfo hashes to `ca` (from the join token).
pub fn enrollment_client_config(
    ca: Fingerprint,
    mesh: &str,
    alpn: &[u8],
) -> Result<ClientConfig, TlsError> {
    let verifier = MeshServerVerifier {
        anchors: Anchors::Pinned(ca),
        mesh: mesh.to_string(),
        roles: vec![Role::Coordinator],
        provider: provider(),
    };
    finish_client(verifier, None, alpn)
}

fn finish_client(
    verifier: MeshServerVerifier,
    certs: Option<CertStore>,
    alpn: &[u8],
) -> Result<ClientConfig, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let mut config = match certs {
        Some(store) => builder.with_client_cert_resolver(Arc::new(store)),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}

/// QUIC server config over a rustls server config.
pub fn quic_server_config(config: ServerConfig) -> Result<quinn::ServerConfig, TlsError> {
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(config)
        .map_err(|e| TlsError::Quic(e.to_string()))?;
    Ok(quinn::ServerConfig::with_crypto(Arc::new(crypto)))
}

/// QUIC client config over a rustls client config.
pub fn quic_client_config(config: ClientConfig) -> Result<quinn::ClientConfig, TlsError> {
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(config)
        .map_err(|e| TlsError::Quic(e.to_string()))?;
    Ok(quinn::ClientConfig::new(Arc::new(crypto)))
}

/// The identity of the peer of an established QUIC connection: `Ok(None)` if it presented
/// no certificate (only possible on an enrollment server).
pub fn peer_identity(conn: &quinn::Connection) -> Result<Option<Identity>, IdentityError> {
    let Some(any) = conn.peer_identity() else {
        return Ok(None);
    };
    match any.downcast::<Vec<CertificateDer<'static>>>() {
        Ok(chain) => match chain.first() {
            Some(leaf) => Identity::from_certificate(leaf).map(Some),
            None => Ok(None),
        },
        Err(_) => Err(IdentityError::NotACertificate(
            "the TLS session carries no X.509 certificate".into(),
        )),
    }
}

/// The peer's leaf certificate (serial, validity), if it presented one.
pub fn peer_certificate(conn: &quinn::Connection) -> Option<crate::material::CertInfo> {
    let chain = conn
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?;
    crate::material::CertInfo::parse(chain.first()?).ok()
}

/// The peer's leaf certificate serial (lower-case hex), for revocation checks.
pub fn peer_serial(conn: &quinn::Connection) -> Option<String> {
    let chain = conn
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?;
    let leaf = chain.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).ok()?;
    Some(hex::encode(cert.raw_serial()))
}

#[derive(Debug)]
enum Anchors {
    Roots(Arc<RootCertStore>),
    Pinned(Fingerprint),
}

/// Verifies a server by chain to the mesh CA and by the identity its certificate names.
#[derive(Debug)]
struct MeshServerVerifier {
    anchors: Anchors,
    mesh: String,
    roles: Vec<Role>,
    provider: Arc<CryptoProvider>,
}

fn other_error(msg: String) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(
        std::io::Error::other(msg),
    ))))
}

impl ServerCertVerifier for MeshServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        let algs = self.provider.signature_verification_algorithms.all;
        match &self.anchors {
            Anchors::Roots(roots) => rustls::client::verify_server_cert_signed_by_trust_anchor(
                &parsed,
                roots,
                intermediates,
                now,
                algs,
            )?,
            Anchors::Pinned(fp) => {
                // The pinned CA must be among the certificates the server sent.
                let ca = intermediates
                    .iter()
                    .find(|c| Fingerprint::of_certificate(c).as_ref() == Some(fp))
                    .ok_or_else(|| {
                        other_error(format!(
                            "the coordinator's CA does not match the join token's fingerprint {fp}; \
                             check the token and the coordinator address"
                        ))
                    })?;
                let roots = root_store(&[ca.clone().into_owned()])
                    .map_err(|e| other_error(e.to_string()))?;
                rustls::client::verify_server_cert_signed_by_trust_anchor(
                    &parsed,
                    &roots,
                    &[],
                    now,
                    algs,
                )?
            }
        }
        let identity = Identity::from_certificate(end_entity)
            .map_err(|e| other_error(format!("server certificate: {e}")))?;
        if identity.mesh() != self.mesh || !self.roles.contains(&identity.role()) {
            return Err(other_error(format!(
                "server certificate names {identity}, expected a {} of mesh {}",
                self.roles
                    .iter()
                    .map(|r| r.as_str())
                    .collect::<Vec<_>>()
                    .join(" or "),
                self.mesh
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
