//! The control plane's data directory: private to its owner, and used by one control plane at a
//! time.
//!
//! The directory holds everything needed to impersonate the control plane or its gateways
//! (gateway keys, secret named values, subscription keys, TLS private keys, the admin token), so
//! it is created 0700 and every file the control plane keeps in it is 0600, whatever the umask.
//! An existing directory that group or others can enter is refused rather than fixed: someone
//! may already have read it, and the operator should know. SQLite creates its `-wal` and `-shm`
//! files with the database file's mode, so they are pre-created 0600 too, which holds even if a
//! future SQLite stops copying the mode.
//!
//! Two control planes on one SQLite file would each serve their own in-memory state and
//! revision, so [`DataDir::open`] takes an exclusive lock (`flock` on `lock`, released by the
//! kernel when the process dies, so a crash never leaves a stale lock) and keeps it for as long as
//! the [`DataDir`] lives.

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Seek as _, Write as _};
use std::path::{Path, PathBuf};

/// Name of the lock file in the data directory; it holds the pid of the control plane using it.
pub const LOCK_FILE: &str = "lock";

/// Side files SQLite keeps next to the database (WAL mode, and the rollback journal it may use
/// while switching to WAL).
const SQLITE_SIDE_FILES: [&str; 3] = ["-wal", "-shm", "-journal"];

#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("cannot create the data directory {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the data directory {path} is not a directory")]
    NotADirectory { path: PathBuf },
    #[error(
        "the data directory {path} is open to group or others (mode {mode:03o}) but holds secrets \
         (gateway keys, secret named values, the admin token); make it private with \
         `chmod 700 {path}` and start again"
    )]
    TooOpen { path: PathBuf, mode: u32 },
    #[error(
        "the data directory {path} is in use by another control plane (pid {pid}); stop it, or \
         give this one another store.data_dir"
    )]
    InUse { path: PathBuf, pid: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// An opened data directory. Holds the exclusive lock until dropped.
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    _lock: File,
}

impl DataDir {
    /// Creates the directory (0700) or checks that the existing one is private, takes the lock,
    /// and makes the files of `db_file` (and its SQLite side files) and `private_files` 0600,
    /// creating the database's files empty when missing.
    pub fn open(
        path: &Path,
        db_file: &str,
        private_files: &[&str],
    ) -> Result<DataDir, DataDirError> {
        let path = path.to_path_buf();
        ensure_private_dir(&path)?;
        let lock = lock(&path)?;
        let db = path.join(db_file);
        for side in std::iter::once("").chain(SQLITE_SIDE_FILES) {
            let file = PathBuf::from(format!("{}{side}", db.display()));
            // Only the database, WAL and SHM are created; a journal appears only when SQLite
            // needs one, and an empty one would be harmless but confusing.
            let create = side != "-journal";
            make_private(&file, create)?;
        }
        for name in private_files {
            make_private(&path.join(name), false)?;
        }
        Ok(DataDir { path, _lock: lock })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> DataDirError + '_ {
    move |source| DataDirError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn ensure_private_dir(path: &Path) -> Result<(), DataDirError> {
    match std::fs::metadata(path) {
        Ok(meta) => {
            if !meta.is_dir() {
                return Err(DataDirError::NotADirectory {
                    path: path.to_path_buf(),
                });
            }
            check_not_open(path, &meta)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create_private_dir(path),
        Err(e) => Err(io_error(path)(e)),
    }
}

#[cfg(unix)]
fn check_not_open(path: &Path, meta: &std::fs::Metadata) -> Result<(), DataDirError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(DataDirError::TooOpen {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_not_open(_: &Path, _: &std::fs::Metadata) -> Result<(), DataDirError> {
    Ok(())
}

/// Creates the parents as usual and the directory itself 0700.
fn create_private_dir(path: &Path) -> Result<(), DataDirError> {
    let create_error = |source| DataDirError::Create {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(create_error)?;
    }
    let mut builder = std::fs::DirBuilder::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    match builder.create(path) {
        Ok(()) => set_mode(path, 0o700).map_err(create_error),
        // Created by someone else in the meantime: it gets the same check as any existing one.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => ensure_private_dir(path),
        Err(e) => Err(create_error(e)),
    }
}

fn lock(dir: &Path) -> Result<File, DataDirError> {
    let path = dir.join(LOCK_FILE);
    let mut options = OpenOptions::new();
    // Not truncated on open: while another control plane holds the lock, its pid is the message.
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&path).map_err(io_error(&path))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut text = String::new();
            let pid = match file.read_to_string(&mut text) {
                Ok(_) if !text.trim().is_empty() => text.trim().to_owned(),
                _ => "unknown".to_owned(),
            };
            return Err(DataDirError::InUse {
                path: dir.to_path_buf(),
                pid,
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io_error(&path)(e)),
    }
    set_mode(&path, 0o600).map_err(io_error(&path))?;
    file.set_len(0).map_err(io_error(&path))?;
    file.rewind().map_err(io_error(&path))?;
    writeln!(file, "{}", std::process::id()).map_err(io_error(&path))?;
    file.sync_all().map_err(io_error(&path))?;
    Ok(file)
}

/// Makes `path` 0600, creating it empty first when `create` (an existing file is left as it
/// is apart from its mode).
fn make_private(path: &Path, create: bool) -> Result<(), DataDirError> {
    if create {
        let mut options = OpenOptions::new();
        options.write(true).create(true).truncate(false);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        options.open(path).map_err(io_error(path))?;
    }
    match set_mode(path, 0o600) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error(path)(e)),
    }
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let current = std::fs::metadata(path)?.permissions().mode() & 0o777;
    if current != mode {
        tracing::info!(path = %path.display(), from = format!("{current:03o}"), to = format!("{mode:03o}"), "making a data file private");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

#[cfg(not(unix))]
fn set_mode(path: &Path, _: u32) -> std::io::Result<()> {
    std::fs::metadata(path).map(|_| ())
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_new_directory_and_its_files_are_private() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a").join("data");
        let opened = DataDir::open(&dir, "x.db", &["token"]).unwrap();
        assert_eq!(mode(&dir), 0o700);
        for f in ["x.db", "x.db-wal", "x.db-shm", LOCK_FILE] {
            assert_eq!(mode(&dir.join(f)), 0o600, "{f}");
        }
        assert!(!dir.join("x.db-journal").exists());
        assert!(
            !dir.join("token").exists(),
            "only the database's files are created"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join(LOCK_FILE)).unwrap().trim(),
            std::process::id().to_string()
        );
        drop(opened);
    }

    #[test]
    fn existing_files_are_made_private() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        drop(DataDir::open(&dir, "x.db", &[]).unwrap());
        for f in ["x.db", "x.db-wal", "token"] {
            std::fs::write(dir.join(f), "x").unwrap();
            std::fs::set_permissions(dir.join(f), std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        let _opened = DataDir::open(&dir, "x.db", &["token"]).unwrap();
        for f in ["x.db", "x.db-wal", "token"] {
            assert_eq!(mode(&dir.join(f)), 0o600, "{f}");
            assert_eq!(std::fs::read_to_string(dir.join(f)).unwrap(), "x", "{f}");
        }
    }

    #[test]
    fn an_open_directory_is_refused_with_the_fix() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        std::fs::create_dir(&dir).unwrap();
        for open in [0o755, 0o750, 0o701, 0o710] {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(open)).unwrap();
            let err = DataDir::open(&dir, "x.db", &[]).unwrap_err().to_string();
            assert!(
                err.contains(&format!("chmod 700 {}", dir.display())),
                "{err}"
            );
            assert!(
                !dir.join("x.db").exists(),
                "nothing is written before the check"
            );
        }
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        DataDir::open(&dir, "x.db", &[]).unwrap();
    }

    #[test]
    fn one_user_at_a_time() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let first = DataDir::open(&dir, "x.db", &[]).unwrap();
        let err = DataDir::open(&dir, "x.db", &[]).unwrap_err().to_string();
        assert!(
            err.contains(&format!(
                "{} is in use by another control plane (pid {})",
                dir.display(),
                std::process::id()
            )),
            "{err}"
        );
        drop(first);
        DataDir::open(&dir, "x.db", &[]).unwrap();
    }
}
