//! The config backup: the last applied snapshot on disk, so a gateway restarted while the
//! control plane is away still serves.
//!
//! Layout of the file (integers little-endian):
//!
//! ```text
//! "OUTPOSTB"  format version u32  revision u64  payload length u64  SHA-256(payload) 32 bytes
//! payload = bincode(BackupPayload { gateway, snapshot })
//! ```
//!
//! Format version 3 (this one) stores the gateway's name and the snapshot with the control
//! plane's signature and key endorsements. Version 1 had no signature; version 2 held the
//! resources in their layout before backend pools (bincode is positional, so a changed resource
//! cannot be read by guessing). Both are refused with advice to reconnect (the gateway then
//! writes a version 3 backup). A change of the resources' layout bumps the version.
//!
//! Writes are atomic (temp file in the same directory, fsync, rename, fsync of the directory),
//! so a crash leaves either the old or the new backup, never a mix. Reads refuse anything that
//! is not exactly what we wrote — a foreign file, another format version, a truncated or
//! modified file, a snapshot whose content hash does not match — and say which and where:
//! a backup is loaded whole or not at all. The checksum and content hash only catch damage;
//! what stops a deliberate edit is the signature, checked by the caller against the keys the
//! gateway trusts ([`super::trust::Trust::check_backup`]) before the backup is served.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use outpost_model::wire::{self, GatewaySnapshot};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub const MAGIC: &[u8; 8] = b"OUTPOSTB";
/// The backup's file name inside `backup.dir`.
pub const FILE_NAME: &str = "config-snapshot.outpostb";
/// The format written and read.
pub const BACKUP_VERSION: u32 = 3;
/// The last format without a signature.
const UNSIGNED_VERSION: u32 = 1;
/// The last format with the resources' layout before backend pools.
const PRE_POOLS_VERSION: u32 = 2;
const HEADER_LEN: usize = 8 + 4 + 8 + 8 + 32;

/// What a backup holds: the snapshot (signature included) and the gateway it was written for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Backup {
    pub gateway: String,
    pub snapshot: GatewaySnapshot,
}

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("backup {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("backup {path} refused: not an Outpost backup (no OUTPOSTB header); a foreign file?")]
    Foreign { path: PathBuf },
    #[error(
        "backup {path} refused: format version {found} is not supported (this gateway reads version {supported})"
    )]
    UnknownVersion {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("backup {path} refused: truncated ({found} of {expected} bytes)")]
    Truncated {
        path: PathBuf,
        expected: u64,
        found: u64,
    },
    #[error(
        "backup {path} refused: format version {found} predates signed configuration; reconnect \
         this gateway to the control plane (it rewrites the backup, signed) before relying on it"
    )]
    Unsigned { path: PathBuf, found: u32 },
    #[error(
        "backup {path} refused: format version {found} was written by an earlier release whose \
         configuration layout differs; reconnect this gateway to the control plane (it rewrites \
         the backup) before relying on it"
    )]
    Older { path: PathBuf, found: u32 },
    #[error("backup {path} refused: checksum mismatch; the file was modified or damaged")]
    Checksum { path: PathBuf },
    #[error("backup {path} refused: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error(
        "backup {path} refused: the snapshot's content hash does not match its resources (revision {revision})"
    )]
    ContentHash { path: PathBuf, revision: u64 },
}

/// The backup file for `dir`.
pub fn path_in(dir: &Path) -> PathBuf {
    dir.join(FILE_NAME)
}

/// The file's bytes for `backup`.
pub fn encode(backup: &Backup) -> Vec<u8> {
    let payload = wire::encode(backup).expect("model types encode infallibly");
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&BACKUP_VERSION.to_le_bytes());
    out.extend_from_slice(&backup.snapshot.revision.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&Sha256::digest(&payload));
    out.extend_from_slice(&payload);
    out
}

/// The backup in `bytes`, checked for integrity (not yet for trust); `path` only names the
/// file in errors.
pub fn decode(bytes: &[u8], path: &Path) -> Result<Backup, BackupError> {
    let path = path.to_path_buf();
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        // A file cut inside the magic is still recognisably ours.
        if !bytes.is_empty() && MAGIC.starts_with(bytes) {
            return Err(BackupError::Truncated {
                path,
                expected: HEADER_LEN as u64,
                found: bytes.len() as u64,
            });
        }
        return Err(BackupError::Foreign { path });
    }
    if bytes.len() < HEADER_LEN {
        return Err(BackupError::Truncated {
            path,
            expected: HEADER_LEN as u64,
            found: bytes.len() as u64,
        });
    }
    let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().expect("4 bytes"));
    let u64_at = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
    let version = u32_at(8);
    if version == UNSIGNED_VERSION {
        return Err(BackupError::Unsigned {
            path,
            found: version,
        });
    }
    if version == PRE_POOLS_VERSION {
        return Err(BackupError::Older {
            path,
            found: version,
        });
    }
    if version != BACKUP_VERSION {
        return Err(BackupError::UnknownVersion {
            path,
            found: version,
            supported: BACKUP_VERSION,
        });
    }
    let revision = u64_at(12);
    let length = u64_at(20);
    let checksum = &bytes[28..60];
    let payload = &bytes[HEADER_LEN..];
    let expected = HEADER_LEN as u64 + length;
    if (bytes.len() as u64) < expected {
        return Err(BackupError::Truncated {
            path,
            expected,
            found: bytes.len() as u64,
        });
    }
    if (bytes.len() as u64) > expected || Sha256::digest(payload).as_slice() != checksum {
        return Err(BackupError::Checksum { path });
    }
    let backup: Backup = wire::decode(payload).map_err(|e| BackupError::Invalid {
        path: path.clone(),
        reason: format!("cannot decode the snapshot: {e}"),
    })?;
    let snapshot = &backup.snapshot;
    if snapshot.revision != revision {
        return Err(BackupError::Invalid {
            path,
            reason: format!(
                "header says revision {revision} but the snapshot is revision {}",
                snapshot.revision
            ),
        });
    }
    if !snapshot.verify() {
        return Err(BackupError::ContentHash { path, revision });
    }
    Ok(backup)
}

/// The backup in `dir`, `None` when there is none. Integrity only: check it with
/// [`super::trust::Trust::check_backup`] before serving it.
pub fn read(dir: &Path) -> Result<Option<Backup>, BackupError> {
    let path = path_in(dir);
    match fs::read(&path) {
        Ok(bytes) => decode(&bytes, &path).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(BackupError::Io { path, source }),
    }
}

/// Replaces the backup in `dir` with `backup`, atomically, readable by the owner only.
pub fn write(dir: &Path, backup: &Backup) -> Result<PathBuf, BackupError> {
    write_private(dir, FILE_NAME, &encode(backup)).map_err(|source| BackupError::Io {
        path: path_in(dir),
        source,
    })
}

/// Replaces `dir/name` with `bytes` atomically (temp file, fsync, rename, fsync of the
/// directory), mode 0600, creating `dir` 0700 if needed. Shared by the backup and the pin file.
pub fn write_private(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<PathBuf> {
    let path = dir.join(name);
    create_private_dir(dir)?;
    // NamedTempFile is created 0600 and removed if we fail before the rename.
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .tempfile_in(dir)?;
    set_owner_only(tmp.as_file())?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(&path).map_err(|e| e.error)?;
    // The rename is only durable once the directory entry is.
    fs::File::open(dir).and_then(|d| d.sync_all())?;
    Ok(path)
}

#[cfg(unix)]
fn set_owner_only(file: &fs::File) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    file.set_permissions(fs::Permissions::from_mode(0o600))
}

#[cfg(not(unix))]
fn set_owner_only(_: &fs::File) -> std::io::Result<()> {
    Ok(())
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}
