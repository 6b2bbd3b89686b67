//! The keys that sign tokens: one per job, checked at start, rotatable.
//!
//! tend-platform holds the admin token key alone and tend-sync the device
//! token key alone, so nothing the internet-facing sync service holds can
//! produce an admin token. Each key has an id (`kid`), the first 16 hex
//! digits of the SHA-256 of its bytes, which every token carries in its
//! header: after a rotation the previous keys still verify the tokens they
//! signed (picked by `kid`), and only the current key signs.
//!
//! A key is refused at start when it is short, plainly low in entropy, or
//! a value published in tend's own files (see [`check`]).

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256};

use crate::config::Secret;

/// The shortest key taken: HS256 keys shorter than the hash output (32
/// bytes) weaken the MAC.
pub const MIN_CHARS: usize = 32;

/// The fewest distinct characters a key may have. Random keys of 32 hex
/// digits, the smallest common kind, have fewer than 8 about once in 10^8.
pub const MIN_DISTINCT: usize = 8;

/// At most this many previous keys: one covers a rotation, a few cover
/// rotations that overlap; verifying picks among them at every request.
pub const MAX_PREVIOUS: usize = 4;

/// Which tokens a key signs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// Admin tokens: signed and verified by tend-platform alone.
    Admin,
    /// Device tokens: signed and verified by tend-sync alone.
    Device,
}

impl TokenKind {
    /// The variable of the current key.
    pub fn var(self) -> &'static str {
        match self {
            TokenKind::Admin => crate::config::ADMIN_TOKEN_KEY,
            TokenKind::Device => crate::config::DEVICE_TOKEN_KEY,
        }
    }

    /// The variable of the previous keys.
    pub fn previous_var(self) -> &'static str {
        match self {
            TokenKind::Admin => crate::config::ADMIN_TOKEN_PREVIOUS_KEYS,
            TokenKind::Device => crate::config::DEVICE_TOKEN_PREVIOUS_KEYS,
        }
    }

    /// The service that holds this key.
    pub fn holder(self) -> &'static str {
        match self {
            TokenKind::Admin => "tend-platform",
            TokenKind::Device => "tend-sync",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::Admin => "admin",
            TokenKind::Device => "device",
        }
    }
}

/// A key's id: 16 lower-case hex digits, the start of the SHA-256 of the
/// key's bytes. It names the key in token headers and logs and reveals
/// nothing usable about it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId([u8; 16]);

impl KeyId {
    pub fn of(key: &[u8]) -> KeyId {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let digest = Sha256::digest(key);
        let mut id = [0u8; 16];
        for (pair, byte) in id.chunks_exact_mut(2).zip(digest.iter()) {
            pair[0] = HEX[usize::from(byte >> 4)];
            pair[1] = HEX[usize::from(byte & 0x0f)];
        }
        KeyId(id)
    }

    pub fn as_str(&self) -> &str {
        // Built from ASCII hex digits only.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// Whether `kid`, as a token header spells it, names this key.
    pub fn matches(&self, kid: &str) -> bool {
        kid.as_bytes() == self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({})", self.as_str())
    }
}

/// One service's token keys, as configured: the current key signs and
/// verifies, the previous ones only verify.
#[derive(Clone)]
pub struct TokenKeySet {
    pub kind: TokenKind,
    pub current: Secret,
    pub previous: Vec<Secret>,
}

impl TokenKeySet {
    /// The current key's id.
    pub fn current_id(&self) -> KeyId {
        KeyId::of(self.current.expose().as_bytes())
    }

    /// The previous keys' ids, in the configured order.
    pub fn previous_ids(&self) -> Vec<KeyId> {
        self.previous
            .iter()
            .map(|k| KeyId::of(k.expose().as_bytes()))
            .collect()
    }
}

/// Shows the key ids only.
impl fmt::Debug for TokenKeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenKeySet")
            .field("kind", &self.kind)
            .field("current", &self.current_id())
            .field("previous", &self.previous_ids())
            .finish()
    }
}

/// Reads `kind`'s keys: the current one from `current` (required), the
/// previous ones from the comma-separated `previous`. The error names the
/// variable at fault and never shows a key.
pub fn parse(
    kind: TokenKind,
    current: Option<&str>,
    previous: Option<&str>,
) -> Result<TokenKeySet, (&'static str, String)> {
    let var = kind.var();
    let current = current.ok_or_else(|| {
        (
            var,
            format!(
                "required: the key of {} tokens, held by {} alone \
                 (generate one with `openssl rand -base64 48`)",
                kind.as_str(),
                kind.holder()
            ),
        )
    })?;
    check(current).map_err(|why| (var, why))?;
    if current.contains(',') {
        return Err((
            var,
            format!(
                "must not contain a comma, so that it can move to {} at the next rotation",
                kind.previous_var()
            ),
        ));
    }

    let pvar = kind.previous_var();
    let mut keys: Vec<&str> = vec![current];
    for (n, key) in previous
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .enumerate()
    {
        check(key).map_err(|why| (pvar, format!("key {} of the list {why}", n + 1)))?;
        if keys.contains(&key) {
            return Err((
                pvar,
                format!(
                    "key {} of the list is {}",
                    n + 1,
                    if key == current {
                        format!("the current key ({var}) too")
                    } else {
                        "listed twice".to_owned()
                    }
                ),
            ));
        }
        keys.push(key);
    }
    if keys.len() - 1 > MAX_PREVIOUS {
        return Err((
            pvar,
            format!(
                "at most {MAX_PREVIOUS} keys: remove those older than the longest token lifetime"
            ),
        ));
    }
    Ok(TokenKeySet {
        kind,
        current: Secret::new(current),
        previous: keys[1..].iter().map(|k| Secret::new(*k)).collect(),
    })
}

/// The files of tend that show example values, compiled in: a key found in
/// any of them (or whose base64 form is, as in a Secret's `data:`) is
/// public and refused. A value newly published in one of them is refused
/// from the next build on.
pub const PUBLISHED: &[(&str, &str)] = &[
    ("README.md", include_str!("../../../README.md")),
    (
        "deploy/k8s/base/secret.example.yaml",
        include_str!("../../../deploy/k8s/base/secret.example.yaml"),
    ),
    (
        "deploy/k8s/overlays/dev/kustomization.yaml",
        include_str!("../../../deploy/k8s/overlays/dev/kustomization.yaml"),
    ),
    (
        "deploy/k8s/overlays/prod/kustomization.yaml",
        include_str!("../../../deploy/k8s/overlays/prod/kustomization.yaml"),
    ),
    // The single key's example and dev values of earlier releases: public
    // for good, and perhaps still in someone's Secret.
    (
        "earlier example files",
        "replace-with-at-least-32-random-characters\n\
         dev-only-jwt-secret-do-not-use-in-production\n",
    ),
];

/// Checks one key, returning why it is refused. The rules:
///
/// 1. at least [`MIN_CHARS`] characters;
/// 2. at least [`MIN_DISTINCT`] distinct characters;
/// 3. no short pattern repeated: at least three quarters of its
///    3-character sequences are distinct (`passwordpassword…`,
///    `0123456789abcdef0123456789abcdef`);
/// 4. not a run: at most two thirds of the steps between neighbouring
///    characters go to the same, the next or the previous character
///    (`abcdefghijklmnopqrstuvwxyz012345`);
/// 5. not published in tend's own files ([`PUBLISHED`]).
///
/// Keys from `openssl rand -base64 48` or `openssl rand -hex 32` pass: the
/// rules refuse what a person typed or copied, not what a generator made.
pub fn check(key: &str) -> Result<(), String> {
    const GENERATE: &str = "generate one with `openssl rand -base64 48`";
    let chars: Vec<char> = key.chars().collect();
    if chars.len() < MIN_CHARS {
        return Err(format!(
            "must be at least {MIN_CHARS} characters long ({GENERATE})"
        ));
    }
    let mut distinct = chars.clone();
    distinct.sort_unstable();
    distinct.dedup();
    if distinct.len() < MIN_DISTINCT {
        return Err(format!(
            "is low in entropy: only {} distinct characters, at least {MIN_DISTINCT} needed ({GENERATE})",
            distinct.len()
        ));
    }
    let mut triples: Vec<&[char]> = chars.windows(3).collect();
    let all = triples.len();
    triples.sort_unstable();
    triples.dedup();
    if triples.len() * 4 < all * 3 {
        return Err(format!(
            "is low in entropy: a short pattern repeated ({GENERATE})"
        ));
    }
    let steps = chars.len() - 1;
    let small = chars
        .windows(2)
        .filter(|w| (w[0] as i64 - w[1] as i64).abs() <= 1)
        .count();
    if small * 3 > steps * 2 {
        return Err(format!(
            "is low in entropy: a run of neighbouring characters ({GENERATE})"
        ));
    }
    if let Some(file) = published_in(key) {
        return Err(format!(
            "is an example value published in tend's {file}: anyone can sign tokens with it ({GENERATE})"
        ));
    }
    Ok(())
}

/// The file of [`PUBLISHED`] that shows `key`, as text or as base64.
fn published_in(key: &str) -> Option<&'static str> {
    found_in(key, PUBLISHED)
}

fn found_in<'a>(key: &str, files: &[(&'a str, &str)]) -> Option<&'a str> {
    let encoded = STANDARD.encode(key);
    files
        .iter()
        .find(|(_, text)| text.contains(key) || text.contains(&encoded))
        .map(|(file, _)| *file)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "kq8ZtV3xN0pLw7Hc2Ys9RbF4mJd6Ge1A";
    const OTHER: &str = "Wn5Tq0cYvX8pK3rLm6Bz1Hf9Dj2Ga7Es";

    fn random_key(alphabet: &[u8], len: usize) -> String {
        (0..len)
            .map(|_| alphabet[rand::random_range(0..alphabet.len())] as char)
            .collect()
    }

    #[test]
    fn a_key_id_is_sixteen_hex_digits_of_the_keys_sha256() {
        // SHA-256("abc") = ba7816bf8f01cfea414140de5dae2223…
        assert_eq!(KeyId::of(b"abc").as_str(), "ba7816bf8f01cfea");
        assert!(KeyId::of(b"abc").matches("ba7816bf8f01cfea"));
        assert!(!KeyId::of(b"abc").matches("ba7816bf8f01cfeb"));
        assert!(!KeyId::of(b"abc").matches("ba7816bf8f01cfea0"));
        assert_ne!(KeyId::of(GOOD.as_bytes()), KeyId::of(OTHER.as_bytes()));
    }

    #[test]
    fn generated_keys_pass() {
        let hex = b"0123456789abcdef";
        let b64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        for _ in 0..2000 {
            for key in [
                random_key(hex, 32),
                random_key(hex, 64),
                random_key(b64, 64),
            ] {
                assert_eq!(check(&key), Ok(()), "{key}");
            }
        }
        assert_eq!(check(GOOD), Ok(()));
        assert_eq!(check("correct horse battery staple 2026"), Ok(()));
    }

    #[test]
    fn short_and_low_entropy_keys_are_refused_with_their_reason() {
        for (key, why) in [
            ("kq8ZtV3xN0pLw7Hc2Ys9RbF4mJd6Ge1", "at least 32 characters"),
            (
                "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaab",
                "2 distinct characters",
            ),
            (
                "passwordpasswordpasswordpassword1",
                "a short pattern repeated",
            ),
            (
                "0123456789abcdef0123456789abcdef",
                "a short pattern repeated",
            ),
            (
                "dev-only-do-not-use-dev-only-do-not-use",
                "a short pattern repeated",
            ),
            ("abcdefghijklmnopqrstuvwxyz012345", "a run of neighbouring"),
            ("ZYXWVUTSRQPONMLKJIHGFEDCBA987654", "a run of neighbouring"),
        ] {
            let e = check(key).unwrap_err();
            assert!(e.contains(why), "{key}: {e}");
            assert!(!e.contains(key), "the reason shows the key: {e}");
        }
    }

    /// The value `name` has in an example file (`name: "value"` or
    /// `name=value`).
    fn example_value<'a>(text: &'a str, name: &str) -> Option<&'a str> {
        text.lines().find_map(|line| {
            let line = line.trim().trim_start_matches("- ");
            let rest = line
                .strip_prefix(name)?
                .trim_start()
                .strip_prefix([':', '='])?;
            Some(rest.trim().trim_matches(['"', '\'']))
        })
    }

    #[test]
    fn the_example_secrets_token_keys_are_refused_as_published() {
        let (file, text) = PUBLISHED[1];
        for name in ["admin-token-key", "device-token-key"] {
            let value =
                example_value(text, name).unwrap_or_else(|| panic!("{file} shows no {name}"));
            let why = check(value).unwrap_err();
            assert!(why.contains("published in tend's"), "{name}: {why}");
        }
        // The single key's values of earlier releases.
        for old in [
            "replace-with-at-least-32-random-characters",
            "dev-only-jwt-secret-do-not-use-in-production",
        ] {
            let why = check(old).unwrap_err();
            assert!(why.contains("earlier example files"), "{why}");
        }
    }

    /// Whatever long value an example shows, a service refuses it.
    #[test]
    fn every_long_value_in_the_examples_is_refused() {
        let mut seen = 0;
        for (file, text) in PUBLISHED {
            for word in text.split(|c: char| c.is_whitespace() || "\"'`=,|()".contains(c)) {
                if word.chars().count() >= MIN_CHARS {
                    seen += 1;
                    assert!(check(word).is_err(), "{file}: {word} is accepted");
                }
            }
        }
        assert!(seen > 0, "no long value found in the published files");
    }

    #[test]
    fn a_key_shown_in_base64_counts_as_published() {
        let encoded = STANDARD.encode(GOOD);
        let secret = format!("data:\n  admin-token-key: {encoded}\n");
        let files = [("secret.yaml", secret.as_str())];
        assert_eq!(found_in(GOOD, &files), Some("secret.yaml"));
        assert_eq!(found_in(OTHER, &files), None);
        assert_eq!(published_in(GOOD), None);
    }

    #[test]
    fn parse_reads_the_current_and_previous_keys_and_names_the_variable() {
        let set = parse(TokenKind::Admin, Some(GOOD), Some(&format!(" {OTHER} ,"))).unwrap();
        assert_eq!(set.current.expose(), GOOD);
        assert_eq!(set.previous.len(), 1);
        assert_eq!(set.previous_ids(), vec![KeyId::of(OTHER.as_bytes())]);

        let (var, why) = parse(TokenKind::Device, None, None).unwrap_err();
        assert_eq!(var, "TEND_DEVICE_TOKEN_KEY");
        assert!(why.contains("required"), "{why}");

        let (var, _) = parse(TokenKind::Admin, Some(GOOD), Some("short")).unwrap_err();
        assert_eq!(var, "TEND_ADMIN_TOKEN_PREVIOUS_KEYS");

        let (var, why) = parse(TokenKind::Admin, Some(GOOD), Some(GOOD)).unwrap_err();
        assert_eq!(var, "TEND_ADMIN_TOKEN_PREVIOUS_KEYS");
        assert!(why.contains("current key"), "{why}");

        let with_comma = "kq8ZtV3xN0pLw7Hc2Ys9,RbF4mJd6Ge1A";
        let (var, why) = parse(TokenKind::Admin, Some(with_comma), None).unwrap_err();
        assert_eq!(var, "TEND_ADMIN_TOKEN_KEY");
        assert!(why.contains("comma"), "{why}");

        let many: Vec<String> = (0..=MAX_PREVIOUS)
            .map(|_| random_key(b"0123456789abcdef", 64))
            .collect();
        let (var, _) = parse(TokenKind::Admin, Some(GOOD), Some(&many.join(","))).unwrap_err();
        assert_eq!(var, "TEND_ADMIN_TOKEN_PREVIOUS_KEYS");
    }

    #[test]
    fn debug_output_shows_key_ids_never_keys() {
        let set = parse(TokenKind::Device, Some(GOOD), Some(OTHER)).unwrap();
        let shown = format!("{set:?}");
        assert!(!shown.contains(GOOD) && !shown.contains(OTHER), "{shown}");
        assert!(
            shown.contains(KeyId::of(GOOD.as_bytes()).as_str()),
            "{shown}"
        );
    }
}
