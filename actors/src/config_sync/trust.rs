//! Which control-plane signing keys this gateway trusts, and the check every configuration
//! passes before it is served (see `outpost_model::signing` for the signature itself).
//!
//! Two modes:
//! - **configured** (`control_plane.config_signing_keys`): the operator gave the keys out of
//!   band. They are the roots; a key they endorse (a rotation) is trusted too, checked from the
//!   endorsement chain each answer and backup carries — the settings are never rewritten.
//! - **pinned** (no key configured): trust on first use. The first configuration received from
//!   the control plane pins the key that signed it; from then on only that key, or a key it
//!   endorsed, is accepted. When a rotation is followed the pin moves: the pin set keeps the
//!   previous key and the new one ([`PINS_KEPT`]), so a backup signed just before the rotation
//!   still loads. The pin file lives next to the backup ([`PIN_FILE`], 0600 in the 0700 backup
//!   directory); without backups the pin lasts as long as the process.
//!
//! A backup is never the first contact: with nothing configured and nothing pinned it is
//! refused, since whoever could write the file could also have signed it with a key of theirs.

use std::fs;
use std::path::{Path, PathBuf};

use outpost_model::signing::{self, PublicKey, SigningError};
use outpost_model::wire::GatewaySnapshot;

use super::backup;

/// The pin file's name inside `backup.dir`.
pub const PIN_FILE: &str = "config-signing-keys.pin";
/// Pinned keys kept: the current one and the one before it.
pub const PINS_KEPT: usize = 2;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustError {
    #[error("the backup is for gateway '{found}', this gateway is '{expected}'")]
    WrongGateway { found: String, expected: String },
    #[error(
        "no config signing key to check it with: set control_plane.config_signing_keys, or let \
         this gateway reach the control plane once (it then pins the control plane's key)"
    )]
    NoTrustedKey,
    #[error("{0}")]
    Signature(#[from] SigningError),
}

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("pin file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "pin file {path} line {line}: {reason}; delete the file to trust the control plane's key \
         again on next contact, or set control_plane.config_signing_keys"
    )]
    Invalid {
        path: PathBuf,
        line: usize,
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trust {
    gateway: String,
    configured: bool,
    /// Configured roots, or the pins (oldest first).
    keys: Vec<PublicKey>,
}

impl Trust {
    pub fn configured(gateway: impl Into<String>, keys: Vec<PublicKey>) -> Trust {
        Trust {
            gateway: gateway.into(),
            configured: true,
            keys,
        }
    }

    /// Trust on first use, starting from what was pinned before (maybe nothing).
    pub fn pinned(gateway: impl Into<String>, pins: Vec<PublicKey>) -> Trust {
        Trust {
            gateway: gateway.into(),
            configured: false,
            keys: pins,
        }
    }

    pub fn gateway(&self) -> &str {
        &self.gateway
    }

    pub fn is_configured(&self) -> bool {
        self.configured
    }

    pub fn keys(&self) -> &[PublicKey] {
        &self.keys
    }

    /// Checks a configuration received from the control plane. On success, returns the new pin
    /// set when it changed (first contact, or a rotation followed), for the caller to persist.
    /// `self` is unchanged on error.
    pub fn accept_from_control_plane(
        &mut self,
        snapshot: &GatewaySnapshot,
    ) -> Result<Option<Vec<PublicKey>>, TrustError> {
        if !self.configured && self.keys.is_empty() {
            // First contact: the key is whatever signed, but the signature must still be its
            // own, for this gateway, over this content.
            let signer = PublicKey::parse(&snapshot.signature.key).map_err(|e| {
                if snapshot.signature.is_empty() {
                    SigningError::Unsigned
                } else {
                    e
                }
            })?;
            signing::verify_config(
                &[signer],
                &self.gateway,
                snapshot.revision,
                &snapshot.hash,
                &snapshot.signature,
                &[],
            )?;
            self.keys = vec![signer];
            return Ok(Some(self.keys.clone()));
        }
        let signer = self.check(snapshot)?;
        if self.configured || self.keys.contains(&signer) {
            return Ok(None);
        }
        // Reached through an endorsement: move the pin, keeping the previous key for a while.
        self.keys.push(signer);
        let excess = self.keys.len().saturating_sub(PINS_KEPT);
        self.keys.drain(..excess);
        Ok(Some(self.keys.clone()))
    }

    /// Checks a backup read from disk: written for this gateway, signed by a trusted key.
    pub fn check_backup(&self, backup: &backup::Backup) -> Result<PublicKey, TrustError> {
        if backup.gateway != self.gateway {
            return Err(TrustError::WrongGateway {
                found: backup.gateway.clone(),
                expected: self.gateway.clone(),
            });
        }
        self.check(&backup.snapshot)
    }

    fn check(&self, snapshot: &GatewaySnapshot) -> Result<PublicKey, TrustError> {
        if self.keys.is_empty() {
            return Err(TrustError::NoTrustedKey);
        }
        Ok(signing::verify_config(
            &self.keys,
            &self.gateway,
            snapshot.revision,
            &snapshot.hash,
            &snapshot.signature,
            &snapshot.endorsements,
        )?)
    }
}

pub fn pin_path_in(dir: &Path) -> PathBuf {
    dir.join(PIN_FILE)
}

/// The pinned keys in `dir`; empty when there is no pin file yet.
pub fn read_pins(dir: &Path) -> Result<Vec<PublicKey>, PinError> {
    let path = pin_path_in(dir);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(PinError::Io { path, source }),
    };
    let text = String::from_utf8(bytes).map_err(|_| PinError::Invalid {
        path: path.clone(),
        line: 1,
        reason: "not text; the file is damaged".into(),
    })?;
    let mut keys = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let key = PublicKey::parse(line).map_err(|e| PinError::Invalid {
            path: path.clone(),
            line: i + 1,
            reason: e.to_string(),
        })?;
        keys.push(key);
    }
    Ok(keys)
}

/// Replaces the pin file in `dir`, atomically, readable by the owner only.
pub fn write_pins(dir: &Path, keys: &[PublicKey]) -> Result<PathBuf, PinError> {
    let mut text = String::from(
        "# Control-plane config signing keys this gateway trusts (pinned on first contact,\n\
         # moved by endorsed rotations). Delete this file to pin again on next contact.\n",
    );
    for k in keys {
        text.push_str(&k.to_string());
        text.push('\n');
    }
    let path = pin_path_in(dir);
    backup::write_private(dir, PIN_FILE, text.as_bytes())
        .map_err(|source| PinError::Io { path, source })
}
