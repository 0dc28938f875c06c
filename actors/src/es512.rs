//! ES512 (ECDSA on P-521 with SHA-512) for `validate-jwt`, which `jsonwebtoken` (on `ring`)
//! cannot verify: the signature is checked here with RustCrypto's `p521`, and the token's
//! claims are then checked by `jsonwebtoken` with the same issuer, audience, expiry and
//! not-before rules as every other token (see [`claims_token`]).
//!
//! Keys come from an `ec-pem` signing key (a P-521 `PUBLIC KEY` PEM) or a JWKS key with
//! `kty: EC`, `crv: P-521`.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use p521::ecdsa::signature::Verifier as _;
use p521::ecdsa::{Signature, VerifyingKey};

/// A P-521 public key and its `kid` (a JWKS key's).
#[derive(Clone)]
pub struct Es512Key {
    pub kid: Option<String>,
    pub key: VerifyingKey,
}

impl std::fmt::Debug for Es512Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Es512Key")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// A P-521 key in a `PUBLIC KEY` (SubjectPublicKeyInfo) PEM; `None` when the PEM is not one
/// (another curve, RSA, not a PEM): the caller tries the other key types.
pub fn from_pem(pem: &str) -> Option<VerifyingKey> {
    use p521::pkcs8::DecodePublicKey as _;
    let key = p521::PublicKey::from_public_key_pem(pem.trim()).ok()?;
    VerifyingKey::from_affine(*key.as_affine()).ok()
}

/// A JWKS entry with `kty: EC` and `crv: P-521`: `Ok(None)` when it is not one, `Err` with why
/// when it is one that cannot be used.
pub fn from_jwk(item: &serde_json::Value) -> Result<Option<Es512Key>, String> {
    let text = |name: &str| item.get(name).and_then(|v| v.as_str());
    if text("kty") != Some("EC") || text("crv") != Some("P-521") {
        return Ok(None);
    }
    if text("use") == Some("enc") {
        return Err("an encryption key".into());
    }
    if let Some(alg) = text("alg")
        && alg != "ES512"
    {
        return Err(format!("alg {alg} does not fit the key type"));
    }
    let coordinate = |name: &str| -> Result<Vec<u8>, String> {
        let v = B64
            .decode(text(name).ok_or_else(|| format!("no '{name}'"))?)
            .map_err(|e| format!("'{name}': {e}"))?;
        if v.len() != 66 {
            return Err(format!("'{name}' is {} bytes, not 66", v.len()));
        }
        Ok(v)
    };
    let mut sec1 = vec![0x04];
    sec1.extend(coordinate("x")?);
    sec1.extend(coordinate("y")?);
    let key = VerifyingKey::from_sec1_bytes(&sec1).map_err(|_| "not a point of P-521")?;
    Ok(Some(Es512Key {
        kid: text("kid").map(str::to_owned),
        key,
    }))
}

/// The token's header when its `alg` is `ES512`: `Some(kid)`; `None` for any other token.
pub fn es512_kid(token: &str) -> Option<Option<String>> {
    let header = token.split('.').next()?;
    let header: serde_json::Value = serde_json::from_slice(&B64.decode(header).ok()?).ok()?;
    (header.get("alg")?.as_str()? == "ES512").then(|| {
        header
            .get("kid")
            .and_then(|k| k.as_str())
            .map(str::to_owned)
    })
}

/// Whether `key` signed `token` (`header.payload.signature`, the signature 132 bytes r‖s).
pub fn signed_by(token: &str, key: &VerifyingKey) -> Result<bool, String> {
    let (message, signature) = token
        .rsplit_once('.')
        .ok_or("not three dot-separated parts")?;
    if message.matches('.').count() != 1 {
        return Err("not three dot-separated parts".into());
    }
    let signature = B64
        .decode(signature)
        .map_err(|e| format!("signature: {e}"))?;
    let signature =
        Signature::from_slice(&signature).map_err(|_| "not a 132-byte P-521 signature")?;
    Ok(key.verify(message.as_bytes(), &signature).is_ok())
}

/// `{"alg":"HS256"}`, base64url: the header of [`claims_token`].
const CLAIMS_HEADER: &str = "eyJhbGciOiJIUzI1NiJ9";

/// The token's payload under a header `jsonwebtoken` can read, for checking its claims with a
/// `Validation` whose signature check is off (the signature was checked by [`signed_by`]).
pub fn claims_token(token: &str) -> Option<String> {
    let mut parts = token.split('.');
    let payload = parts.nth(1)?;
    Some(format!("{CLAIMS_HEADER}.{payload}.x"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use p521::ecdsa::SigningKey;
    use p521::ecdsa::signature::Signer as _;

    fn signing_key() -> SigningKey {
        let mut secret = [0x55u8; 66];
        secret[0] = 0x01;
        SigningKey::from_slice(&secret).unwrap()
    }

    fn token(key: &SigningKey, header: &str, claims: &str) -> String {
        let message = format!("{}.{}", B64.encode(header), B64.encode(claims));
        let signature: Signature = key.sign(message.as_bytes());
        format!("{message}.{}", B64.encode(signature.to_bytes()))
    }

    #[test]
    fn signatures_are_checked_against_the_key() {
        let key = signing_key();
        let verifying = VerifyingKey::from(&key);
        let t = token(&key, r#"{"alg":"ES512","kid":"k1"}"#, r#"{"sub":"a"}"#);
        assert_eq!(es512_kid(&t), Some(Some("k1".to_owned())));
        assert_eq!(signed_by(&t, &verifying), Ok(true));
        // Another payload under the same signature.
        let (head, rest) = t.split_once('.').unwrap();
        let sig = rest.split_once('.').unwrap().1;
        let forged = format!("{head}.{}.{sig}", B64.encode(r#"{"sub":"b"}"#));
        assert_eq!(signed_by(&forged, &verifying), Ok(false));
        assert!(signed_by("a.b", &verifying).is_err());
        assert!(signed_by(&format!("{head}.x.AAAA"), &verifying).is_err());
        assert_eq!(es512_kid("eyJhbGciOiJIUzI1NiJ9.e30.x"), None);
        assert_eq!(
            claims_token(&t).unwrap(),
            format!("{CLAIMS_HEADER}.{}.x", B64.encode(r#"{"sub":"a"}"#))
        );
    }

    #[test]
    fn keys_from_pem_and_jwk() {
        use p521::pkcs8::EncodePublicKey as _;
        let key = signing_key();
        let public = p521::PublicKey::from_sec1_bytes(
            VerifyingKey::from(&key).to_encoded_point(false).as_bytes(),
        )
        .unwrap();
        let pem = public
            .to_public_key_pem(p521::pkcs8::LineEnding::LF)
            .unwrap();
        assert!(from_pem(&pem).is_some());
        assert!(from_pem("not a key").is_none());
        let point = VerifyingKey::from(&key).to_encoded_point(false);
        let jwk = serde_json::json!({
            "kty": "EC", "crv": "P-521", "kid": "k", "alg": "ES512",
            "x": B64.encode(point.x().unwrap()), "y": B64.encode(point.y().unwrap()),
        });
        let k = from_jwk(&jwk).unwrap().unwrap();
        assert_eq!(k.kid.as_deref(), Some("k"));
        let t = token(&key, r#"{"alg":"ES512"}"#, "{}");
        assert_eq!(signed_by(&t, &k.key), Ok(true));
        let mut bad = jwk.clone();
        bad["alg"] = "ES256".into();
        assert!(from_jwk(&bad).is_err());
        bad["alg"] = "ES512".into();
        bad["x"] = "AAAA".into();
        assert!(from_jwk(&bad).is_err());
        assert_eq!(
            from_jwk(&serde_json::json!({"kty": "EC", "crv": "P-256"}))
                .unwrap()
                .map(|k| k.kid),
            None
        );
    }
}
