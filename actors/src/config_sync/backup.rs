//! The config backup: the last applied snapshot on disk, so a gateway restarted while the
//! control plane is away still serves.
//!
//! Layout of the file (integers little-endian):
//!
//! ```text
//! "OUTPOSTB"  format version u32  revision u64  payload length u64  SHA-256(payload) 32 bytes
//! payload = bincode(GatewaySnapshot)
//! ```
//!
//! Writes are atomic (temp file in the same directory, fsync, rename, fsync of the directory),
//! so a crash leaves either the old or the new backup, never a mix. Reads refuse anything that
//! is not exactly what we wrote — a foreign file, another format version, a truncated or
//! modified file, a snapshot whose content hash does not match — and say which and where:
//! a backup is loaded whole or not at all.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use outpost_model::wire::{self, FORMAT_VERSION, GatewaySnapshot};
use sha2::{Digest, Sha256};

pub const MAGIC: &[u8; 8] = b"OUTPOSTB";
/// The backup's file name inside `backup.dir`.
pub const FILE_NAME: &str = "config-snapshot.outpostb";
const HEADER_LEN: usize = 8 + 4 + 8 + 8 + 32;

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

/// The file's bytes for `snapshot`.
pub fn encode(snapshot: &GatewaySnapshot) -> Vec<u8> {
    let payload = wire::encode(snapshot).expect("model types encode infallibly");
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&snapshot.revision.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&Sha256::digest(&payload));
    out.extend_from_slice(&payload);
    out
}

/// The snapshot in `bytes`, fully checked; `path` only names the file in errors.
pub fn decode(bytes: &[u8], path: &Path) -> Result<GatewaySnapshot, BackupError> {
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
    if version != FORMAT_VERSION {
        return Err(BackupError::UnknownVersion {
            path,
            found: version,
            supported: FORMAT_VERSION,
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
    let snapshot: GatewaySnapshot = wire::decode(payload).map_err(|e| BackupError::Invalid {
        path: path.clone(),
        reason: format!("cannot decode the snapshot: {e}"),
    })?;
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
    Ok(snapshot)
}

/// The backup in `dir`, `None` when there is none.
pub fn read(dir: &Path) -> Result<Option<GatewaySnapshot>, BackupError> {
    let path = path_in(dir);
    match fs::read(&path) {
        Ok(bytes) => decode(&bytes, &path).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(BackupError::Io { path, source }),
    }
}

/// Replaces the backup in `dir` with `snapshot`, atomically, readable by the owner only.
pub fn write(dir: &Path, snapshot: &GatewaySnapshot) -> Result<PathBuf, BackupError> {
    let path = path_in(dir);
    let io = |source| BackupError::Io {
        path: path.clone(),
        source,
    };
    create_private_dir(dir).map_err(io)?;
    let bytes = encode(snapshot);
    // NamedTempFile is created 0600 and removed if we fail before the rename.
    let mut tmp = tempfile::Builder::new()
        .prefix(".config-snapshot.")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(io)?;
    set_owner_only(tmp.as_file()).map_err(io)?;
    tmp.write_all(&bytes).map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(&path).map_err(|e| io(e.error))?;
    // The rename is only durable once the directory entry is.
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
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
