//! Tokens, passwords and device secrets.
//!
//! Admin and device tokens are HS256 JWTs with different keys and different
//! audiences: tend-platform alone holds the admin token key, tend-sync alone
//! the device token key (see [`crate::token_key`]), so a token of one kind
//! is refused by the other service. Every token names its key in the `kid`
//! header; the previous keys of a rotation still verify. Admin passwords are argon2id hashes; device secrets are 256
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
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::token_key::{KeyId, TokenKeySet};

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
    /// The user's token generation when the token was issued: a change of
    /// the user (role, password, disabled, removal) bumps it and so ends
    /// every token issued before.
    #[serde(default)]
    pub r#gen: i64,
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

/// A key ring of one kind of token: the current key signs, it and the
/// previous keys verify, each picked by the token's `kid`.
#[derive(Clone)]
struct KeyRing {
    signing: EncodingKey,
    /// HS256 with the current key's `kid`.
    header: Header,
    /// The current key first, then the previous ones: at most five, so a
    /// linear search by `kid` beats any map.
    verifying: Vec<(KeyId, DecodingKey)>,
    validation: Validation,
}

/// Names the key ids only.
impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<&KeyId> = self.verifying.iter().map(|(id, _)| id).collect();
        write!(f, "KeyRing({ids:?})")
    }
}

fn now_s() -> u64 {
    chrono::Utc::now().timestamp().max(0) as u64
}

/// The `kid` of a token's header, without allocating: the header is
/// decoded into a buffer on the stack. `None` for a header that is not
/// base64url JSON of a sane size or names no key.
fn kid_of<'b>(token: &str, buf: &'b mut [u8; 256]) -> Option<&'b str> {
    #[derive(Deserialize)]
    struct KidOnly<'a> {
        #[serde(borrow)]
        kid: Option<&'a str>,
    }
    let encoded = token.split('.').next()?;
    // Larger headers do not fit `buf`; ours are about 70 bytes.
    if encoded.len() > buf.len() * 4 / 3 {
        return None;
    }
    let n = URL_SAFE_NO_PAD.decode_slice(encoded, buf).ok()?;
    serde_json::from_slice::<KidOnly<'b>>(&buf[..n]).ok()?.kid
}

impl KeyRing {
    fn new(keys: &TokenKeySet, audience: &str) -> KeyRing {
        let current = keys.current.expose().as_bytes();
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(keys.current_id().as_str().to_owned());
        let verifying = std::iter::once(&keys.current)
            .chain(&keys.previous)
            .map(|k| {
                let bytes = k.expose().as_bytes();
                (KeyId::of(bytes), DecodingKey::from_secret(bytes))
            })
            .collect();
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_audience(&[audience]);
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
        validation.leeway = 5;
        KeyRing {
            signing: EncodingKey::from_secret(current),
            header,
            verifying,
            validation,
        }
    }

    fn sign<T: Serialize>(&self, claims: &T) -> String {
        jsonwebtoken::encode(&self.header, claims, &self.signing)
            .expect("HS256 signing with an HMAC key cannot fail")
    }

    /// Verifies with the key the token's `kid` names; a token naming no
    /// key, or one this ring does not hold, is invalid.
    fn verify<T: DeserializeOwned>(&self, token: &str) -> Result<T, TokenError> {
        let mut buf = [0u8; 256];
        let kid = kid_of(token, &mut buf).ok_or(TokenError::Invalid)?;
        let (_, key) = self
            .verifying
            .iter()
            .find(|(id, _)| id.matches(kid))
            .ok_or(TokenError::Invalid)?;
        jsonwebtoken::decode::<T>(token, key, &self.validation)
            .map(|d| d.claims)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid,
            })
    }
}

/// Issues and verifies admin tokens: tend-platform's, with the admin token
/// key ([`crate::config::ADMIN_TOKEN_KEY`]).
#[derive(Clone, Debug)]
pub struct AdminTokens(KeyRing);

impl AdminTokens {
    pub fn new(keys: &TokenKeySet) -> Self {
        AdminTokens(KeyRing::new(keys, ADMIN_AUDIENCE))
    }

    pub fn issue(
        &self,
        user: Uuid,
        tenant: Uuid,
        role: Role,
        sys: bool,
        generation: i64,
    ) -> (String, u64) {
        let iat = now_s();
        let ttl = ADMIN_TOKEN_TTL.as_secs();
        let claims = AdminClaims {
            sub: user,
            tid: tenant,
            role,
            sys,
            r#gen: generation,
            aud: ADMIN_AUDIENCE.into(),
            iss: ISSUER.into(),
            iat,
            exp: iat + ttl,
        };
        (self.0.sign(&claims), ttl)
    }

    pub fn verify(&self, token: &str) -> Result<AdminClaims, TokenError> {
        self.0.verify(token)
    }
}

/// Issues and verifies device tokens: tend-sync's, with the device token
/// key ([`crate::config::DEVICE_TOKEN_KEY`]).
#[derive(Clone, Debug)]
pub struct DeviceTokens(KeyRing);

impl DeviceTokens {
    pub fn new(keys: &TokenKeySet) -> Self {
        DeviceTokens(KeyRing::new(keys, DEVICE_AUDIENCE))
    }

    pub fn issue(&self, device: Uuid, tenant: Uuid) -> (String, u64) {
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
        (self.0.sign(&claims), ttl)
    }

    pub fn verify(&self, token: &str) -> Result<DeviceClaims, TokenError> {
        self.0.verify(token)
    }
}

/// Hashes a password with argon2id and a random salt. Slow on purpose:
/// call it from a blocking thread (`web::block`), not an async worker.
/// It allocates argon2's working memory afresh: a service that hashes
/// often uses [`hash_password_in`] with a [`HashMemory`] it keeps.
pub fn hash_password(password: &str) -> String {
    Argon2::default()
        .hash_password(password.as_bytes())
        .expect("argon2 with default parameters and a fresh salt cannot fail")
        .to_string()
}

/// Checks a password against a stored hash. Slow on purpose, like
/// [`hash_password`], and allocating like it.
pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// argon2's working memory (19 MiB with the default parameters), kept by
/// one hashing thread and reused for every hash it computes. Allocated
/// afresh per hash on ever-changing threads, these blocks stay in the
/// allocator's per-thread arenas and the process grows with every burst
/// of logins; kept, the memory of password checks is fixed at one block
/// set per hashing thread.
pub struct HashMemory(Vec<argon2::Block>);

impl HashMemory {
    pub fn new() -> HashMemory {
        HashMemory(vec![
            argon2::Block::default();
            argon2::Params::default().block_count()
        ])
    }

    /// The first `blocks` blocks; grows (once, and for good) only for a
    /// stored hash made with more memory than today's default.
    fn blocks(&mut self, blocks: usize) -> &mut [argon2::Block] {
        if self.0.len() < blocks {
            self.0.resize(blocks, argon2::Block::default());
        }
        &mut self.0[..blocks]
    }
}

impl Default for HashMemory {
    fn default() -> HashMemory {
        HashMemory::new()
    }
}

/// [`hash_password`] in `memory`: the same PHC string, without allocating
/// argon2's blocks.
pub fn hash_password_in(memory: &mut HashMemory, password: &str) -> String {
    use argon2::password_hash::phc::{Output, ParamsString, Salt};
    let argon = Argon2::default();
    let params = argon.params().clone();
    let salt: [u8; 16] = rand::random();
    let mut out = [0u8; argon2::Params::DEFAULT_OUTPUT_LEN];
    argon
        .hash_password_into_with_memory(
            password.as_bytes(),
            &salt,
            &mut out,
            memory.blocks(params.block_count()),
        )
        .expect("argon2 with default parameters and a 16-byte salt cannot fail");
    PasswordHash {
        algorithm: argon2::Algorithm::default().ident(),
        version: Some(argon2::Version::default().into()),
        params: ParamsString::try_from(&params).expect("default parameters serialize"),
        salt: Some(Salt::new(&salt).expect("a 16-byte salt is valid")),
        hash: Some(Output::new(&out).expect("a 32-byte output is valid")),
    }
    .to_string()
}

/// [`verify_password`] in `memory`: the parameters, salt and algorithm
/// come from the stored hash; the comparison is constant-time.
pub fn verify_password_in(memory: &mut HashMemory, password: &str, hash: &str) -> bool {
    use argon2::password_hash::phc::Output;
    let Ok(h) = PasswordHash::new(hash) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (h.salt, h.hash) else {
        return false;
    };
    let Ok(algorithm) = argon2::Algorithm::try_from(h.algorithm.as_str()) else {
        return false;
    };
    let version = match h.version.map(argon2::Version::try_from) {
        None => argon2::Version::default(),
        Some(Ok(v)) => v,
        Some(Err(_)) => return false,
    };
    let Ok(params) = argon2::Params::try_from(&h) else {
        return false;
    };
    let blocks = params.block_count();
    let argon = Argon2::new(algorithm, version, params);
    let mut out = vec![0u8; expected.len()];
    if argon
        .hash_password_into_with_memory(password.as_bytes(), &salt, &mut out, memory.blocks(blocks))
        .is_err()
    {
        return false;
    }
    Output::new(&out).is_ok_and(|got| got == expected)
}

/// A hash of a password nobody knows, checked when a login names an unknown
/// user so that the answer takes as long as for a known one.
pub fn decoy_password_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| hash_password(&new_device_secret()))
}

/// 256 random bits.
pub fn new_nonce() -> [u8; 32] {
    rand::random()
}

/// A new device secret: 256 random bits, URL-safe base64.
pub fn new_device_secret() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

/// What every enrolment token starts with, so that secret scanners (and
/// people) recognise one that leaked into a repository or a log.
pub const ENROLMENT_TOKEN_PREFIX: &str = "tend_enrol_";

/// A new enrolment token: the prefix and 256 random bits. It is stored as
/// [`hash_device_secret`] of the whole string.
pub fn new_enrolment_token() -> String {
    format!("{ENROLMENT_TOKEN_PREFIX}{}", new_device_secret())
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

    use crate::token_key::{TokenKind, parse};

    const KEY: &str = "kq8ZtV3xN0pLw7Hc2Ys9RbF4mJd6Ge1A";
    const OTHER: &str = "Wn5Tq0cYvX8pK3rLm6Bz1Hf9Dj2Ga7Es";

    fn keys(kind: TokenKind, current: &str, previous: &[&str]) -> TokenKeySet {
        parse(kind, Some(current), Some(&previous.join(","))).unwrap()
    }

    fn kid(token: &str) -> Option<String> {
        jsonwebtoken::decode_header(token).unwrap().kid
    }

    #[test]
    fn a_token_of_one_audience_is_refused_by_the_other_even_with_the_same_key() {
        let admin = AdminTokens::new(&keys(TokenKind::Admin, KEY, &[]));
        let device = DeviceTokens::new(&keys(TokenKind::Device, KEY, &[]));
        let (a, _) = admin.issue(Uuid::new_v4(), Uuid::new_v4(), Role::Viewer, false, 0);
        let (d, _) = device.issue(Uuid::new_v4(), Uuid::new_v4());
        assert!(admin.verify(&a).is_ok());
        assert!(device.verify(&d).is_ok());
        assert!(device.verify(&a).is_err());
        assert!(admin.verify(&d).is_err());
    }

    /// What tend-sync holds cannot make a token the platform takes, even
    /// with admin claims and the admin audience.
    #[test]
    fn admin_claims_signed_with_the_device_key_are_refused() {
        let admin = AdminTokens::new(&keys(TokenKind::Admin, KEY, &[]));
        let device_keys = keys(TokenKind::Device, OTHER, &[]);
        let forged = KeyRing::new(&device_keys, ADMIN_AUDIENCE).sign(&AdminClaims {
            sub: Uuid::new_v4(),
            tid: Uuid::new_v4(),
            role: Role::Admin,
            sys: true,
            r#gen: 0,
            aud: ADMIN_AUDIENCE.into(),
            iss: ISSUER.into(),
            iat: now_s(),
            exp: now_s() + 60,
        });
        assert!(matches!(admin.verify(&forged), Err(TokenError::Invalid)));
    }

    #[test]
    fn every_token_names_its_key_and_a_previous_key_still_verifies() {
        let old = AdminTokens::new(&keys(TokenKind::Admin, OTHER, &[]));
        let (old_token, _) = old.issue(Uuid::new_v4(), Uuid::new_v4(), Role::Admin, false, 0);
        assert_eq!(
            kid(&old_token).as_deref(),
            Some(KeyId::of(OTHER.as_bytes()).as_str())
        );

        let rotated = AdminTokens::new(&keys(TokenKind::Admin, KEY, &[OTHER]));
        assert!(rotated.verify(&old_token).is_ok());
        let (new_token, _) = rotated.issue(Uuid::new_v4(), Uuid::new_v4(), Role::Admin, false, 0);
        assert_eq!(
            kid(&new_token).as_deref(),
            Some(KeyId::of(KEY.as_bytes()).as_str())
        );
        assert!(old.verify(&new_token).is_err(), "the old key never signs");

        let retired = AdminTokens::new(&keys(TokenKind::Admin, KEY, &[]));
        assert!(retired.verify(&new_token).is_ok());
        assert!(matches!(
            retired.verify(&old_token),
            Err(TokenError::Invalid)
        ));
    }

    #[test]
    fn a_token_without_a_kid_or_with_an_unknown_or_wrong_kid_is_refused() {
        let set = keys(TokenKind::Device, KEY, &[]);
        let tokens = DeviceTokens::new(&set);
        let claims = DeviceClaims {
            sub: Uuid::new_v4(),
            tid: Uuid::new_v4(),
            aud: DEVICE_AUDIENCE.into(),
            iss: ISSUER.into(),
            iat: now_s(),
            exp: now_s() + 60,
        };
        let secret = EncodingKey::from_secret(KEY.as_bytes());
        let with = |kid: Option<&str>| {
            let mut h = Header::new(Algorithm::HS256);
            h.kid = kid.map(str::to_owned);
            jsonwebtoken::encode(&h, &claims, &secret).unwrap()
        };
        assert!(
            tokens
                .verify(&with(Some(set.current_id().as_str())))
                .is_ok()
        );
        for bad in [
            with(None),
            with(Some("0000000000000000")),
            with(Some(&set.current_id().as_str()[..15])),
        ] {
            assert!(
                matches!(tokens.verify(&bad), Err(TokenError::Invalid)),
                "{bad}"
            );
        }
        // A header too large for the stack buffer, or not JSON at all.
        let huge = format!("{}.e30.sig", URL_SAFE_NO_PAD.encode(vec![b' '; 400]));
        assert!(tokens.verify(&huge).is_err());
        assert!(tokens.verify("not.a.token").is_err());
        assert!(tokens.verify("").is_err());
    }

    #[test]
    fn forged_and_expired_tokens_are_refused() {
        let t = DeviceTokens::new(&keys(TokenKind::Device, KEY, &[]));
        let other = DeviceTokens::new(&keys(TokenKind::Device, OTHER, &[]));
        let (forged, _) = other.issue(Uuid::new_v4(), Uuid::new_v4());
        assert!(matches!(t.verify(&forged), Err(TokenError::Invalid)));

        let past = now_s() - 3600;
        let expired = t.0.sign(&DeviceClaims {
            sub: Uuid::new_v4(),
            tid: Uuid::new_v4(),
            aud: DEVICE_AUDIENCE.into(),
            iss: ISSUER.into(),
            iat: past - 60,
            exp: past,
        });
        assert!(matches!(t.verify(&expired), Err(TokenError::Expired)));
    }

    #[test]
    fn token_keys_stay_out_of_debug_output() {
        let t = AdminTokens::new(&keys(TokenKind::Admin, KEY, &[OTHER]));
        let shown = format!("{t:?}");
        assert!(!shown.contains(KEY) && !shown.contains(OTHER), "{shown}");
        assert!(
            shown.contains(KeyId::of(KEY.as_bytes()).as_str()),
            "{shown}"
        );
    }

    #[test]
    fn passwords_verify_only_against_their_own_hash() {
        let h = hash_password("correct horse");
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("wrong horse", &h));
        assert!(!verify_password("correct horse", "garbage"));

        let mut memory = HashMemory::new();
        let kept = hash_password_in(&mut memory, "correct horse");
        assert!(
            kept.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{kept}"
        );
        assert!(verify_password("correct horse", &kept));
        assert!(verify_password_in(&mut memory, "correct horse", &kept));
        assert!(verify_password_in(&mut memory, "correct horse", &h));
        assert!(!verify_password_in(&mut memory, "wrong horse", &h));
        assert!(!verify_password_in(&mut memory, "correct horse", "garbage"));
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
