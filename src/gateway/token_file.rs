//! `control_plane.token_file`: the gateway token read from a file once at start.
//!
//! Containers get their token this way without a shell in the image to read the file into
//! `OUTPOST_CONTROL_PLANE_TOKEN` (compose/docker-compose.yml: `outpost gateway-token
//! --output-dir` writes one file per gateway into a volume the gateways mount read-only). A
//! token is a secret: a file others than its owner could read is refused, not used, and the
//! file's content never appears in an error.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use super::settings::ControlPlaneLink;

/// Why the token file was refused; the message names the setting and the file.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("control_plane.token_file {}: {source}", path.display())]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "control_plane.token_file {0}: mode {1:04o} lets others than its owner read the token; \
         make it 0600 (chmod 600 {0})", path.display(), mode
    )]
    Exposed { path: PathBuf, mode: u32 },
    #[error(
        "control_plane.token_file {}: expected one line 'GatewayKey \
         <gateway>&<expiry>&<signature>' (from outpost gateway-token)", path.display()
    )]
    NotAToken { path: PathBuf },
}

/// Fills `link.token` from `link.token_file` when that is set (validation has made sure only
/// one of the two is).
pub fn resolve(link: &mut ControlPlaneLink) -> Result<(), TokenFileError> {
    if let Some(path) = &link.token_file {
        link.token = read(path)?;
    }
    Ok(())
}

fn read(path: &Path) -> Result<String, TokenFileError> {
    let unreadable = |source| TokenFileError::Unreadable {
        path: path.to_owned(),
        source,
    };
    let mode = std::fs::metadata(path)
        .map_err(unreadable)?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o077 != 0 {
        return Err(TokenFileError::Exposed {
            path: path.to_owned(),
            mode,
        });
    }
    let text = std::fs::read_to_string(path).map_err(unreadable)?;
    let token = text.trim();
    if !token.starts_with("GatewayKey ") || token.contains('\n') {
        return Err(TokenFileError::NotAToken {
            path: path.to_owned(),
        });
    }
    Ok(token.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, content: &str, mode: u32) -> PathBuf {
        let path = dir.join("site-a");
        std::fs::write(&path, content).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    fn link(file: PathBuf) -> ControlPlaneLink {
        ControlPlaneLink {
            token_file: Some(file),
            ..ControlPlaneLink::default()
        }
    }

    #[test]
    fn an_owner_only_file_fills_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let mut l = link(write(
            dir.path(),
            "GatewayKey site-a&209901010000&c2ln\n",
            0o600,
        ));
        resolve(&mut l).unwrap();
        assert_eq!(l.token, "GatewayKey site-a&209901010000&c2ln");
    }

    #[test]
    fn a_file_others_can_read_is_refused_without_showing_the_token() {
        let dir = tempfile::tempdir().unwrap();
        for mode in [0o644, 0o640, 0o604] {
            let mut l = link(write(
                dir.path(),
                "GatewayKey site-a&209901010000&c2VjcmV0",
                mode,
            ));
            let err = resolve(&mut l).unwrap_err().to_string();
            assert!(
                err.contains(&format!("{mode:04o}")) && err.contains("0600"),
                "{err}"
            );
            assert!(!err.contains("c2VjcmV0"), "the token leaked: {err}");
            assert!(l.token.is_empty());
        }
    }

    #[test]
    fn a_missing_or_foreign_file_is_a_start_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut l = link(dir.path().join("absent"));
        assert!(resolve(&mut l).unwrap_err().to_string().contains("absent"));
        let mut l = link(write(dir.path(), "not a token", 0o600));
        let err = resolve(&mut l).unwrap_err().to_string();
        assert!(err.contains("expected one line 'GatewayKey"), "{err}");
        assert!(!err.contains("not a token"), "{err}");
    }

    #[test]
    fn the_settings_name_one_token_or_one_file() {
        use crate::gateway::settings::GatewaySettings;
        use crate::settings::Validate as _;
        let problems = |s: &GatewaySettings| {
            let mut p = outpost_model::Problems::new();
            s.validate(&mut p);
            p.to_string()
        };
        let mut s = GatewaySettings::default();
        s.control_plane.url = "http://cp.example:7071".into();
        assert!(problems(&s).contains("OUTPOST_CONTROL_PLANE_TOKEN_FILE"));
        s.control_plane.token = "GatewayKey site-a&209901010000&c2ln".into();
        s.control_plane.token_file = Some("/var/lib/outpost/tokens/site-a".into());
        assert!(problems(&s).contains("not both"), "{}", problems(&s));
        s.control_plane.token.clear();
        assert!(
            !problems(&s).contains("control_plane.token"),
            "{}",
            problems(&s)
        );
    }

    #[test]
    fn no_file_leaves_the_token_alone() {
        let mut l = ControlPlaneLink {
            token: "GatewayKey x".into(),
            ..ControlPlaneLink::default()
        };
        resolve(&mut l).unwrap();
        assert_eq!(l.token, "GatewayKey x");
    }
}
