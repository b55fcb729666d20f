//! Fuzzing entry points, shared by the cargo-fuzz target `tokens` in `fuzz/` and by the
//! corpus replay test (`pki/tests/fuzz_corpus.rs`), which runs in plain `cargo test`; and
//! [`sandbox_vault`], which the agent's and the coordinator's config fuzzing share.
//!
//! Not part of the crate's API. Every function here must return normally for any input; a
//! panic means a real bug.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::fingerprint::Fingerprint;
use crate::token::{self, JoinToken, TokenBook, TokenError};
use crate::vault::VaultSettings;
use crate::Role;

/// Where every file a fuzzed config names is looked for: a directory that does not exist,
/// so reading any of them fails the same way on every machine.
pub const SANDBOX: &str = "/nonexistent/strait-fuzz";

/// `path`'s file name under [`SANDBOX`].
pub fn sandboxed(path: &Path) -> PathBuf {
    Path::new(SANDBOX).join(path.file_name().unwrap_or("file".as_ref()))
}

/// Moves every file `v` names under [`SANDBOX`], so that checking the settings
/// ([`VaultSettings::to_config`]) reads no file an input picked (a `/dev/zero` would not
/// return) and depends on nothing on the machine: `token` auth without `token-file` reads
/// one there instead of the `VAULT_TOKEN` variable, and without `ca-cert` one there is read
/// instead of the system's roots. No Vault settings pass that check.
pub fn sandbox_vault(v: &mut VaultSettings) {
    let token = v.token_file.as_deref().unwrap_or("VAULT_TOKEN".as_ref());
    v.token_file = Some(sandboxed(token));
    v.secret_id_file = v.secret_id_file.as_deref().map(sandboxed);
    let ca = v.ca_cert.as_deref().unwrap_or("system-roots.pem".as_ref());
    v.ca_cert = Some(sandboxed(ca));
}

/// The CA fingerprint of the one token [`tokens`] knows.
pub const KNOWN_CA: Fingerprint = Fingerprint([0x5a; 32]);
/// The randomness the known token is made from (its id is `0a0b0c0d0e0f`).
pub const KNOWN_RANDOM: [u8; 22] = [
    0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f, 0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19,
    0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f,
];
const CREATED_AT: u64 = 1_000;

/// The join token that the book in [`tokens`] holds (site `s`, gateway, 60 s from 1000).
pub fn known_token() -> JoinToken {
    let (t, _) = known();
    t
}

fn known() -> (JoinToken, TokenBook) {
    let (t, record) = token::create(
        "s",
        Role::Gateway,
        Duration::from_secs(60),
        CREATED_AT,
        KNOWN_CA,
        KNOWN_RANDOM,
    )
    .expect("a valid token");
    let mut book = TokenBook::default();
    book.insert(record);
    (t, book)
}

/// Parses `data` (as UTF-8, invalid sequences replaced) as a join token. Checks that:
///
/// - a refusal is [`TokenError::Malformed`] with a message;
/// - a token that parses prints as the input (trimmed, without a `sha256:` before the CA
///   fingerprint), parses again to an equal token and prints the same again;
/// - `Debug` never shows the secret;
/// - checked against a book holding one token, only that token's id and secret are
///   accepted (whatever the CA fingerprint): once, and a second redeem is refused as
///   already used.
pub fn tokens(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let parsed = text.parse::<JoinToken>();
    let token = match parsed {
        Ok(t) => t,
        Err(e) => {
            assert!(
                matches!(e, TokenError::Malformed(_)),
                "parsing refused a token with {e:?}, not Malformed"
            );
            assert!(!e.to_string().trim().is_empty(), "an empty error message");
            return;
        }
    };

    let shown = token.to_string();
    let back: JoinToken = shown
        .parse()
        .unwrap_or_else(|e| panic!("a printed token does not parse: {e}: {shown:?}"));
    assert_eq!(back, token, "a token changed in a round trip");
    assert_eq!(back.to_string(), shown, "a token prints differently twice");

    let parts: Vec<&str> = text.trim().split('.').collect();
    let [prefix, id, secret, ca] = parts.as_slice() else {
        panic!("a token parsed from something that is not four parts: {text:?}");
    };
    let ca_hex = ca.strip_prefix("sha256:").unwrap_or(ca);
    assert_eq!(
        shown,
        format!("{prefix}.{id}.{secret}.{ca_hex}"),
        "a token does not print as it was written"
    );
    assert_eq!(token.id(), *id);
    assert_eq!(token.ca_fingerprint().to_hex(), ca_hex);

    // Debug shows the id and the CA fingerprint, never the secret.
    let debug = format!("{token:?}")
        .replace(ca_hex, "")
        .replace(token.id(), "");
    assert!(!debug.contains(secret), "Debug shows the secret: {token:?}");

    // The coordinator checks the id and the secret; the CA fingerprint is for the node.
    let (known, mut book) = known();
    let known_text = known.to_string();
    let known_parts: Vec<&str> = known_text.split('.').collect();
    let now = CREATED_AT + 1;
    let checked = book.check(&token, "s", Role::Gateway, now);
    if [*id, *secret] == known_parts[1..3] {
        checked.expect("the known token is refused");
        book.redeem(&token, "s", Role::Gateway, "gw", now)
            .expect("the known token cannot be redeemed");
        let again = book.redeem(&token, "s", Role::Gateway, "gw", now);
        assert!(
            matches!(again, Err(TokenError::AlreadyUsed { .. })),
            "a token redeemed twice: {again:?}"
        );
    } else {
        match checked {
            Err(e @ TokenError::Unknown { .. }) => {
                assert!(!e.to_string().trim().is_empty());
            }
            other => {
                panic!("a token that is not the known one was not refused as unknown: {other:?}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_known_token_and_edge_cases() {
        let known = known_token().to_string();
        tokens(known.as_bytes());
        tokens(format!("  {known}\n").as_bytes());
        let (head, ca) = known.rsplit_once('.').unwrap();
        tokens(format!("{head}.sha256:{ca}").as_bytes());
        tokens(known.replace("strait1.0a", "strait1.1a").as_bytes());
        tokens(b"");
        tokens(b"strait1...");
        tokens(b"\xff\xfe");
    }
}
