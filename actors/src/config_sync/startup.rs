//! A gateway's first configuration: from the control plane, else from the backup, else a clear
//! refusal to start. The same rules as the sync loop (signature trust, hand-over to the route
//! table, backup and pin files, reports to the status board), so start-up and `ConfigSync`
//! cannot drift apart; the loop takes over from what this returns.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use actix::{Addr, Recipient};
use chrono::Utc;
use outpost_model::signing::PublicKey;
use outpost_model::wire::GatewaySnapshot;

use super::backup;
use super::trust::{self, Trust};
use crate::connectivity::{
    ConfigSource, ConnectivityWatcher, ControlPlaneFailed, ControlPlaneReachable,
    ControlPlaneUnauthorized, Refusal, SnapshotRefused,
};
use crate::link::{CallError, Link, LinkConfig};
use crate::route_table::ApplySnapshot;

/// What the backup directory holds at start.
#[derive(Debug)]
pub enum StartupBackup {
    Disabled,
    Missing(PathBuf),
    Valid(GatewaySnapshot),
    /// Unreadable, damaged, foreign or not signed by a trusted key: the reason.
    Corrupt(String),
}

impl StartupBackup {
    /// Reads and checks the backup in `dir` (`None`: backups are off).
    pub fn read(dir: Option<&Path>, trust: &Trust) -> StartupBackup {
        let Some(dir) = dir else {
            return StartupBackup::Disabled;
        };
        match backup::read(dir) {
            Ok(Some(found)) => {
                let path = backup::path_in(dir);
                if let Err(e) = trust.check_backup(&found) {
                    let reason = format!("config backup {} refused: {e}", path.display());
                    tracing::error!("{reason}");
                    return StartupBackup::Corrupt(reason);
                }
                tracing::info!(
                    revision = found.snapshot.revision,
                    path = %path.display(),
                    "config backup found, signature verified"
                );
                StartupBackup::Valid(found.snapshot)
            }
            Ok(None) => StartupBackup::Missing(backup::path_in(dir)),
            Err(e) => {
                tracing::error!("{e}");
                StartupBackup::Corrupt(e.to_string())
            }
        }
    }
}

/// The configuration a gateway starts serving.
#[derive(Debug)]
pub struct Loaded {
    pub snapshot: GatewaySnapshot,
    pub source: ConfigSource,
    /// The trust after loading (a first contact pins a key).
    pub trust: Trust,
}

/// No configuration to serve: the process must not start (the message says what to do).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StartupError(pub String);

/// Where a start-up gets its configuration from, and where it reports.
pub struct Startup<'a> {
    pub link: &'a Arc<LinkConfig>,
    pub backup: StartupBackup,
    pub trust: Trust,
    pub backup_dir: Option<PathBuf>,
    pub table: &'a Recipient<ApplySnapshot>,
    pub watcher: &'a Addr<ConnectivityWatcher>,
}

/// Step 2 of a gateway's start: one snapshot from the control plane within the link's
/// timeout; else the backup; else an error naming both failures and the way out.
pub async fn first_config(s: Startup<'_>) -> Result<Loaded, StartupError> {
    let mut fetched_trust = s.trust.clone();
    let url = s.link.base_urls.join(", ");
    let link = Link::new(s.link.clone());
    let fetched = super::fetch_snapshot(&link).await.map(|snapshot| {
        let pins = fetched_trust.accept_from_control_plane(&snapshot);
        (snapshot, pins)
    });
    let refused = |snapshot: &GatewaySnapshot, reason: String| {
        s.watcher.do_send(SnapshotRefused(Refusal {
            revision: snapshot.revision,
            hash: snapshot.hash.clone(),
            reason: reason.clone(),
            at: Utc::now(),
        }));
        format!(
            "the configuration from the control plane at {url} (revision {}) was refused: {reason}",
            snapshot.revision
        )
    };
    let from_control_plane = match fetched {
        Ok((snapshot, Err(untrusted))) => {
            s.watcher.do_send(ControlPlaneReachable);
            Err(refused(
                &snapshot,
                format!("configuration signature refused: {untrusted}"),
            ))
        }
        Ok((snapshot, Ok(pins))) => {
            s.watcher.do_send(ControlPlaneReachable);
            if let Some(keys) = pins {
                write_pins(s.backup_dir.clone(), keys).await;
            }
            match hand_over(s.table.clone(), Arc::new(snapshot.clone())).await {
                Ok(()) => Ok(snapshot),
                Err(reason) => Err(refused(&snapshot, reason)),
            }
        }
        Err(e) => {
            match &e {
                CallError::Unauthorized(reason) => s.watcher.do_send(ControlPlaneUnauthorized {
                    reason: reason.clone(),
                }),
                other => s.watcher.do_send(ControlPlaneFailed {
                    error: other.to_string(),
                }),
            }
            Err(describe_fetch_error(&url, &e))
        }
    };

    let cp_error = match from_control_plane {
        Ok(snapshot) => {
            if let StartupBackup::Corrupt(reason) = &s.backup {
                tracing::warn!("{reason}; it will be replaced by the configuration just fetched");
            }
            if let Some(dir) = s.backup_dir {
                write_backup(
                    dir,
                    backup::Backup {
                        gateway: fetched_trust.gateway().to_owned(),
                        snapshot: snapshot.clone(),
                    },
                )
                .await;
            }
            tracing::info!(
                revision = snapshot.revision,
                hash = %snapshot.hash,
                "configuration loaded from the control plane"
            );
            return Ok(Loaded {
                snapshot,
                source: ConfigSource::ControlPlane,
                trust: fetched_trust,
            });
        }
        Err(e) => e,
    };

    match s.backup {
        StartupBackup::Valid(snapshot) => {
            hand_over(s.table.clone(), Arc::new(snapshot.clone()))
                .await
                .map_err(|reason| {
                    StartupError(format!(
                        "{cp_error}; and the config backup (revision {}) was refused: {reason}",
                        snapshot.revision
                    ))
                })?;
            tracing::warn!(
                revision = snapshot.revision,
                hash = %snapshot.hash,
                error = %cp_error,
                "serving the config backup; still trying the control plane in the background"
            );
            Ok(Loaded {
                snapshot,
                source: ConfigSource::Backup,
                // Not `fetched_trust`: a key pinned from an answer that was then not served
                // stays unpinned.
                trust: s.trust,
            })
        }
        StartupBackup::Corrupt(reason) => Err(StartupError(format!(
            "{cp_error}; and {reason}. Fix or remove the backup file, or make the control plane reachable."
        ))),
        StartupBackup::Missing(path) => Err(StartupError(format!(
            "{cp_error}; and there is no config backup yet ({} does not exist: a gateway writes it \
             after its first successful sync). Check control_plane.url and the network, or serve a \
             declarative file with --offline-config.",
            path.display()
        ))),
        StartupBackup::Disabled => Err(StartupError(format!(
            "{cp_error}; and config backups are off. Check control_plane.url and the network, \
             enable backup.enabled (with backup.dir) so a gateway that synced once can restart \
             without the control plane, or serve a declarative file with --offline-config."
        ))),
    }
}

/// Gives a snapshot to the route table; `Err` says why it was not taken.
pub async fn hand_over(
    table: Recipient<ApplySnapshot>,
    snapshot: Arc<GatewaySnapshot>,
) -> Result<(), String> {
    match table.send(ApplySnapshot(snapshot)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(problems)) => Err(format!(
            "{} problem(s) compiling the configuration:\n{problems}",
            problems.len()
        )),
        Err(e) => Err(format!("the route table is not running: {e}")),
    }
}

/// Writes the backup off the actor's thread; a failure is logged and counted, never fatal
/// (the configuration still serves; only a restart without the control plane would miss it).
pub async fn write_backup(dir: PathBuf, to_write: backup::Backup) {
    match tokio::task::spawn_blocking(move || backup::write(&dir, &to_write)).await {
        Ok(Ok(path)) => tracing::debug!(path = %path.display(), "config backup written"),
        Ok(Err(e)) => {
            metrics::counter!("outpost_config_backup_errors_total").increment(1);
            tracing::error!(error = %e, "cannot write the config backup");
        }
        Err(e) => {
            metrics::counter!("outpost_config_backup_errors_total").increment(1);
            tracing::error!(error = %e, "config backup task failed");
        }
    }
}

/// Records newly pinned signing keys (next to the backup when there is one).
pub async fn write_pins(dir: Option<PathBuf>, keys: Vec<PublicKey>) {
    tracing::info!(
        keys = %outpost_model::signing::describe(&keys),
        "config signing key pinned"
    );
    let Some(dir) = dir else {
        return;
    };
    match tokio::task::spawn_blocking(move || trust::write_pins(&dir, &keys)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "cannot write the pin file"),
        Err(e) => tracing::error!(error = %e, "pin file task failed"),
    }
}

fn describe_fetch_error(url: &str, e: &CallError) -> String {
    match e {
        CallError::Unauthorized(reason) => format!(
            "the control plane at {url} refused the gateway token ({reason}); mint a new one \
             (outpost gateway-token --gateway <name>) and set control_plane.token"
        ),
        CallError::Unreachable(reason) => {
            format!("no configuration from the control plane at {url}: {reason}")
        }
        CallError::Refused { status, reason } => format!(
            "the control plane at {url} refused the configuration request ({status}): {reason}"
        ),
        CallError::Rejected(reason) => format!(
            "the control plane at {url} answered something this gateway cannot use: {reason}"
        ),
    }
}
