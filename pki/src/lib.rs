//! Strait's trust model.
//!
//! - [`identity`]: who a certificate holder is (mesh, site, node, role) and the naming scheme
//!   that binds it to X.509 SANs.
//! - [`ca`]: the built-in mesh CA (the embedded default), issuing from CSRs.
//! - [`token`]: single-use join tokens for enrollment with the built-in CA.
//! - [`vault`]: certificates from a Vault PKI engine (HashiCorp Vault or RustyVault).
//! - [`renewal`]: when to renew (pure) and the task that does it.
//! - [`tls`]: TLS 1.3 mutual-TLS configs for quinn, with live certificate replacement.
//! - [`material`]: PEM, key files (0600) and certificate bundles.
//! - [`files`]: which files and directories may be trusted (owner and mode).

pub mod ca;
pub mod files;
pub mod fingerprint;
#[doc(hidden)]
pub mod fuzzing;
pub mod identity;
pub mod material;
pub mod renewal;
pub mod tls;
pub mod token;
pub mod vault;

pub use fingerprint::Fingerprint;
pub use identity::{Identity, IdentityError, OperatorRole, Role};
pub use material::{CertBundle, SecretPem};
