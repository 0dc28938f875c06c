//! Typed settings values in their on-disk form.
//!
//! A settings struct holds what the code uses — a `Duration`, an optional path — while the file
//! and the environment keep the plain forms operators write: `poll_wait_secs = 30`,
//! `spool_dir = ""` for none. Each module here is a serde `with` adapter for one such pair, so
//! a value is converted once, where the settings are loaded, and the key and its variable keep
//! their names (`#[serde(rename = "poll_wait_secs", with = "typed::secs")] poll_wait: Duration`).
//! The settings loader reads the defaults' serialised form to know each key's type, so every
//! adapter serialises to the plain form (a number, a string; never null).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer};

/// Whole seconds.
pub mod secs {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_secs)
    }
}

/// Whole milliseconds.
pub mod millis {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// Whole hours.
pub mod hours {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs() / 3600)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let h = u64::deserialize(d)?;
        h.checked_mul(3600)
            .map(Duration::from_secs)
            .ok_or_else(|| serde::de::Error::custom(format!("{h} hours is too long")))
    }
}

/// A value written as text and parsed once (`FromStr`, whose error is the problem reported for
/// the key), e.g. `https_min_tls = "1.3"`.
pub mod text {
    use std::fmt::Display;
    use std::str::FromStr;

    use super::*;

    pub fn serialize<T: Display, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    pub fn deserialize<'de, T, D>(d: D) -> Result<T, D::Error>
    where
        T: FromStr,
        T::Err: Display,
        D: Deserializer<'de>,
    {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A path, or none written as the empty string.
pub mod opt_path {
    use super::*;

    pub fn serialize<S: Serializer>(p: &Option<PathBuf>, s: S) -> Result<S::Ok, S::Error> {
        match p {
            Some(p) => s.serialize_str(&p.to_string_lossy()),
            None => s.serialize_str(""),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
        let s = String::deserialize(d)?;
        Ok((!s.is_empty()).then(|| PathBuf::from(s)))
    }
}

/// A text, or none written as the empty string.
pub mod opt_string {
    use super::*;

    pub fn serialize<S: Serializer>(v: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(v.as_deref().unwrap_or(""))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        let s = String::deserialize(d)?;
        Ok((!s.is_empty()).then_some(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Serialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct S {
        #[serde(rename = "wait_secs", with = "secs")]
        wait: Duration,
        #[serde(rename = "timeout_ms", with = "millis")]
        timeout: Duration,
        #[serde(with = "opt_path")]
        dir: Option<PathBuf>,
        #[serde(with = "opt_string")]
        name: Option<String>,
    }

    #[test]
    fn plain_forms_on_disk_typed_values_in_memory() {
        let s: S = serde_json::from_value(serde_json::json!({
            "wait_secs": 30, "timeout_ms": 250, "dir": "", "name": "x",
        }))
        .unwrap();
        assert_eq!(
            s,
            S {
                wait: Duration::from_secs(30),
                timeout: Duration::from_millis(250),
                dir: None,
                name: Some("x".into()),
            }
        );
        let back = serde_json::to_value(&s).unwrap();
        assert_eq!(
            back,
            serde_json::json!({"wait_secs": 30, "timeout_ms": 250, "dir": "", "name": "x"})
        );
        let s: S = serde_json::from_value(
            serde_json::json!({"wait_secs": 1, "timeout_ms": 1, "dir": "/d", "name": ""}),
        )
        .unwrap();
        assert_eq!(s.dir, Some(PathBuf::from("/d")));
        assert_eq!(s.name, None);
        assert!(
            serde_json::from_value::<S>(
                serde_json::json!({"wait_secs": -1, "timeout_ms": 1, "dir": "", "name": ""})
            )
            .is_err()
        );
    }
}
