//! C2SP signed notes (<https://c2sp.org/signed-note>) with Ed25519 keys: the encoding of
//! daily anchors, readable by standard transparency-log tooling and witnesses.
//!
//! ```text
//! <text: one or more lines, each ending in \n>
//! \n
//! — <key name> <base64(key id (4 bytes) ‖ Ed25519 signature (64 bytes))>\n      (one or more)
//! ```
//!
//! The signature is over the text exactly (every byte up to and including its last `\n`).
//! The key id is the first four bytes of SHA-256(key name ‖ `\n` ‖ 0x01 ‖ public key).
//! Keys are written as the Go `note` package writes them:
//!
//! - verifier key: `<name>+<key id, 8 hex>+<base64(0x01 ‖ public key)>`
//! - signer key: `PRIVATE+KEY+<name>+<key id, 8 hex>+<base64(0x01 ‖ seed)>`

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};

use crate::merkle;

/// The algorithm byte of Ed25519 note keys.
const ALG_ED25519: u8 = 0x01;
/// The signature line's leading em dash and space.
const SIG_PREFIX: &str = "\u{2014} ";

/// A public key that checks signatures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifierKey {
    pub name: String,
    pub id: [u8; 4],
    key: VerifyingKey,
}

/// A private key that signs notes.
pub struct SignerKey {
    pub name: String,
    pub id: [u8; 4],
    key: SigningKey,
}

impl std::fmt::Debug for SignerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SignerKey({}+{})", self.name, hex::encode(self.id))
    }
}

fn key_id(name: &str, public: &[u8; 32]) -> [u8; 4] {
    let mut input = Vec::with_capacity(name.len() + 34);
    input.extend_from_slice(name.as_bytes());
    input.push(b'\n');
    input.push(ALG_ED25519);
    input.extend_from_slice(public);
    merkle::sha256(&input)[..4].try_into().expect("four bytes")
}

/// A key name: non-empty, printable, no spaces and no `+` (C2SP signed-note).
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name
            .chars()
            .any(|c| c == '+' || c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "key name {name:?} must be non-empty, without spaces or '+'"
        ));
    }
    Ok(())
}

/// Splits `<name>+<hex id>+<base64(0x01 ‖ 32 bytes)>`, checking the algorithm and length.
fn split_key(s: &str) -> Result<(String, [u8; 4], [u8; 32]), String> {
    let mut parts = s.trim().splitn(3, '+');
    let (Some(name), Some(id), Some(material)) = (parts.next(), parts.next(), parts.next()) else {
        return Err("a key is <name>+<key id>+<base64 key>".into());
    };
    check_name(name)?;
    let mut id_bytes = [0u8; 4];
    hex::decode_to_slice(id, &mut id_bytes).map_err(|_| "the key id is not 8 hex digits")?;
    let raw = B64
        .decode(material)
        .map_err(|e| format!("the key is not base64: {e}"))?;
    if raw.len() != 33 || raw[0] != ALG_ED25519 {
        return Err("not an Ed25519 note key (0x01 followed by 32 bytes)".into());
    }
    Ok((
        name.to_owned(),
        id_bytes,
        raw[1..].try_into().expect("32 bytes"),
    ))
}

impl VerifierKey {
    pub fn parse(s: &str) -> Result<VerifierKey, String> {
        let (name, id, public) = split_key(s)?;
        let key = VerifyingKey::from_bytes(&public).map_err(|e| format!("bad public key: {e}"))?;
        if key_id(&name, &public) != id {
            return Err(format!("the key id of {name:?} does not match its key"));
        }
        Ok(VerifierKey { name, id, key })
    }

    pub fn verify(&self, text: &[u8], signature: &[u8; 64]) -> bool {
        self.key
            .verify_strict(text, &ed25519_dalek::Signature::from_bytes(signature))
            .is_ok()
    }
}

impl std::fmt::Display for VerifierKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut raw = vec![ALG_ED25519];
        raw.extend_from_slice(self.key.as_bytes());
        write!(
            f,
            "{}+{}+{}",
            self.name,
            hex::encode(self.id),
            B64.encode(raw)
        )
    }
}

impl SignerKey {
    /// A new key from 32 random bytes.
    pub fn generate(name: &str) -> Result<SignerKey, String> {
        check_name(name)?;
        let mut seed = [0u8; 32];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut seed))
            .map_err(|e| format!("reading random bytes: {e}"))?;
        Ok(Self::from_seed(name, seed))
    }

    fn from_seed(name: &str, seed: [u8; 32]) -> SignerKey {
        let key = SigningKey::from_bytes(&seed);
        SignerKey {
            name: name.to_owned(),
            id: key_id(name, key.verifying_key().as_bytes()),
            key,
        }
    }

    pub fn parse(s: &str) -> Result<SignerKey, String> {
        let rest = s
            .trim()
            .strip_prefix("PRIVATE+KEY+")
            .ok_or("a signing key starts with PRIVATE+KEY+")?;
        let (name, id, seed) = split_key(rest)?;
        let k = Self::from_seed(&name, seed);
        if k.id != id {
            return Err(format!("the key id of {name:?} does not match its key"));
        }
        Ok(k)
    }

    pub fn verifier(&self) -> VerifierKey {
        VerifierKey {
            name: self.name.clone(),
            id: self.id,
            key: self.key.verifying_key(),
        }
    }

    /// The signer key in its text form (a secret: write it to a file only the daemon reads).
    pub fn to_secret_string(&self) -> String {
        let mut raw = vec![ALG_ED25519];
        raw.extend_from_slice(self.key.as_bytes());
        format!(
            "PRIVATE+KEY+{}+{}+{}",
            self.name,
            hex::encode(self.id),
            B64.encode(raw)
        )
    }

    /// Signs `text` (which ends in `\n`): the whole signed note.
    pub fn sign(&self, text: &str) -> String {
        assert!(text.ends_with('\n'), "a note's text ends with a newline");
        let sig = self.key.sign(text.as_bytes()).to_bytes();
        let mut blob = self.id.to_vec();
        blob.extend_from_slice(&sig);
        format!("{text}\n{SIG_PREFIX}{} {}\n", self.name, B64.encode(blob))
    }
}

/// A note whose signature by a known key checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    pub text: String,
    /// Name and key id of the key whose signature verified.
    pub signed_by: (String, [u8; 4]),
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    #[error("not a signed note: {0}")]
    Malformed(String),
    #[error("no signature by a known key (signed by {0})")]
    UnknownKey(String),
    #[error("the signature of {0} does not verify")]
    BadSignature(String),
}

/// Opens a signed note: its text, if at least one signature is by a key in `known` and every
/// signature by a known key verifies.
pub fn open(note: &str, known: &[VerifierKey]) -> Result<Verified, NoteError> {
    let split = note
        .rfind("\n\n")
        .ok_or_else(|| NoteError::Malformed("no blank line before the signatures".into()))?;
    let (text, sigs) = (&note[..split + 1], &note[split + 2..]);
    if text.len() <= 1 || !sigs.ends_with('\n') {
        return Err(NoteError::Malformed(
            "empty text or unterminated signature".into(),
        ));
    }
    let mut verified = None;
    let mut seen = Vec::new();
    for line in sigs.lines() {
        let rest = line
            .strip_prefix(SIG_PREFIX)
            .ok_or_else(|| NoteError::Malformed(format!("bad signature line {line:?}")))?;
        let (name, blob) = rest
            .split_once(' ')
            .ok_or_else(|| NoteError::Malformed(format!("bad signature line {line:?}")))?;
        let blob = B64
            .decode(blob)
            .map_err(|_| NoteError::Malformed(format!("signature of {name} is not base64")))?;
        if blob.len() < 4 {
            return Err(NoteError::Malformed(format!(
                "signature of {name} is too short"
            )));
        }
        let id: [u8; 4] = blob[..4].try_into().expect("four bytes");
        seen.push(format!("{name}+{}", hex::encode(id)));
        let Some(key) = known.iter().find(|k| k.name == name && k.id == id) else {
            continue;
        };
        let sig: &[u8; 64] = blob[4..]
            .try_into()
            .map_err(|_| NoteError::Malformed(format!("signature of {name} is not 64 bytes")))?;
        if !key.verify(text.as_bytes(), sig) {
            return Err(NoteError::BadSignature(format!(
                "{name}+{}",
                hex::encode(id)
            )));
        }
        verified.get_or_insert((name.to_owned(), id));
    }
    match verified {
        Some(signed_by) => Ok(Verified {
            text: text.to_owned(),
            signed_by,
        }),
        None => Err(NoteError::UnknownKey(if seen.is_empty() {
            "no key".into()
        } else {
            seen.join(", ")
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The example of the Go reference implementation (golang.org/x/mod/sumdb/note).
    const VKEY: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
    const SKEY: &str =
        "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
    const TEXT: &str = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n";
    const SIG_LINE: &str = "\u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";

    #[test]
    fn the_reference_example_signs_and_opens_byte_for_byte() {
        let signer = SignerKey::parse(SKEY).unwrap();
        assert_eq!(signer.verifier().to_string(), VKEY);
        assert_eq!(signer.to_secret_string(), SKEY);
        let note = signer.sign(TEXT);
        assert_eq!(note, format!("{TEXT}\n{SIG_LINE}"));
        let v = VerifierKey::parse(VKEY).unwrap();
        let opened = open(&note, std::slice::from_ref(&v)).unwrap();
        assert_eq!(opened.text, TEXT);
        assert_eq!(opened.signed_by.0, "PeterNeumann");
    }

    #[test]
    fn altered_notes_and_unknown_keys_are_refused() {
        let signer = SignerKey::parse(SKEY).unwrap();
        let v = signer.verifier();
        let note = signer.sign(TEXT);
        let tampered = note.replacen("cryptography", "cryptographY", 1);
        assert!(matches!(
            open(&tampered, std::slice::from_ref(&v)),
            Err(NoteError::BadSignature(_))
        ));
        let other = SignerKey::generate("other").unwrap();
        assert!(matches!(
            open(&note, &[other.verifier()]),
            Err(NoteError::UnknownKey(_))
        ));
        assert!(open("no signatures\n", std::slice::from_ref(&v)).is_err());
        // A key with a wrong id, and a mangled key, do not parse.
        assert!(VerifierKey::parse(&VKEY.replace("c74f20a3", "c74f20a4")).is_err());
        assert!(VerifierKey::parse("PeterNeumann+c74f20a3+AR").is_err());
    }

    #[test]
    fn generated_keys_round_trip() {
        let k = SignerKey::generate("archive.example.com/wormvault").unwrap();
        let again = SignerKey::parse(&k.to_secret_string()).unwrap();
        assert_eq!(again.verifier(), k.verifier());
        assert_eq!(
            VerifierKey::parse(&k.verifier().to_string()).unwrap(),
            k.verifier()
        );
        assert!(SignerKey::generate("has space").is_err());
    }
}
