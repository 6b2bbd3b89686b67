//! The platform's instruction-signing key (`TEND_SIGNING_KEY_FILE`).
//!
//! Every instruction a device receives is signed with it when the command
//! is queued, over [`tend_proto::signing::signed_bytes`]; agents pin the
//! public key and run nothing that does not verify. The key lives with
//! tend-platform alone: tend-sync, which faces the devices, serves the
//! signatures but cannot make one.

use std::fmt;
use std::path::Path;

use anyhow::{Context, anyhow};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::pkcs8::DecodePrivateKey;
use ed25519_dalek::{Signer, SigningKey};
use tend_proto::device::Instruction;
use uuid::Uuid;

pub const SIGNING_KEY_FILE: &str = "TEND_SIGNING_KEY_FILE";

/// An Ed25519 private key and its id.
pub struct InstructionSigner {
    key: SigningKey,
    key_id: String,
}

impl fmt::Debug for InstructionSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InstructionSigner({})", self.key_id)
    }
}

/// Who signed an instruction, and the signature (standard base64).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    pub key_id: String,
    pub signature: String,
}

impl InstructionSigner {
    /// Reads a PKCS#8 PEM Ed25519 private key, as `openssl genpkey
    /// -algorithm ed25519` writes it. Errors name the variable and the file
    /// but never quote the file's contents.
    pub fn load(path: &Path) -> anyhow::Result<InstructionSigner> {
        let pem = std::fs::read_to_string(path)
            .with_context(|| format!("{SIGNING_KEY_FILE}: cannot read {}", path.display()))?;
        InstructionSigner::from_pem(&pem).map_err(|e| {
            anyhow!(
                "{SIGNING_KEY_FILE}: {} is not an Ed25519 private key in PKCS#8 PEM \
                 (make one with `openssl genpkey -algorithm ed25519`): {e}",
                path.display()
            )
        })
    }

    /// Makes a new key at `path` (mode 0600; an existing file is never
    /// replaced) and answers it.
    pub fn create(path: &Path) -> anyhow::Result<InstructionSigner> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;

        use ed25519_dalek::pkcs8::EncodePrivateKey;
        use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;

        let key = SigningKey::from_bytes(&rand::random::<[u8; 32]>());
        let pem = key
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| anyhow!("cannot encode the new key: {e}"))?;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        file.write_all(pem.as_bytes())
            .and_then(|()| file.sync_all())
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(InstructionSigner::from_key(key))
    }

    pub fn from_pem(pem: &str) -> Result<InstructionSigner, String> {
        let key = SigningKey::from_pkcs8_pem(pem).map_err(|e| e.to_string())?;
        Ok(InstructionSigner::from_key(key))
    }

    pub fn from_key(key: SigningKey) -> InstructionSigner {
        let key_id = tend_proto::signing::key_id(key.verifying_key().as_bytes());
        InstructionSigner { key, key_id }
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The public key as agents pin it (`signing_keys`): standard base64 of
    /// the raw 32 bytes.
    pub fn public_key_base64(&self) -> String {
        STANDARD.encode(self.key.verifying_key().as_bytes())
    }

    /// A device secret derived from `nonce` and `index`, which only this
    /// key can derive: SHA-256 of the (deterministic) Ed25519 signature of
    /// a message no instruction can be, URL-safe base64 as
    /// [`crate::auth::new_device_secret`]. A bulk registration with an
    /// `Idempotency-Key` makes its secrets this way, so that a replay can
    /// show them again while the database holds only the nonce.
    pub fn derive_secret(&self, nonce: &[u8], index: u32) -> String {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        use sha2::{Digest, Sha256};
        let mut msg = b"tend idempotent device secret\0".to_vec();
        msg.extend_from_slice(nonce);
        msg.extend_from_slice(&index.to_be_bytes());
        URL_SAFE_NO_PAD.encode(Sha256::digest(self.key.sign(&msg).to_bytes()))
    }

    /// The signatures of many instructions, each for its device, in order.
    /// An Ed25519 signature and its canonical JSON take tens of
    /// microseconds: a batch for a fleet would spend seconds on one core,
    /// so the work is split over every core. Blocking: call it from a
    /// blocking thread.
    pub fn sign_all(&self, items: &[(Instruction, Uuid)]) -> anyhow::Result<Vec<String>> {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let chunk = items.len().div_ceil(threads).max(1);
        std::thread::scope(|scope| {
            let parts: Vec<_> = items
                .chunks(chunk)
                .map(|part| {
                    scope.spawn(move || {
                        part.iter()
                            .map(|(i, device)| self.sign(i, *device).map(|s| s.signature))
                            .collect::<anyhow::Result<Vec<String>>>()
                    })
                })
                .collect();
            let mut all = Vec::with_capacity(items.len());
            for part in parts {
                let signed = part
                    .join()
                    .map_err(|_| anyhow!("a signing thread panicked"))??;
                all.extend(signed);
            }
            Ok(all)
        })
    }

    /// Signs `instruction` for the device `device_id`.
    pub fn sign(&self, instruction: &Instruction, device_id: Uuid) -> anyhow::Result<Signed> {
        let bytes = tend_proto::signing::signed_bytes(instruction, device_id)?;
        Ok(Signed {
            key_id: self.key_id.clone(),
            signature: STANDARD.encode(self.key.sign(&bytes).to_bytes()),
        })
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use ed25519_dalek::pkcs8::EncodePrivateKey;
    use ed25519_dalek::{Signature, Verifier};

    use super::*;

    fn instruction() -> Instruction {
        Instruction {
            id: Uuid::new_v4(),
            kind: "reboot".into(),
            params: serde_json::json!({}),
            issued_at: Utc::now(),
            expires_at: Utc::now(),
            timeout_s: 60,
            trace_id: None,
            key_id: None,
            signature: None,
        }
    }

    #[test]
    fn a_pem_key_signs_what_its_public_key_verifies() {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let pem = key
            .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
            .unwrap();
        let signer = InstructionSigner::from_pem(&pem).unwrap();
        assert_eq!(signer.key_id().len(), 16);
        let (i, device) = (instruction(), Uuid::new_v4());
        let signed = signer.sign(&i, device).unwrap();
        let raw: [u8; 64] = STANDARD
            .decode(&signed.signature)
            .unwrap()
            .try_into()
            .unwrap();
        let bytes = tend_proto::signing::signed_bytes(&i, device).unwrap();
        key.verifying_key()
            .verify(&bytes, &Signature::from_bytes(&raw))
            .unwrap();
        assert!(!format!("{signer:?}").contains(&STANDARD.encode([7u8; 32])));
    }

    #[test]
    fn a_created_key_is_private_to_its_owner_and_never_replaced() {
        use std::os::unix::fs::PermissionsExt;

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        let made = InstructionSigner::create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            InstructionSigner::load(&path).unwrap().key_id(),
            made.key_id()
        );
        assert!(InstructionSigner::create(&path).is_err());
        assert_eq!(
            InstructionSigner::load(&path).unwrap().key_id(),
            made.key_id()
        );
    }

    #[test]
    fn a_file_that_is_not_a_key_is_refused_by_name_without_its_contents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        std::fs::write(&path, "not a key but a secret-looking line").unwrap();
        let e = InstructionSigner::load(&path).unwrap_err().to_string();
        assert!(e.starts_with(SIGNING_KEY_FILE), "{e}");
        assert!(!e.contains("secret-looking"), "{e}");
        let e = InstructionSigner::load(&dir.path().join("missing.pem"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot read"), "{e}");
    }
}
