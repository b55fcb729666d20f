//! The node's WireGuard static key: generated on the node, stored 0600 as base64, never
//! sent or logged. Only its public half leaves the node.

use std::path::Path;

use anyhow::{Context, Result};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use boringtun::x25519::{PublicKey, StaticSecret};
use strait_pki::material::{write_file, write_new_file};

/// A WireGuard key pair. `Debug` shows only the public key.
pub struct WgKey {
    secret: StaticSecret,
    public: PublicKey,
}

impl std::fmt::Debug for WgKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WgKey(public {})", self.public_base64())
    }
}

impl WgKey {
    pub fn generate() -> WgKey {
        let mut bytes = [0u8; 32];
        // Without an OS entropy source no key can be made safely.
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
            .expect("the OS random number generator is unavailable");
        WgKey::from_bytes(bytes)
    }

    fn from_bytes(bytes: [u8; 32]) -> WgKey {
        let secret = StaticSecret::from(bytes);
        let public = PublicKey::from(&secret);
        WgKey { secret, public }
    }

    pub fn public_base64(&self) -> String {
        STANDARD.encode(self.public.as_bytes())
    }

    pub fn secret(&self) -> &StaticSecret {
        &self.secret
    }

    pub fn public(&self) -> PublicKey {
        self.public
    }

    /// Loads the key at `path`, creating it (mode 0600) if it does not exist.
    pub fn load_or_create(path: &Path) -> Result<WgKey> {
        if path.exists() {
            strait_pki::files::check_file(path, strait_pki::files::Sensitivity::Secret)?;
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading WireGuard key {}", path.display()))?;
            let bytes: [u8; 32] = STANDARD
                .decode(text.trim())
                .ok()
                .and_then(|b| b.try_into().ok())
                .with_context(|| {
                    format!(
                        "{} is not a base64 WireGuard private key; remove it to generate a new one",
                        path.display()
                    )
                })?;
            return Ok(WgKey::from_bytes(bytes));
        }
        let key = WgKey::generate();
        let text = format!("{}\n", STANDARD.encode(key.secret.to_bytes()));
        write_new_file(path, text.as_bytes(), 0o600)?;
        Ok(key)
    }
}

impl WgKey {
    /// Replaces the key file at `path` with this key (atomically, mode 0600).
    pub fn replace_file(&self, path: &Path) -> Result<()> {
        let text = format!("{}\n", STANDARD.encode(self.secret.to_bytes()));
        write_file(path, text.as_bytes(), 0o600)
            .with_context(|| {
                format!(
                    "saving the rotated WireGuard key to {} (the state directory must be writable by the agent)",
                    path.display()
                )
            })
    }

    /// How long ago the key file at `path` was written (zero if unknown).
    pub fn age_of_file(path: &Path) -> std::time::Duration {
        std::fs::metadata(path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_created_private_and_reloaded() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("wg.key");
        let a = WgKey::load_or_create(&p).unwrap();
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let b = WgKey::load_or_create(&p).unwrap();
        assert_eq!(a.public_base64(), b.public_base64());
        assert!(!format!("{a:?}").contains(&STANDARD.encode(a.secret.to_bytes())));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(WgKey::load_or_create(&p)
            .unwrap_err()
            .to_string()
            .contains("chmod 600"));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let next = WgKey::generate();
        next.replace_file(&p).unwrap();
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            WgKey::load_or_create(&p).unwrap().public_base64(),
            next.public_base64()
        );
    }
}
