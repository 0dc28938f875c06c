//! Configuration signing: the control plane signs what each gateway receives, and gateways check
//! it — on every snapshot and delta result, and on every backup before it is served.
//!
//! A signature is Ed25519 over a domain-separated message binding the configuration to one
//! gateway and one revision:
//!
//! ```text
//! outpost-config-v1\n<gateway>\n<revision>\n<content hash>
//! ```
//!
//! so a configuration cannot be edited (the content hash changes), replayed to another gateway
//! (the name changes) or passed off as another revision. Keys are written `ed25519:<base64>`
//! (standard base64 of the 32-byte public key), in settings, API answers and pin files alike.
//!
//! Rotation: the control plane signs with its newest key only, and every answer also carries the
//! chain of [`KeyEndorsement`]s — each key signed by the key it replaced, over
//! `outpost-key-endorsement-v1\n<new key>`. A gateway trusts a key it was given (configured or
//! pinned) and any key such a key endorsed, so it follows a rotation without losing trust.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::Signer;
use serde::{Deserialize, Serialize};

/// Domain of config signatures; bump it when the message changes meaning.
pub const CONFIG_CONTEXT: &str = "outpost-config-v1";
/// Domain of key endorsements (distinct from configs, so one can never pass for the other).
pub const ENDORSEMENT_CONTEXT: &str = "outpost-key-endorsement-v1";
/// How public keys are written.
pub const KEY_PREFIX: &str = "ed25519:";

/// The control plane's signature over one gateway's configuration at one revision.
/// Empty strings mean unsigned (offline mode, or a control plane that predates signing).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigSignature {
    /// `ed25519:<base64>` of the key that signed.
    pub key: String,
    /// Base64 of the 64-byte Ed25519 signature over [`config_message`].
    pub signature: String,
}

impl ConfigSignature {
    pub fn is_empty(&self) -> bool {
        self.key.is_empty() && self.signature.is_empty()
    }
}

/// "`endorsed_by` vouches for `key`": signed by `endorsed_by` over [`endorsement_message`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyEndorsement {
    pub key: String,
    pub endorsed_by: String,
    pub signature: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigningError {
    #[error("'{0}' is not a config signing key: expected 'ed25519:<base64 of 32 bytes>'")]
    BadKey(String),
    #[error("the configuration carries no control-plane signature")]
    Unsigned,
    #[error("the signature is not base64 of 64 bytes")]
    BadSignatureEncoding,
    #[error(
        "the control-plane signature does not verify (key {key}): the configuration was modified \
         after it was signed, or it was signed for another gateway or revision"
    )]
    BadSignature { key: String },
    #[error("signed by key {key}, which this gateway does not trust (trusted: {trusted})")]
    UntrustedKey { key: String, trusted: String },
}

/// An Ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    /// Parses `ed25519:<base64>`; surrounding spaces are ignored.
    pub fn parse(text: &str) -> Result<PublicKey, SigningError> {
        let bad = || SigningError::BadKey(text.to_owned());
        let b64 = text.trim().strip_prefix(KEY_PREFIX).ok_or_else(bad)?;
        let bytes: [u8; 32] = BASE64
            .decode(b64)
            .map_err(|_| bad())?
            .try_into()
            .map_err(|_| bad())?;
        // Only a point on the curve is a usable key; refuse the others when read, not when used.
        ed25519_dalek::VerifyingKey::from_bytes(&bytes).map_err(|_| bad())?;
        Ok(PublicKey(bytes))
    }

    fn verifying_key(&self) -> ed25519_dalek::VerifyingKey {
        ed25519_dalek::VerifyingKey::from_bytes(&self.0).expect("checked when parsed")
    }

    /// Checks `signature` (base64) over `message`. Strict verification: no malleable or
    /// small-order forms are accepted.
    pub fn verify(&self, message: &[u8], signature: &str) -> Result<(), SigningError> {
        let bytes: [u8; 64] = BASE64
            .decode(signature)
            .map_err(|_| SigningError::BadSignatureEncoding)?
            .try_into()
            .map_err(|_| SigningError::BadSignatureEncoding)?;
        let signature = ed25519_dalek::Signature::from_bytes(&bytes);
        self.verifying_key()
            .verify_strict(message, &signature)
            .map_err(|_| SigningError::BadSignature {
                key: self.to_string(),
            })
    }
}

impl std::fmt::Display for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{KEY_PREFIX}{}", BASE64.encode(self.0))
    }
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

/// The control plane's private signing key. Its `Debug` never shows the secret, and the secret
/// is wiped from memory on drop (ed25519-dalek's `zeroize`).
#[derive(Clone)]
pub struct SigningKey(ed25519_dalek::SigningKey);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey(public: {})", self.public())
    }
}

impl SigningKey {
    /// From 32 random bytes (the caller brings the randomness; this crate does no I/O).
    pub fn from_seed(seed: [u8; 32]) -> SigningKey {
        SigningKey(ed25519_dalek::SigningKey::from_bytes(&seed))
    }

    /// The secret as stored (base64 of the 32-byte seed).
    pub fn to_secret_base64(&self) -> String {
        BASE64.encode(self.0.to_bytes())
    }

    pub fn from_secret_base64(text: &str) -> Result<SigningKey, SigningError> {
        let bad = || SigningError::BadKey("<stored private key>".into());
        let seed: [u8; 32] = BASE64
            .decode(text.trim())
            .map_err(|_| bad())?
            .try_into()
            .map_err(|_| bad())?;
        Ok(SigningKey::from_seed(seed))
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key().to_bytes())
    }

    fn sign(&self, message: &[u8]) -> String {
        BASE64.encode(self.0.sign(message).to_bytes())
    }

    /// Signs `gateway`'s configuration at `revision` with content hash `hash`.
    pub fn sign_config(&self, gateway: &str, revision: u64, hash: &str) -> ConfigSignature {
        ConfigSignature {
            key: self.public().to_string(),
            signature: self.sign(&config_message(gateway, revision, hash)),
        }
    }

    /// This key vouches for `next` (the key replacing it).
    pub fn endorse(&self, next: &PublicKey) -> KeyEndorsement {
        KeyEndorsement {
            key: next.to_string(),
            endorsed_by: self.public().to_string(),
            signature: self.sign(&endorsement_message(next)),
        }
    }
}

pub fn config_message(gateway: &str, revision: u64, hash: &str) -> Vec<u8> {
    format!("{CONFIG_CONTEXT}\n{gateway}\n{revision}\n{hash}").into_bytes()
}

pub fn endorsement_message(key: &PublicKey) -> Vec<u8> {
    format!("{ENDORSEMENT_CONTEXT}\n{key}").into_bytes()
}

/// `trusted` extended with every key the endorsements chain to from it (each endorsement
/// checked with a key already trusted). Returns the extended list, the given keys first.
pub fn endorsed_closure(trusted: &[PublicKey], endorsements: &[KeyEndorsement]) -> Vec<PublicKey> {
    let mut keys = trusted.to_vec();
    // Each pass adds at least one key or stops, so this ends after at most len+1 passes.
    loop {
        let before = keys.len();
        for e in endorsements {
            let (Ok(key), Ok(by)) = (PublicKey::parse(&e.key), PublicKey::parse(&e.endorsed_by))
            else {
                continue;
            };
            if keys.contains(&key) || !keys.contains(&by) {
                continue;
            }
            if by.verify(&endorsement_message(&key), &e.signature).is_ok() {
                keys.push(key);
            }
        }
        if keys.len() == before {
            return keys;
        }
    }
}

/// Checks that `signature` is a valid signature of (`gateway`, `revision`, `hash`) by a key in
/// `trusted` or endorsed (transitively) by one. Returns the key that signed.
pub fn verify_config(
    trusted: &[PublicKey],
    gateway: &str,
    revision: u64,
    hash: &str,
    signature: &ConfigSignature,
    endorsements: &[KeyEndorsement],
) -> Result<PublicKey, SigningError> {
    if signature.is_empty() {
        return Err(SigningError::Unsigned);
    }
    let signer = PublicKey::parse(&signature.key)?;
    let keys = if trusted.contains(&signer) {
        trusted.to_vec()
    } else {
        endorsed_closure(trusted, endorsements)
    };
    if !keys.contains(&signer) {
        return Err(SigningError::UntrustedKey {
            key: signer.to_string(),
            trusted: describe(trusted),
        });
    }
    signer.verify(
        &config_message(gateway, revision, hash),
        &signature.signature,
    )?;
    Ok(signer)
}

/// `a, b` or `none`, for messages.
pub fn describe(keys: &[PublicKey]) -> String {
    if keys.is_empty() {
        return "none".into();
    }
    keys.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> SigningKey {
        SigningKey::from_seed([n; 32])
    }

    #[test]
    fn keys_round_trip_and_bad_keys_are_refused() {
        let k = key(1);
        let text = k.public().to_string();
        assert!(text.starts_with("ed25519:"), "{text}");
        assert_eq!(PublicKey::parse(&format!(" {text} ")).unwrap(), k.public());
        for bad in ["", "ed25519:", "ed25519:AAAA", "rsa:abc", &text[8..]] {
            assert!(PublicKey::parse(bad).is_err(), "{bad:?}");
        }
        let secret = k.to_secret_base64();
        assert_eq!(
            SigningKey::from_secret_base64(&secret).unwrap().public(),
            k.public()
        );
        assert!(
            !format!("{k:?}").contains(&secret),
            "Debug hides the secret"
        );
    }

    #[test]
    fn a_signature_binds_gateway_revision_and_hash() {
        let k = key(1);
        let trusted = [k.public()];
        let sig = k.sign_config("site-a", 7, "abc");
        assert_eq!(
            verify_config(&trusted, "site-a", 7, "abc", &sig, &[]).unwrap(),
            k.public()
        );
        for (gw, rev, hash) in [
            ("site-b", 7, "abc"),
            ("site-a", 8, "abc"),
            ("site-a", 7, "abd"),
        ] {
            assert!(matches!(
                verify_config(&trusted, gw, rev, hash, &sig, &[]),
                Err(SigningError::BadSignature { .. })
            ));
        }
        assert_eq!(
            verify_config(
                &trusted,
                "site-a",
                7,
                "abc",
                &ConfigSignature::default(),
                &[]
            ),
            Err(SigningError::Unsigned)
        );
        let other = key(2).sign_config("site-a", 7, "abc");
        assert!(matches!(
            verify_config(&trusted, "site-a", 7, "abc", &other, &[]),
            Err(SigningError::UntrustedKey { .. })
        ));
        // Claiming a trusted key does not help a signature made with another one.
        let mut forged = other.clone();
        forged.key = k.public().to_string();
        assert!(matches!(
            verify_config(&trusted, "site-a", 7, "abc", &forged, &[]),
            Err(SigningError::BadSignature { .. })
        ));
    }

    #[test]
    fn endorsements_chain_from_a_trusted_key_only() {
        let (k1, k2, k3) = (key(1), key(2), key(3));
        let chain = vec![k1.endorse(&k2.public()), k2.endorse(&k3.public())];
        let sig = k3.sign_config("gw", 1, "h");
        assert_eq!(
            verify_config(&[k1.public()], "gw", 1, "h", &sig, &chain).unwrap(),
            k3.public()
        );
        // An endorsement by an untrusted key is ignored.
        let rogue = key(9);
        let rogue_chain = vec![rogue.endorse(&k3.public())];
        assert!(verify_config(&[k1.public()], "gw", 1, "h", &sig, &rogue_chain).is_err());
        // A relabelled endorsement does not verify.
        let mut relabelled = rogue.endorse(&k3.public());
        relabelled.endorsed_by = k1.public().to_string();
        assert!(verify_config(&[k1.public()], "gw", 1, "h", &sig, &[relabelled]).is_err());
    }
}
