//! Tokens, passwords and device secrets.
//!
//! Admin and device tokens are HS256 JWTs signed with the same key but with
//! different audiences, so a token of one kind is refused by the other
//! service. Admin passwords are argon2id hashes; device secrets are 256
//! random bits, stored as SHA-256 (see the migration for why not argon2).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

pub const ADMIN_AUDIENCE: &str = "tend-admin";
pub const DEVICE_AUDIENCE: &str = "tend-device";
const ISSUER: &str = "tend";

/// Admin tokens live an hour: long enough for a working session, short
/// enough that a role change takes effect within the hour.
pub const ADMIN_TOKEN_TTL: Duration = Duration::from_secs(3600);
/// Device tokens live 15 minutes. Sync servers keep revocations in memory
/// for this long, which bounds that cache.
pub const DEVICE_TOKEN_TTL: Duration = Duration::from_secs(900);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Admin,
    Operator,
    Viewer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Viewer => "viewer",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "admin" => Ok(Role::Admin),
            "operator" => Ok(Role::Operator),
            "viewer" => Ok(Role::Viewer),
            _ => Err(()),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdminClaims {
    /// The user's id.
    pub sub: Uuid,
    /// The user's tenant: every query the token makes is scoped to it.
    pub tid: Uuid,
    pub role: Role,
    /// May create tenants.
    #[serde(default)]
    pub sys: bool,
    pub aud: String,
    pub iss: String,
    pub iat: u64,
    pub exp: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceClaims {
    /// The device's id.
    pub sub: Uuid,
    pub tid: Uuid,
    pub aud: String,
    pub iss: String,
    pub iat: u64,
    pub exp: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid here")]
    Invalid,
}

/// Issues and verifies tokens with the installation's key.
#[derive(Clone)]
pub struct Tokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Tokens(***)")
    }
}

fn now_s() -> u64 {
    chrono::Utc::now().timestamp().max(0) as u64
}

impl Tokens {
    pub fn new(secret: &str) -> Self {
        Tokens {
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            decoding: DecodingKey::from_secret(secret.as_bytes()),
        }
    }

    fn sign<T: Serialize>(&self, claims: &T) -> String {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .expect("HS256 signing with an HMAC key cannot fail")
    }

    fn verify<T: serde::de::DeserializeOwned>(
        &self,
        token: &str,
        audience: &str,
    ) -> Result<T, TokenError> {
        let mut v = Validation::new(Algorithm::HS256);
        v.set_audience(&[audience]);
        v.set_issuer(&[ISSUER]);
        v.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
        v.leeway = 5;
        jsonwebtoken::decode::<T>(token, &self.decoding, &v)
            .map(|d| d.claims)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid,
            })
    }

    pub fn issue_admin(&self, user: Uuid, tenant: Uuid, role: Role, sys: bool) -> (String, u64) {
        let iat = now_s();
        let ttl = ADMIN_TOKEN_TTL.as_secs();
        let claims = AdminClaims {
            sub: user,
            tid: tenant,
            role,
            sys,
            aud: ADMIN_AUDIENCE.into(),
            iss: ISSUER.into(),
            iat,
            exp: iat + ttl,
        };
        (self.sign(&claims), ttl)
    }

    pub fn verify_admin(&self, token: &str) -> Result<AdminClaims, TokenError> {
        self.verify(token, ADMIN_AUDIENCE)
    }

    pub fn issue_device(&self, device: Uuid, tenant: Uuid) -> (String, u64) {
        let iat = now_s();
        let ttl = DEVICE_TOKEN_TTL.as_secs();
        let claims = DeviceClaims {
            sub: device,
            tid: tenant,
            aud: DEVICE_AUDIENCE.into(),
            iss: ISSUER.into(),
            iat,
            exp: iat + ttl,
        };
        (self.sign(&claims), ttl)
    }

    pub fn verify_device(&self, token: &str) -> Result<DeviceClaims, TokenError> {
        self.verify(token, DEVICE_AUDIENCE)
    }
}

/// Hashes a password with argon2id and a random salt. Slow on purpose:
/// call it from a blocking thread (`web::block`), not an async worker.
pub fn hash_password(password: &str) -> String {
    Argon2::default()
        .hash_password(password.as_bytes())
        .expect("argon2 with default parameters and a fresh salt cannot fail")
        .to_string()
}

/// Checks a password against a stored hash. Slow on purpose, like
/// [`hash_password`].
pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// A hash of a password nobody knows, checked when a login names an unknown
/// user so that the answer takes as long as for a known one.
pub fn decoy_password_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| hash_password(&new_device_secret()))
}

/// A new device secret: 256 random bits, URL-safe base64.
pub fn new_device_secret() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

pub fn hash_device_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Compares a presented secret with a stored hash in constant time.
pub fn device_secret_matches(secret: &str, stored_sha256: &[u8]) -> bool {
    let presented = hash_device_secret(secret);
    presented.len() == stored_sha256.len()
        && presented
            .iter()
            .zip(stored_sha256)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn a_token_of_one_audience_is_refused_by_the_other() {
        let t = Tokens::new(KEY);
        let (admin, _) = t.issue_admin(Uuid::new_v4(), Uuid::new_v4(), Role::Viewer, false);
        let (device, _) = t.issue_device(Uuid::new_v4(), Uuid::new_v4());
        assert!(t.verify_admin(&admin).is_ok());
        assert!(t.verify_device(&device).is_ok());
        assert!(t.verify_device(&admin).is_err());
        assert!(t.verify_admin(&device).is_err());
    }

    #[test]
    fn forged_and_expired_tokens_are_refused() {
        let t = Tokens::new(KEY);
        let other = Tokens::new("another key that is long enough!!");
        let (forged, _) = other.issue_device(Uuid::new_v4(), Uuid::new_v4());
        assert!(matches!(t.verify_device(&forged), Err(TokenError::Invalid)));

        let past = now_s() - 3600;
        let expired = t.sign(&DeviceClaims {
            sub: Uuid::new_v4(),
            tid: Uuid::new_v4(),
            aud: DEVICE_AUDIENCE.into(),
            iss: ISSUER.into(),
            iat: past - 60,
            exp: past,
        });
        assert!(matches!(
            t.verify_device(&expired),
            Err(TokenError::Expired)
        ));
        assert!(t.verify_device("not.a.token").is_err());
    }

    #[test]
    fn passwords_verify_only_against_their_own_hash() {
        let h = hash_password("correct horse");
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("wrong horse", &h));
        assert!(!verify_password("correct horse", "garbage"));
    }

    #[test]
    fn device_secrets_are_random_and_checked_by_hash() {
        let a = new_device_secret();
        assert_ne!(a, new_device_secret());
        assert_eq!(URL_SAFE_NO_PAD.decode(&a).unwrap().len(), 32);
        let stored = hash_device_secret(&a);
        assert!(device_secret_matches(&a, &stored));
        assert!(!device_secret_matches("guess", &stored));
    }
}
