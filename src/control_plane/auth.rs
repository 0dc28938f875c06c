//! Admin authentication: where the admin token comes from, and the middleware that guards
//! `/api/v1` with `Authorization: Bearer <token>`.
//!
//! The token is `admin.token` when configured; otherwise it is generated on first start
//! (32 random bytes, hex) and kept in `<data_dir>/admin-token` (mode 0600) so it survives
//! restarts and the CLI can read it with `--token-file`. With a `:memory:` store nothing is kept,
//! so the token itself is printed.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::AUTHORIZATION;
use actix_web::middleware::Next;
use actix_web::web;
use sha2::{Digest, Sha256};

use super::error::ApiError;
use super::settings::{ControlPlaneSettings, StoreDir};
use super::store::generate_key;

/// Name of the generated token's file in the data directory.
pub const TOKEN_FILE: &str = "admin-token";

/// The admin bearer token, registered as app data on the admin listener. `Debug` does not
/// show it.
#[derive(Clone)]
pub struct AdminToken(String);

impl AdminToken {
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Compares in time independent of where the two differ (both sides are hashed first, so
    /// neither the content nor the length of the real token leaks through timing).
    pub fn matches(&self, given: &str) -> bool {
        let a = Sha256::digest(self.0.as_bytes());
        let b = Sha256::digest(given.as_bytes());
        a.iter()
            .zip(b.iter())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

/// Where the token came from (for the start-up message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    Configured,
    /// Generated now and written to this file.
    Generated(PathBuf),
    /// Read from this file, written by an earlier start.
    File(PathBuf),
    /// Generated for an in-memory store; kept nowhere.
    Ephemeral,
}

/// Why no admin token could be had; each message names the file and the way out.
#[derive(Debug, thiserror::Error)]
pub enum AdminTokenError {
    #[error(
        "{} is empty; delete it to have a new admin token generated, or set admin.token",
        .0.display()
    )]
    EmptyFile(PathBuf),
    #[error("cannot write the admin token to {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Resolves the admin token as described in the module documentation.
pub fn resolve_admin_token(
    settings: &ControlPlaneSettings,
) -> Result<(AdminToken, TokenSource), AdminTokenError> {
    let configured = settings.admin.token.trim();
    if !configured.is_empty() {
        return Ok((AdminToken::new(configured), TokenSource::Configured));
    }
    let StoreDir::Dir(dir) = &settings.store.data_dir else {
        return Ok((AdminToken::new(generate_key()), TokenSource::Ephemeral));
    };
    let path = dir.join(TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let token = text.trim();
            if token.is_empty() {
                return Err(AdminTokenError::EmptyFile(path));
            }
            Ok((AdminToken::new(token), TokenSource::File(path)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let token = generate_key();
            if let Err(source) = write_private(&path, &token) {
                return Err(AdminTokenError::Write { path, source });
            }
            Ok((AdminToken::new(token), TokenSource::Generated(path)))
        }
        Err(source) => Err(AdminTokenError::Read { path, source }),
    }
}

/// Writes a new file readable by its owner only.
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(contents.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()
}

/// Prints where the token is (never the token, except for an in-memory store).
pub fn announce(token: &AdminToken, source: &TokenSource) {
    match source {
        TokenSource::Configured => {}
        TokenSource::Generated(path) => eprintln!(
            "outpost: generated an admin token; it is in {} (use --token-file)",
            path.display()
        ),
        TokenSource::File(path) => {
            eprintln!("outpost: admin token read from {}", path.display())
        }
        TokenSource::Ephemeral => eprintln!(
            "outpost: admin token (in-memory store, not saved): {}",
            token.as_str()
        ),
    }
}

/// Middleware for the `/api/v1` scope: `Authorization: Bearer <admin token>` or 401.
pub async fn require_admin(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let Some(expected) = req.app_data::<web::Data<AdminToken>>() else {
        return Err(ApiError::Internal("admin token not configured".into()).into());
    };
    let Some(header) = req.headers().get(AUTHORIZATION) else {
        return Err(ApiError::Unauthorized(
            "missing Authorization header; send 'Authorization: Bearer <admin token>'".into(),
        )
        .into());
    };
    let given = header
        .to_str()
        .ok()
        .and_then(|h| {
            let (scheme, rest) = h.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        })
        .ok_or_else(|| {
            ApiError::Unauthorized("the Authorization header must be 'Bearer <admin token>'".into())
        })?;
    if !expected.matches(given) {
        return Err(ApiError::Unauthorized("invalid admin token".into()).into());
    }
    next.call(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares_tokens() {
        let t = AdminToken::new("abc");
        assert!(t.matches("abc"));
        assert!(!t.matches("abd"));
        assert!(!t.matches("ab"));
        assert!(!t.matches(""));
        assert_eq!(format!("{t:?}"), "AdminToken(..)");
    }

    #[test]
    fn generated_token_is_kept_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = ControlPlaneSettings::default();
        s.store.data_dir = StoreDir::Dir(dir.path().to_owned());
        let (t1, src1) = resolve_admin_token(&s).unwrap();
        let path = dir.path().join(TOKEN_FILE);
        assert_eq!(src1, TokenSource::Generated(path.clone()));
        assert_eq!(t1.as_str().len(), 64);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let (t2, src2) = resolve_admin_token(&s).unwrap();
        assert_eq!(src2, TokenSource::File(path));
        assert_eq!(t1.as_str(), t2.as_str());

        s.admin.token = "configured".into();
        let (t3, src3) = resolve_admin_token(&s).unwrap();
        assert_eq!((t3.as_str(), src3), ("configured", TokenSource::Configured));
    }
}
