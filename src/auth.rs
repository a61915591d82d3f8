//! Bearer tokens and roles.
//!
//! A token is 32 random bytes written as 64 hex characters, prefixed `wv_`. Configuration holds
//! only its SHA-256 (`wormvault token` prints both), so the config file gives no access. A
//! request presents `Authorization: Bearer <token>`; the daemon hashes it and compares the
//! hash with every configured one in constant time.
//!
//! | role         | may                                                   |
//! |--------------|-------------------------------------------------------|
//! | `ingest`     | `POST /v1/events`                                     |
//! | `compliance` | retrieval (`/v1/records`, RTI exports)                |
//! | `admin`      | `POST /v1/flush` and other operations                 |

use crate::merkle::{self, Hash};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Ingest,
    Compliance,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Ingest => "ingest",
            Role::Compliance => "compliance",
            Role::Admin => "admin",
        }
    }
}

/// A configured token: a name, the SHA-256 of the secret, and roles.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Token {
    pub name: String,
    pub sha256: Hash,
    pub roles: Vec<Role>,
}

impl Token {
    pub fn new(name: &str, sha256_hex: &str, roles: &[Role]) -> Result<Token, String> {
        if name.is_empty() || name.len() > 64 || name.chars().any(|c| c.is_control()) {
            return Err(format!(
                "token name {name:?} must be 1-64 printable characters"
            ));
        }
        let mut sha256 = [0u8; 32];
        hex::decode_to_slice(sha256_hex, &mut sha256).map_err(|_| {
            format!("token {name:?}: sha256 must be 64 hex digits (from `wormvault token`)")
        })?;
        if roles.is_empty() {
            return Err(format!("token {name:?} has no roles"));
        }
        Ok(Token {
            name: name.to_owned(),
            sha256,
            roles: roles.to_vec(),
        })
    }

    pub fn roles_text(&self) -> String {
        self.roles
            .iter()
            .map(|r| r.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Why a request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No `Authorization: Bearer` header (401).
    Missing,
    /// A token that matches no configured one (401).
    Unknown,
    /// A valid token without the role the endpoint needs (403).
    Forbidden,
}

/// The configured tokens.
#[derive(Clone, Debug, Default)]
pub struct Auth {
    tokens: Vec<Token>,
}

impl Auth {
    pub fn new(tokens: Vec<Token>) -> Auth {
        Auth { tokens }
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Checks an `Authorization` header value for `role`; returns the token's name.
    pub fn check(&self, header: Option<&str>, role: Role) -> Result<&str, Refusal> {
        let presented = header
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(Refusal::Missing)?;
        let hash = merkle::sha256(presented.as_bytes());
        // Compare against every token, in constant time per comparison.
        let mut found: Option<&Token> = None;
        for t in &self.tokens {
            if constant_time_eq(&t.sha256, &hash) {
                found = Some(t);
            }
        }
        let token = found.ok_or(Refusal::Unknown)?;
        if token.roles.contains(&role) {
            Ok(&token.name)
        } else {
            Err(Refusal::Forbidden)
        }
    }
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A new random token and its SHA-256 (hex).
pub fn generate() -> std::io::Result<(String, String)> {
    let mut secret = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut secret))?;
    let token = format!("wv_{}", hex::encode(secret));
    let hash = hex::encode(merkle::sha256(token.as_bytes()));
    Ok((token, hash))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_checked_by_hash_and_role() {
        let (secret, hash) = generate().unwrap();
        let (other, _) = generate().unwrap();
        assert!(secret.starts_with("wv_") && secret.len() == 67);
        let auth = Auth::new(vec![Token::new("capture", &hash, &[Role::Ingest]).unwrap()]);
        let bearer = format!("Bearer {secret}");
        assert_eq!(auth.check(Some(&bearer), Role::Ingest), Ok("capture"));
        assert_eq!(
            auth.check(Some(&bearer), Role::Admin),
            Err(Refusal::Forbidden)
        );
        assert_eq!(
            auth.check(Some(&format!("Bearer {other}")), Role::Ingest),
            Err(Refusal::Unknown)
        );
        assert_eq!(auth.check(None, Role::Ingest), Err(Refusal::Missing));
        assert_eq!(
            auth.check(Some(&secret), Role::Ingest),
            Err(Refusal::Missing),
            "the scheme is required"
        );
        assert_eq!(
            auth.check(Some("Bearer "), Role::Ingest),
            Err(Refusal::Missing)
        );
        assert!(Token::new("x", "nothex", &[Role::Admin]).is_err());
        assert!(Token::new("x", &hash, &[]).is_err());
    }
}
