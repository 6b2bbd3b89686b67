//! Which instructions this agent believes: those the platform signed for
//! this device with a key the agent pins (`signing_keys`).
//!
//! tend-sync and the network between it and the device are not trusted to
//! say what runs here: an instruction is run only when its Ed25519
//! signature, by one of the pinned keys, verifies over its canonical form
//! with this device's id in it ([`tend_proto::signing`]). So a sync server
//! that is compromised, a row altered in the database or an answer altered
//! on the wire can delay work or refuse it, never make this device run
//! something the platform did not sign for it.

use anyhow::{anyhow, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signature, VerifyingKey};
use tend_proto::device::Instruction;
use uuid::Uuid;

/// The pinned keys, by key id.
#[derive(Clone, Debug)]
pub struct Trust {
    keys: Vec<(String, VerifyingKey)>,
    accept_unsigned: bool,
}

impl Trust {
    /// From `signing_keys` (standard base64 of raw 32-byte Ed25519 public
    /// keys) and `accept_unsigned`. Without keys the agent would believe
    /// anything, so that takes `accept_unsigned = true`, said out loud.
    pub fn new(signing_keys: &[String], accept_unsigned: bool) -> anyhow::Result<Trust> {
        if signing_keys.is_empty() && !accept_unsigned {
            bail!(
                "signing_keys is missing: list the platform's instruction-signing public key(s) \
                 (base64 of the raw 32-byte Ed25519 key), or set accept_unsigned = true to run \
                 instructions nobody signed"
            );
        }
        let mut keys = Vec::with_capacity(signing_keys.len());
        for (i, text) in signing_keys.iter().enumerate() {
            let raw: [u8; 32] = STANDARD
                .decode(text.trim())
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| {
                    anyhow!(
                        "signing_keys[{i}] is not the base64 of a raw 32-byte Ed25519 public key"
                    )
                })?;
            let key = VerifyingKey::from_bytes(&raw)
                .map_err(|_| anyhow!("signing_keys[{i}] is not a valid Ed25519 public key"))?;
            keys.push((tend_proto::signing::key_id(&raw), key));
        }
        Ok(Trust {
            keys,
            accept_unsigned,
        })
    }

    pub fn accepts_unsigned(&self) -> bool {
        self.accept_unsigned
    }

    /// The ids of the pinned keys, for the startup log.
    pub fn key_ids(&self) -> Vec<&str> {
        self.keys.iter().map(|(id, _)| id.as_str()).collect()
    }

    /// Whether `instruction` may run on the device `device_id`; the error
    /// says why not, for the `rejected` report.
    pub fn check(&self, instruction: &Instruction, device_id: Uuid) -> Result<(), String> {
        let (Some(key_id), Some(signature)) = (&instruction.key_id, &instruction.signature) else {
            if self.accept_unsigned {
                return Ok(());
            }
            return Err("it is not signed".into());
        };
        let Some((_, key)) = self.keys.iter().find(|(id, _)| id == key_id) else {
            if self.keys.is_empty() && self.accept_unsigned {
                return Ok(());
            }
            return Err(format!(
                "it is signed by key {:?}, which this agent does not pin (signing_keys)",
                truncated(key_id)
            ));
        };
        let raw: [u8; 64] = STANDARD
            .decode(signature)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or("its signature is not 64 bytes in base64")?;
        let bytes =
            tend_proto::signing::signed_bytes(instruction, device_id).map_err(|e| e.to_string())?;
        key.verify_strict(&bytes, &Signature::from_bytes(&raw))
            .map_err(|_| {
                "its signature does not verify: it was altered after signing, or signed for \
                 another device"
                    .to_owned()
            })
    }
}

/// A key id as a hostile server sent it, cut for the log and the report.
fn truncated(s: &str) -> &str {
    match s.char_indices().nth(32) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use ed25519_dalek::{Signer, SigningKey};

    use super::*;

    const DEVICE: Uuid = Uuid::from_u128(0xa1b2c3d4_0000_4000_8000_00000000000f);

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn pinned(keys: &[&SigningKey]) -> Trust {
        let texts: Vec<String> = keys
            .iter()
            .map(|k| STANDARD.encode(k.verifying_key().as_bytes()))
            .collect();
        Trust::new(&texts, false).unwrap()
    }

    fn signed(by: &SigningKey, for_device: Uuid) -> Instruction {
        let mut i = Instruction {
            id: Uuid::new_v4(),
            kind: "shutdown".into(),
            params: serde_json::json!({}),
            issued_at: Utc::now(),
            expires_at: Utc::now() + chrono::Duration::minutes(10),
            timeout_s: 120,
            trace_id: None,
            key_id: None,
            signature: None,
        };
        let bytes = tend_proto::signing::signed_bytes(&i, for_device).unwrap();
        i.key_id = Some(tend_proto::signing::key_id(by.verifying_key().as_bytes()));
        i.signature = Some(STANDARD.encode(by.sign(&bytes).to_bytes()));
        i
    }

    #[test]
    fn an_instruction_signed_for_this_device_by_a_pinned_key_runs() {
        let (old, new) = (key(1), key(2));
        let trust = pinned(&[&old, &new]);
        assert_eq!(trust.check(&signed(&old, DEVICE), DEVICE), Ok(()));
        assert_eq!(trust.check(&signed(&new, DEVICE), DEVICE), Ok(()));
    }

    #[test]
    fn unsigned_unknown_altered_and_misaddressed_instructions_are_refused() {
        let k = key(1);
        let trust = pinned(&[&k]);

        let mut unsigned = signed(&k, DEVICE);
        unsigned.signature = None;
        assert!(
            trust
                .check(&unsigned, DEVICE)
                .unwrap_err()
                .contains("not signed")
        );

        let stranger = signed(&key(9), DEVICE);
        assert!(
            trust
                .check(&stranger, DEVICE)
                .unwrap_err()
                .contains("does not pin")
        );

        for alter in [
            (|i: &mut Instruction| i.kind = "reboot".into()) as fn(&mut Instruction),
            |i| i.params = serde_json::json!({"x": 1}),
            |i| i.expires_at += chrono::Duration::days(3),
            |i| i.timeout_s += 1,
            |i| i.id = Uuid::new_v4(),
        ] {
            let mut i = signed(&k, DEVICE);
            alter(&mut i);
            assert!(
                trust
                    .check(&i, DEVICE)
                    .unwrap_err()
                    .contains("does not verify")
            );
        }

        let elsewhere = signed(&k, Uuid::new_v4());
        assert!(
            trust
                .check(&elsewhere, DEVICE)
                .unwrap_err()
                .contains("another device")
        );

        let mut garbled = signed(&k, DEVICE);
        garbled.signature = Some("not base64!".into());
        assert!(
            trust
                .check(&garbled, DEVICE)
                .unwrap_err()
                .contains("64 bytes")
        );
    }

    #[test]
    fn without_keys_the_agent_starts_only_when_told_to_accept_unsigned() {
        let e = Trust::new(&[], false).unwrap_err().to_string();
        assert!(e.contains("signing_keys is missing"), "{e}");
        let open = Trust::new(&[], true).unwrap();
        let mut i = signed(&key(1), DEVICE);
        assert_eq!(open.check(&i, DEVICE), Ok(()));
        i.signature = None;
        assert_eq!(open.check(&i, DEVICE), Ok(()));
        // With keys pinned, accept_unsigned still refuses a bad signature.
        let k = key(1);
        let mixed = Trust::new(&[STANDARD.encode(k.verifying_key().as_bytes())], true).unwrap();
        let mut bad = signed(&k, DEVICE);
        bad.kind = "reboot".into();
        assert!(mixed.check(&bad, DEVICE).is_err());
        let mut unsigned = signed(&k, DEVICE);
        unsigned.signature = None;
        assert_eq!(mixed.check(&unsigned, DEVICE), Ok(()));
    }

    #[test]
    fn a_key_that_is_not_32_bytes_of_base64_stops_the_agent() {
        for bad in ["", "abc", &STANDARD.encode([1u8; 31])] {
            let e = Trust::new(&[bad.to_owned()], false)
                .unwrap_err()
                .to_string();
            assert!(e.contains("signing_keys[0]"), "{e}");
        }
    }
}
