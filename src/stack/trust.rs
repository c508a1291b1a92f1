//! What a layer's record is trusted through when the repository is not: an Ed25519 signature
//! by the converter's key (`convert --sign KEY`), checked against the keys a mount trusts
//! (`-o verify_trust=PUB`, `mount --trust PUB`). Keys are the files OpenSSL writes:
//!
//! ```text
//! openssl genpkey -algorithm ed25519 -out convert.key
//! openssl pkey -in convert.key -pubout -out convert.pub
//! ```
//!
//! The signature covers the record's SHA-256, and the record names the layer's blob digest
//! and diff ID: a signed record cannot be moved to another layer. It is kept beside the record
//! (`.metadata/record.sig`), one line per signature (`ed25519 <base64>`), so that a key can be
//! rolled over by signing with both.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};

use super::record::Record;

/// What is signed: a fixed context, then the record's digest.
fn message(record: &Record) -> Vec<u8> {
    let mut m = b"stratafs layer record v1\n".to_vec();
    m.extend_from_slice(&record.digest());
    m
}

/// What is signed for an image: a context of its own, then the manifest's SHA-256 (which
/// names the config and every layer by digest).
fn manifest_message(manifest: &[u8]) -> Vec<u8> {
    use sha2::Digest as _;
    let mut m = b"stratafs image manifest v1\n".to_vec();
    m.extend_from_slice(&sha2::Sha256::digest(manifest));
    m
}

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("{path}: {why}")]
    Key { path: PathBuf, why: String },
    #[error("{path}: no signature (convert --sign signs them)")]
    Unsigned { path: PathBuf },
    #[error("{path}: not signed by a trusted key")]
    Untrusted { path: PathBuf },
}

/// The DER inside the PEM block `label` of `text`.
fn pem(path: &Path, text: &str, label: &str) -> Result<Vec<u8>, TrustError> {
    let bad = |why: String| TrustError::Key {
        path: path.into(),
        why,
    };
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = text.find(&begin).ok_or_else(|| {
        bad(format!(
            "no '{begin}' block (an Ed25519 key as openssl writes it)"
        ))
    })?;
    let body = &text[start + begin.len()..];
    let stop = body.find(&end).ok_or_else(|| bad(format!("no '{end}'")))?;
    let b64: String = body[..stop].split_whitespace().collect();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| bad(format!("bad base64: {e}")))
}

fn read(path: &Path) -> Result<String, TrustError> {
    std::fs::read_to_string(path).map_err(|e| TrustError::Key {
        path: path.into(),
        why: e.to_string(),
    })
}

/// A converter's private key.
pub struct SigningKey(Ed25519KeyPair);

impl SigningKey {
    pub fn load(path: &Path) -> Result<SigningKey, TrustError> {
        let der = pem(path, &read(path)?, "PRIVATE KEY")?;
        Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der)
            .map(SigningKey)
            .map_err(|e| TrustError::Key {
                path: path.into(),
                why: format!("not an Ed25519 private key: {e}"),
            })
    }

    /// The signature file's line for `record`.
    pub fn sign(&self, record: &Record) -> String {
        self.sign_message(&message(record))
    }

    /// The signature file's line for an image's manifest: which layers make the image.
    pub fn sign_manifest(&self, manifest: &[u8]) -> String {
        self.sign_message(&manifest_message(manifest))
    }

    fn sign_message(&self, msg: &[u8]) -> String {
        let sig = self.0.sign(msg);
        format!(
            "ed25519 {}\n",
            base64::engine::general_purpose::STANDARD.encode(sig.as_ref())
        )
    }

    /// The public half, as `TrustedKeys` holds it.
    pub fn public(&self) -> [u8; 32] {
        self.0
            .public_key()
            .as_ref()
            .try_into()
            .expect("32-byte key")
    }
}

/// SubjectPublicKeyInfo of an Ed25519 key, up to the key itself (RFC 8410).
const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// The keys a mount trusts records signed by.
#[derive(Debug, Clone, Default)]
pub struct TrustedKeys(Vec<[u8; 32]>);

impl TrustedKeys {
    pub fn load(paths: &[PathBuf]) -> Result<TrustedKeys, TrustError> {
        let mut keys = Vec::new();
        for p in paths {
            let der = pem(p, &read(p)?, "PUBLIC KEY")?;
            match der.strip_prefix(&SPKI_PREFIX[..]) {
                Some(k) if k.len() == 32 => keys.push(k.try_into().expect("32")),
                _ => {
                    return Err(TrustError::Key {
                        path: p.clone(),
                        why: "not an Ed25519 public key".into(),
                    });
                }
            }
        }
        Ok(TrustedKeys(keys))
    }

    pub fn from_raw(keys: Vec<[u8; 32]>) -> TrustedKeys {
        TrustedKeys(keys)
    }

    /// Check `record` against the signature file `sig`: one of its lines must be a signature
    /// by one of the keys.
    pub fn check(&self, record: &Record, sig: &Path) -> Result<(), TrustError> {
        self.check_message(&message(record), sig)
    }

    /// Check an image's manifest against its signature file `sig`.
    pub fn check_manifest(&self, manifest: &[u8], sig: &Path) -> Result<(), TrustError> {
        self.check_message(&manifest_message(manifest), sig)
    }

    fn check_message(&self, msg: &[u8], sig: &Path) -> Result<(), TrustError> {
        let text = match std::fs::read_to_string(sig) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(TrustError::Unsigned { path: sig.into() });
            }
            Err(e) => {
                return Err(TrustError::Key {
                    path: sig.into(),
                    why: e.to_string(),
                });
            }
        };
        let sigs = text
            .lines()
            .filter_map(|l| l.strip_prefix("ed25519 "))
            .filter_map(|b| {
                base64::engine::general_purpose::STANDARD
                    .decode(b.trim())
                    .ok()
            });
        for s in sigs {
            if self
                .0
                .iter()
                .any(|k| UnparsedPublicKey::new(&ED25519, k).verify(msg, &s).is_ok())
            {
                return Ok(());
            }
        }
        Err(TrustError::Untrusted { path: sig.into() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SigningKey {
        let rng = ring::rand::SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        SigningKey(Ed25519KeyPair::from_pkcs8(doc.as_ref()).unwrap())
    }

    fn record(dir: &Path, content: &[u8]) -> Record {
        std::fs::write(dir.join("f"), content).unwrap();
        let b = crate::stack::record::build(dir, &|_, _| None, ([1; 32], [2; 32])).unwrap();
        Record::from_vec(b, Path::new("record")).unwrap()
    }

    #[test]
    fn a_signed_record_checks_and_a_changed_one_does_not() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (key(), key());
        let rec = record(d.path(), b"one");
        let sig = d.path().join("record.sig");
        std::fs::write(&sig, a.sign(&rec)).unwrap();
        let trust_a = TrustedKeys::from_raw(vec![a.public()]);
        let trust_b = TrustedKeys::from_raw(vec![b.public()]);
        trust_a.check(&rec, &sig).unwrap();
        assert!(matches!(
            trust_b.check(&rec, &sig),
            Err(TrustError::Untrusted { .. })
        ));
        let other = record(d.path(), b"two");
        assert!(trust_a.check(&other, &sig).is_err());
        // Both keys sign: either one is enough (a key rolled over).
        std::fs::write(&sig, a.sign(&rec) + &b.sign(&rec)).unwrap();
        trust_b.check(&rec, &sig).unwrap();
        std::fs::remove_file(&sig).unwrap();
        assert!(matches!(
            trust_a.check(&rec, &sig),
            Err(TrustError::Unsigned { .. })
        ));
    }
}
