//! Join tokens: single-use, expiring credentials that let a new node enroll with the
//! built-in CA.
//!
//! A token reads `strait1.<id>.<secret>.<ca-fingerprint>`: `id` (12 hex digits) names the
//! record, `secret` (32 hex digits, 128 bits) proves possession and is stored only as its
//! SHA-256, and `ca-fingerprint` (64 hex digits) lets the new node verify the coordinator
//! before it has a certificate of its own. Everything here is pure: time comes in as
//! seconds since the Unix epoch.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::fingerprint::Fingerprint;
use crate::identity::{Label, Role};

const PREFIX: &str = "strait1";
const ID_BYTES: usize = 6;
const SECRET_BYTES: usize = 16;

/// Why a join token was refused. Each kind has its own message and fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error(
        "join token is malformed: {0}; pass the whole token printed by `straitctl token create`"
    )]
    Malformed(&'static str),
    #[error("join token {id} is not known to this coordinator (never created here, or its secret is wrong); create a new one with `straitctl token create`")]
    Unknown { id: String },
    #[error("join token {id} expired {ago}s ago; create a new one with `straitctl token create`")]
    Expired { id: String, ago: u64 },
    #[error("join token {id} was already used (tokens are single-use); create a new one with `straitctl token create`")]
    AlreadyUsed { id: String },
    #[error("join token {id} is for site {token_site}, but this node asked to join site {requested}; create a token with --site {requested} or fix the node's site")]
    WrongSite {
        id: String,
        token_site: String,
        requested: String,
    },
    #[error("join token {id} is for role {token_role}, but this node asked for role {requested}; create a token with --role {requested} or fix the node's role")]
    WrongRole {
        id: String,
        token_role: Role,
        requested: Role,
    },
    #[error("join tokens enroll gateways and members only, not {0}s")]
    RoleNotEnrollable(Role),
    #[error("join token lifetime must be between 1 second and 30 days")]
    BadTtl,
    #[error("invalid site for a join token: {0}")]
    BadSite(String),
}

/// A join token as the operator and the new node see it. `Debug` hides the secret;
/// `Display` prints the whole token (only for handing it to the node).
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    id: String,
    secret: [u8; SECRET_BYTES],
    ca: Fingerprint,
}

impl JoinToken {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The CA fingerprint the new node pins when it first connects.
    pub fn ca_fingerprint(&self) -> Fingerprint {
        self.ca
    }

    fn secret_hash(&self) -> String {
        hex::encode(ring::digest::digest(&ring::digest::SHA256, &self.secret))
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{PREFIX}.{}.{}.{}",
            self.id,
            hex::encode(self.secret),
            self.ca.to_hex()
        )
    }
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("id", &self.id)
            .field("secret", &"[redacted]")
            .field("ca", &self.ca)
            .finish()
    }
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl FromStr for JoinToken {
    type Err = TokenError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let parts: Vec<&str> = s.split('.').collect();
        let [prefix, id, secret, ca] = parts.as_slice() else {
            return Err(TokenError::Malformed(
                "expected four dot-separated parts: strait1.<id>.<secret>.<ca-fingerprint>",
            ));
        };
        if *prefix != PREFIX {
            return Err(TokenError::Malformed("it does not start with strait1."));
        }
        if id.len() != ID_BYTES * 2 || !is_lower_hex(id) {
            return Err(TokenError::Malformed(
                "the id is not 12 lower-case hex digits",
            ));
        }
        let mut secret_bytes = [0u8; SECRET_BYTES];
        if secret.len() != SECRET_BYTES * 2
            || !is_lower_hex(secret)
            || hex::decode_to_slice(secret, &mut secret_bytes).is_err()
        {
            return Err(TokenError::Malformed(
                "the secret is not 32 lower-case hex digits",
            ));
        }
        let ca: Fingerprint = ca.parse().map_err(|_| {
            TokenError::Malformed("the CA fingerprint is not 64 lower-case hex digits")
        })?;
        Ok(JoinToken {
            id: id.to_string(),
            secret: secret_bytes,
            ca,
        })
    }
}

/// What the coordinator stores for a token: never the secret, only its hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct TokenRecord {
    pub id: String,
    pub secret_sha256: String,
    pub site: String,
    pub role: Role,
    pub created_at: u64,
    pub expires_at: u64,
    pub used_at: Option<u64>,
    pub used_by: Option<String>,
}

/// What a valid token grants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub token_id: String,
    pub site: String,
    pub role: Role,
}

/// Creates a token for (`site`, `role`) valid for `ttl` from `now`. `random` must be
/// 22 bytes from a CSPRNG (see [`random_token_bytes`]).
pub fn create(
    site: &str,
    role: Role,
    ttl: Duration,
    now: u64,
    ca: Fingerprint,
    random: [u8; ID_BYTES + SECRET_BYTES],
) -> Result<(JoinToken, TokenRecord), TokenError> {
    Label::parse("site", site).map_err(|e| TokenError::BadSite(e.to_string()))?;
    if !role.has_site() {
        return Err(TokenError::RoleNotEnrollable(role));
    }
    if ttl.is_zero() || ttl > Duration::from_secs(30 * 24 * 3600) {
        return Err(TokenError::BadTtl);
    }
    let mut secret = [0u8; SECRET_BYTES];
    secret.copy_from_slice(&random[ID_BYTES..]);
    let token = JoinToken {
        id: hex::encode(&random[..ID_BYTES]),
        secret,
        ca,
    };
    let record = TokenRecord {
        id: token.id.clone(),
        secret_sha256: token.secret_hash(),
        site: site.to_string(),
        role,
        created_at: now,
        expires_at: now.saturating_add(ttl.as_secs().max(1)),
        used_at: None,
        used_by: None,
    };
    Ok((token, record))
}

/// Fresh randomness for [`create`].
pub fn random_token_bytes() -> [u8; ID_BYTES + SECRET_BYTES] {
    let mut out = [0u8; ID_BYTES + SECRET_BYTES];
    // SystemRandom fails only without an OS entropy source, where nothing secure can run.
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut out)
        .expect("the OS random number generator is unavailable");
    out
}

impl TokenRecord {
    /// Checks `token` against this record for a node asking to join `site` as `role`,
    /// without consuming it.
    pub fn check(
        &self,
        token: &JoinToken,
        site: &str,
        role: Role,
        now: u64,
    ) -> Result<Grant, TokenError> {
        if token.id != self.id || !constant_time_eq(&token.secret_hash(), &self.secret_sha256) {
            return Err(TokenError::Unknown {
                id: token.id.clone(),
            });
        }
        if self.used_at.is_some() {
            return Err(TokenError::AlreadyUsed {
                id: self.id.clone(),
            });
        }
        if now >= self.expires_at {
            return Err(TokenError::Expired {
                id: self.id.clone(),
                ago: now - self.expires_at,
            });
        }
        if site != self.site {
            return Err(TokenError::WrongSite {
                id: self.id.clone(),
                token_site: self.site.clone(),
                requested: site.to_string(),
            });
        }
        if role != self.role {
            return Err(TokenError::WrongRole {
                id: self.id.clone(),
                token_role: self.role,
                requested: role,
            });
        }
        Ok(Grant {
            token_id: self.id.clone(),
            site: self.site.clone(),
            role: self.role,
        })
    }
}

fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// An in-memory set of token records (the coordinator persists it through its store).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TokenBook {
    records: BTreeMap<String, TokenRecord>,
}

impl TokenBook {
    pub fn insert(&mut self, record: TokenRecord) {
        self.records.insert(record.id.clone(), record);
    }

    pub fn get(&self, id: &str) -> Option<&TokenRecord> {
        self.records.get(id)
    }

    pub fn records(&self) -> impl Iterator<Item = &TokenRecord> {
        self.records.values()
    }

    /// Checks the token without consuming it.
    pub fn check(
        &self,
        token: &JoinToken,
        site: &str,
        role: Role,
        now: u64,
    ) -> Result<Grant, TokenError> {
        match self.records.get(&token.id) {
            Some(record) => record.check(token, site, role, now),
            None => Err(TokenError::Unknown {
                id: token.id.clone(),
            }),
        }
    }

    /// Checks and consumes the token for node `node`; a second redeem fails with
    /// [`TokenError::AlreadyUsed`].
    pub fn redeem(
        &mut self,
        token: &JoinToken,
        site: &str,
        role: Role,
        node: &str,
        now: u64,
    ) -> Result<Grant, TokenError> {
        let grant = self.check(token, site, role, now)?;
        if let Some(record) = self.records.get_mut(&token.id) {
            record.used_at = Some(now);
            record.used_by = Some(node.to_string());
        }
        Ok(grant)
    }

    /// Drops records that expired more than `keep` seconds before `now`.
    pub fn prune(&mut self, now: u64, keep: u64) {
        self.records
            .retain(|_, r| r.expires_at.saturating_add(keep) > now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FP: Fingerprint = Fingerprint([7; 32]);

    fn book_with(site: &str, role: Role, ttl: u64, now: u64) -> (TokenBook, JoinToken) {
        let (t, r) = create(site, role, Duration::from_secs(ttl), now, FP, [3; 22]).unwrap();
        let mut book = TokenBook::default();
        book.insert(r);
        (book, t)
    }

    #[test]
    fn token_round_trips_and_hides_secret_in_debug() {
        let (_, t) = book_with("aws-use1", Role::Gateway, 60, 1000);
        let s = t.to_string();
        assert!(s.starts_with("strait1.030303030303."));
        let back: JoinToken = s.parse().unwrap();
        assert_eq!(back, t);
        assert_eq!(back.ca_fingerprint(), FP);
        let dbg = format!("{t:?}");
        assert!(!dbg.contains(&hex::encode([3u8; 16])), "{dbg}");
    }

    #[test]
    fn record_stores_only_a_hash() {
        let (book, t) = book_with("s", Role::Member, 60, 0);
        let rec = book.get(t.id()).unwrap();
        let json = serde_json::to_string(rec).unwrap();
        assert!(!json.contains(&hex::encode([3u8; 16])), "{json}");
    }

    #[test]
    fn valid_token_is_single_use() {
        let (mut book, t) = book_with("s", Role::Member, 60, 1000);
        let g = book.redeem(&t, "s", Role::Member, "n1", 1010).unwrap();
        assert_eq!((g.site.as_str(), g.role), ("s", Role::Member));
        assert_eq!(
            book.redeem(&t, "s", Role::Member, "n2", 1011),
            Err(TokenError::AlreadyUsed { id: t.id().into() })
        );
        assert_eq!(book.get(t.id()).unwrap().used_by.as_deref(), Some("n1"));
    }

    #[test]
    fn every_error_is_distinct() {
        let (mut book, t) = book_with("s", Role::Gateway, 60, 1000);
        assert!(matches!(
            book.check(&t, "s", Role::Gateway, 1060),
            Err(TokenError::Expired { ago: 0, .. })
        ));
        assert!(matches!(
            book.check(&t, "other", Role::Gateway, 1001),
            Err(TokenError::WrongSite { .. })
        ));
        assert!(matches!(
            book.check(&t, "s", Role::Member, 1001),
            Err(TokenError::WrongRole { .. })
        ));
        // A failed check does not consume the token.
        assert!(book.redeem(&t, "s", Role::Gateway, "gw", 1001).is_ok());

        let mut wrong_secret = t.to_string();
        let i = wrong_secret.len() - 65 - 1;
        wrong_secret.replace_range(
            i..i + 1,
            if &t.to_string()[i..i + 1] == "0" {
                "1"
            } else {
                "0"
            },
        );
        let forged: JoinToken = wrong_secret.parse().unwrap();
        assert!(matches!(
            book.check(&forged, "s", Role::Gateway, 1001),
            Err(TokenError::Unknown { .. })
        ));
        let (_, other) = book_with("s", Role::Gateway, 60, 1000);
        let mut unknown = other.to_string();
        unknown.replace_range(8..20, "abcdefabcdef");
        let unknown: JoinToken = unknown.parse().unwrap();
        assert!(matches!(
            book.check(&unknown, "s", Role::Gateway, 1001),
            Err(TokenError::Unknown { .. })
        ));
    }

    #[test]
    fn malformed_tokens_say_what_is_wrong() {
        let good = book_with("s", Role::Gateway, 60, 0).1.to_string();
        let cases = [
            ("", "four"),
            ("strait1.abc", "four"),
            (&good.replace("strait1", "strait2"), "strait1"),
            (&good.replacen(".0303", ".X303", 1), "id"),
            (&format!("{}.{}", &good[..21], &good[22..]), "four"),
            (&good[..good.len() - 1], "fingerprint"),
            (&good.replacen("030303030303", "ABCDEF012345", 1), "id"),
        ];
        for (input, word) in cases {
            match input.parse::<JoinToken>() {
                Err(e @ TokenError::Malformed(_)) => {
                    assert!(e.to_string().contains(word), "{input:?}: {e}")
                }
                other => panic!("{input:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn creation_is_validated() {
        let r = [0; 22];
        assert_eq!(
            create("s", Role::Operator, Duration::from_secs(60), 0, FP, r).unwrap_err(),
            TokenError::RoleNotEnrollable(Role::Operator)
        );
        assert_eq!(
            create("s", Role::Member, Duration::ZERO, 0, FP, r).unwrap_err(),
            TokenError::BadTtl
        );
        assert!(matches!(
            create("Bad Site", Role::Member, Duration::from_secs(1), 0, FP, r),
            Err(TokenError::BadSite(_))
        ));
    }

    #[test]
    fn prune_drops_long_expired_records() {
        let (mut book, t) = book_with("s", Role::Member, 10, 0);
        book.prune(100, 1000);
        assert!(book.get(t.id()).is_some());
        book.prune(2000, 1000);
        assert!(book.get(t.id()).is_none());
    }
}
