//! Software versions: what a version may look like, and when one is newer.
//!
//! A version is 1 to 64 of `A-Z a-z 0-9 . _ + ~ -`: enough for semantic
//! versions, Debian versions and build stamps, and nothing that needs
//! escaping in a path, a header or a log line. Two versions that both parse
//! as semantic versions are ordered as such; any other pair is opaque, and
//! only equality counts: the update check then offers any different
//! version, and never one it knows to be older (seed 003).

use std::cmp::Ordering;

/// The longest version, in bytes.
pub const MAX_VERSION_BYTES: usize = 64;

/// Whether `v` is a version tend accepts.
pub fn is_valid(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= MAX_VERSION_BYTES
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+~-".contains(&b))
}

/// How `a` compares with `b`: by semantic versioning when both parse as
/// semantic versions, else `Equal` for equal strings and `None` (not
/// comparable) for different ones.
pub fn compare(a: &str, b: &str) -> Option<Ordering> {
    match (semver::Version::parse(a), semver::Version::parse(b)) {
        (Ok(a), Ok(b)) => Some(a.cmp_precedence(&b)),
        _ if a == b => Some(Ordering::Equal),
        _ => None,
    }
}

/// Whether the update check offers `candidate` to a device running
/// `running`: a newer semantic version, or, when either is not a semantic
/// version, any different one (seed 003: only a different version, and
/// never one known to be older).
pub fn is_upgrade(candidate: &str, running: &str) -> bool {
    match compare(candidate, running) {
        Some(order) => order == Ordering::Greater,
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_short_and_plain() {
        for ok in ["1.2.3", "2.0.0-rc.1+build.5", "2.3~beta-1", "20261206_1"] {
            assert!(is_valid(ok), "{ok}");
        }
        for bad in ["", "1 2", "1/2", "v1;rm", "é", &"1".repeat(65)] {
            assert!(!is_valid(bad), "{bad}");
        }
    }

    #[test]
    fn semantic_versions_are_ordered_and_others_only_compared_for_equality() {
        assert!(is_upgrade("1.10.0", "1.9.3"));
        assert!(is_upgrade("2.0.0", "2.0.0-rc.1"));
        assert!(!is_upgrade("1.9.3", "1.10.0"), "never older");
        assert!(!is_upgrade("1.2.3", "1.2.3"), "never the same");
        assert!(
            !is_upgrade("1.2.3+b2", "1.2.3+b1"),
            "build metadata does not count"
        );
        assert_eq!(compare("build-7", "build-7"), Some(Ordering::Equal));
        assert_eq!(compare("build-8", "build-7"), None);
        assert!(
            is_upgrade("build-8", "build-7"),
            "opaque: any different version"
        );
        assert!(!is_upgrade("build-7", "build-7"));
        assert!(
            is_upgrade("1.3", "1.2"),
            "not semantic: different is enough"
        );
    }
}
