//! What the platform signs of an instruction, and how a signing key is
//! named. The platform signs and the agent verifies the same bytes, built
//! here, so the two can never disagree on them.
//!
//! The signed form is the JSON Canonicalization Scheme (RFC 8785) of
//! `{id, device_id, kind, params, issued_at, expires_at, timeout_s}`:
//! `device_id` is the device the instruction is addressed to (the agent
//! puts its own id there, so an instruction signed for another device does
//! not verify), the rest are the instruction's values, timestamps as the
//! RFC 3339 strings the instruction carries. The signature is Ed25519 over
//! these bytes.

use std::fmt;

use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::device::Instruction;

/// An instruction whose canonical form cannot be built: only a value JSON
/// cannot represent (which serde_json never produces) gets here.
#[derive(Debug)]
pub struct CanonicalError(String);

impl fmt::Display for CanonicalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot canonicalize the instruction: {}", self.0)
    }
}

impl std::error::Error for CanonicalError {}

/// The bytes an instruction's signature covers, for the device `device_id`.
pub fn signed_bytes(instruction: &Instruction, device_id: Uuid) -> Result<Vec<u8>, CanonicalError> {
    let form = serde_json::json!({
        "id": instruction.id,
        "device_id": device_id,
        "kind": instruction.kind,
        "params": instruction.params,
        "issued_at": instruction.issued_at,
        "expires_at": instruction.expires_at,
        "timeout_s": instruction.timeout_s,
    });
    serde_jcs::to_vec(&form).map_err(|e| CanonicalError(e.to_string()))
}

/// A signing key's id: the first 16 hex digits of the SHA-256 of its raw
/// 32-byte Ed25519 public key.
pub fn key_id(public_key: &[u8; 32]) -> String {
    let digest = Sha256::digest(public_key);
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};

    use super::*;

    fn instruction() -> Instruction {
        Instruction {
            id: Uuid::parse_str("6f1c2a3e-0000-4000-8000-000000000001").unwrap(),
            kind: "log_query".into(),
            params: serde_json::json!({"source": "app", "max_lines": 10, "pattern": "é"}),
            issued_at: Utc.with_ymd_and_hms(2026, 12, 7, 10, 0, 0).unwrap()
                + chrono::Duration::microseconds(123_456),
            expires_at: Utc.with_ymd_and_hms(2026, 12, 8, 10, 0, 0).unwrap(),
            timeout_s: 300,
            trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".into()),
            key_id: Some("0011223344556677".into()),
            signature: Some("AAAA".into()),
        }
    }

    #[test]
    fn the_signed_form_is_canonical_json_of_the_signed_fields_only() {
        let device = Uuid::parse_str("a1b2c3d4-0000-4000-8000-00000000000f").unwrap();
        let bytes = signed_bytes(&instruction(), device).unwrap();
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            "{\"device_id\":\"a1b2c3d4-0000-4000-8000-00000000000f\",\
             \"expires_at\":\"2026-12-08T10:00:00Z\",\
             \"id\":\"6f1c2a3e-0000-4000-8000-000000000001\",\
             \"issued_at\":\"2026-12-07T10:00:00.123456Z\",\
             \"kind\":\"log_query\",\
             \"params\":{\"max_lines\":10,\"pattern\":\"é\",\"source\":\"app\"},\
             \"timeout_s\":300}"
        );
    }

    #[test]
    fn the_form_changes_with_the_device_and_not_with_the_trace_or_signature() {
        let a = Uuid::new_v4();
        let mut other = instruction();
        other.trace_id = None;
        other.signature = None;
        assert_eq!(
            signed_bytes(&instruction(), a).unwrap(),
            signed_bytes(&other, a).unwrap()
        );
        assert_ne!(
            signed_bytes(&instruction(), a).unwrap(),
            signed_bytes(&instruction(), Uuid::new_v4()).unwrap()
        );
    }

    #[test]
    fn a_key_id_is_sixteen_hex_digits_of_the_public_key_digest() {
        // SHA-256 of 32 zero bytes begins 66687aadf862bd77.
        assert_eq!(key_id(&[0u8; 32]), "66687aadf862bd77");
    }
}
