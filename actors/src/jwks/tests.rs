use std::time::{Duration, Instant};

use jsonwebtoken::Algorithm;
use serde_json::json;

use super::state::{
    DocumentError, MIN_REFRESH_GAP, RETRY_AFTER_FAILURE, Schedule, jwks_uri, parse_jwks,
};
use super::{JwksRegistry, Location, SourceId};

// RFC 7517 A.1 and RFC 8037 A.2 public keys.
const P256_X: &str = "MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4";
const P256_Y: &str = "4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM";
const RSA_N: &str = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
const ED_X: &str = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";

#[test]
fn usable_keys_are_read_and_the_rest_skipped_with_reasons() {
    let doc = json!({"keys": [
        {"kty": "RSA", "kid": "r1", "n": RSA_N, "e": "AQAB"},
        {"kty": "RSA", "kid": "r2", "n": RSA_N, "e": "AQAB", "alg": "PS256", "use": "sig"},
        {"kty": "EC", "kid": "e1", "crv": "P-256", "x": P256_X, "y": P256_Y},
        {"kty": "OKP", "kid": "d1", "crv": "Ed25519", "x": ED_X},
        {"kty": "EC", "kid": "enc", "crv": "P-256", "x": P256_X, "y": P256_Y, "use": "enc"},
        {"kty": "oct", "kid": "secret", "k": "c2VjcmV0"},
        {"kty": "EC", "kid": "p521", "crv": "P-521", "x": P256_X, "y": P256_Y},
        {"kty": "EC", "kid": "es512", "crv": "P-521", "x": P256_X, "y": P256_Y, "alg": "ES512"},
        {"kty": "RSA", "kid": "wrong", "n": RSA_N, "e": "AQAB", "alg": "ES256"},
    ]});
    let (set, skipped) = parse_jwks(doc.to_string().as_bytes()).unwrap();
    let kids: Vec<_> = set.keys.iter().map(|k| k.kid.as_deref().unwrap()).collect();
    assert_eq!(kids, ["r1", "r2", "e1", "d1"]);
    assert_eq!(set.keys[0].algorithms.len(), 6);
    assert_eq!(set.keys[1].algorithms, [Algorithm::PS256]);
    assert_eq!(set.keys[2].algorithms, [Algorithm::ES256]);
    assert_eq!(set.keys[3].algorithms, [Algorithm::EdDSA]);
    assert_eq!(skipped.len(), 5, "{skipped:?}");
    assert!(skipped[0].contains("encryption"), "{skipped:?}");
    assert!(skipped[1].contains("symmetric"), "{skipped:?}");
    // P-521 keys are read for ES512; these have P-256 coordinates.
    assert!(skipped[2].contains("32 bytes, not 66"), "{skipped:?}");
    assert!(skipped[3].contains("32 bytes, not 66"), "{skipped:?}");
    assert!(skipped[4].contains("does not fit"), "{skipped:?}");
    // kid must match when both sides have one; a token without kid tries every key.
    assert!(set.keys[2].matches(Algorithm::ES256, Some("e1")));
    assert!(!set.keys[2].matches(Algorithm::ES256, Some("e2")));
    assert!(set.keys[2].matches(Algorithm::ES256, None));
    assert!(!set.keys[2].matches(Algorithm::ES384, None));
}

#[test]
fn documents_without_usable_keys_are_errors() {
    assert!(matches!(parse_jwks(b"nope"), Err(DocumentError::Json(_))));
    assert_eq!(parse_jwks(b"{}").unwrap_err(), DocumentError::NoKeys);
    let only_secret = json!({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}).to_string();
    assert_eq!(
        parse_jwks(only_secret.as_bytes()).unwrap_err(),
        DocumentError::NoUsableKey(1)
    );
}

#[test]
fn the_discovery_document_names_the_key_set() {
    let doc = json!({"issuer": "https://id.example", "jwks_uri": "https://id.example/keys"});
    assert_eq!(
        jwks_uri(doc.to_string().as_bytes()).unwrap(),
        "https://id.example/keys"
    );
    assert_eq!(jwks_uri(b"{}").unwrap_err(), DocumentError::NoJwksUri);
}

#[test]
fn the_schedule_refetches_on_interval_sooner_after_failure_and_limits_on_demand() {
    let t0 = Instant::now();
    let hour = Duration::from_secs(3600);
    let mut s = Schedule::new(hour);
    assert_eq!(s.next_due(), None);
    assert!(s.may_refresh(t0));
    s.attempted(t0, true);
    assert_eq!(s.next_due(), Some(t0 + hour));
    // A regular fetch does not use up the on-demand allowance.
    assert!(s.may_refresh(t0));
    s.attempted(t0, false);
    assert_eq!(s.next_due(), Some(t0 + RETRY_AFTER_FAILURE));
    s.last_on_demand = Some(t0);
    assert!(!s.may_refresh(t0 + MIN_REFRESH_GAP - Duration::from_millis(1)));
    assert!(s.may_refresh(t0 + MIN_REFRESH_GAP));
}

#[test]
fn the_registry_shares_one_source_per_location_and_interval() {
    let r = JwksRegistry::detached();
    let id = |u: &str, secs| SourceId {
        location: Location::Jwks(u.into()),
        interval: Duration::from_secs(secs),
    };
    let a = r.source(id("http://a/keys", 60));
    let b = r.source(id("http://a/keys", 60));
    assert!(std::sync::Arc::ptr_eq(&a, &b));
    let c = r.source(id("http://a/keys", 120));
    assert!(!std::sync::Arc::ptr_eq(&a, &c));
    // Once nothing holds it, the next request for the location makes a new one.
    let weak = std::sync::Arc::downgrade(&a);
    drop((a, b));
    assert!(weak.upgrade().is_none());
    assert!(r.source(id("http://a/keys", 60)).keys().keys.is_empty());
}
