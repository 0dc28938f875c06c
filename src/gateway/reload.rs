//! SIGHUP re-reads the offline configuration file (`offline.config_file`) without a restart.
//!
//! Offline gateways have no control plane to push changes, and certificates in particular
//! must rotate before they lapse: replacing the file and sending SIGHUP (`kill -HUP`,
//! `docker kill -s HUP`, `systemctl reload`) applies it the way a new revision from the control
//! plane would. The file is checked exactly as at start (every problem listed, masked secrets
//! refused); a file that does not load is refused whole and the current configuration keeps
//! serving — a reload can never leave the gateway without one. New TLS handshakes get the new
//! certificates; open connections finish on the old ones.
//!
//! A gateway fed by a control plane has nothing to re-read: SIGHUP is logged and ignored there
//! (rather than the default action, which would kill the process).

use std::path::PathBuf;
use std::sync::Arc;

use actix::{Addr, Recipient};
use chrono::Utc;
use outpost_actors::config_sync::startup;
use outpost_actors::connectivity::{
    AppliedConfig, ConfigApplied, ConfigSource, ConnectivityWatcher, Refusal, SnapshotRefused,
};
use outpost_actors::route_table::ApplySnapshot;

/// What a reload needs: the file and gateway to read, and who to tell.
pub struct OfflineReload {
    pub file: PathBuf,
    /// `offline.gateway`: which of the file's gateways to serve.
    pub gateway: Option<String>,
    pub table: Recipient<ApplySnapshot>,
    pub watcher: Addr<ConnectivityWatcher>,
    /// The revision loaded at start; each successful reload counts one up, so `/readyz` and
    /// `outpost_config_revision` show that a reload took effect.
    pub revision: u64,
}

/// Listens for SIGHUP on the current actix system until it stops. `offline`: `None` for a
/// gateway fed by a control plane.
#[cfg(unix)]
pub fn listen(mut offline: Option<OfflineReload>) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; reloads need a restart");
            return;
        }
    };
    actix_rt::spawn(async move {
        while hangups.recv().await.is_some() {
            match offline.as_mut() {
                Some(reload) => reload.run().await,
                None => tracing::info!(
                    "SIGHUP: nothing to reload, the configuration comes from the control plane"
                ),
            }
        }
    });
}

#[cfg(not(unix))]
pub fn listen(_offline: Option<OfflineReload>) {}

impl OfflineReload {
    async fn run(&mut self) {
        let file = self.file.display().to_string();
        tracing::info!(file, "SIGHUP: reloading the offline config file");
        let loaded =
            super::offline_snapshot(&self.file, self.gateway.as_deref()).map_err(|e| e.to_string());
        let mut snapshot = match loaded {
            Ok(snapshot) => snapshot,
            Err(reason) => return self.refuse(&file, String::new(), reason),
        };
        snapshot.revision = self.revision + 1;
        let (revision, hash) = (snapshot.revision, snapshot.hash.clone());
        if let Err(reason) = startup::hand_over(self.table.clone(), Arc::new(snapshot)).await {
            return self.refuse(&file, hash, reason);
        }
        self.revision = revision;
        metrics::counter!("outpost_config_reloads_total", "outcome" => "applied").increment(1);
        tracing::info!(file, revision, hash = %hash, "offline config file reloaded");
        self.watcher.do_send(ConfigApplied(AppliedConfig {
            source: ConfigSource::Offline,
            revision,
            hash,
            applied_at: Utc::now(),
        }));
    }

    fn refuse(&self, file: &str, hash: String, reason: String) {
        metrics::counter!("outpost_config_reloads_total", "outcome" => "refused").increment(1);
        tracing::error!(
            file,
            "the reloaded offline config file is refused; the current configuration keeps serving\n{reason}"
        );
        self.watcher.do_send(SnapshotRefused(Refusal {
            revision: self.revision + 1,
            hash,
            reason,
            at: Utc::now(),
        }));
    }
}
