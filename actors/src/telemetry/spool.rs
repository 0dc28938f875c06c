//! The telemetry spool: batches that did not fit in memory, one file each, uploaded oldest
//! first (file names sort by creation time). Files survive a restart, so a gateway restarted
//! during an outage still uploads what it measured before.
//!
//! The extension names the batch format: `.otb2` holds batches with latency histograms. `.otb`
//! files, spooled by a release before the histograms, are not read (bincode carries no field
//! names, so they cannot be told apart reliably); they are left in place, reported once at
//! start, and not counted against the spool bound.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use outpost_model::wire::{self, TelemetryBatch};

const EXTENSION: &str = "otb2";
/// Batches spooled by a release before latency histograms.
const OLD_EXTENSION: &str = "otb";

#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    /// Spooled files, oldest first, with their sizes.
    files: std::collections::VecDeque<(PathBuf, u64)>,
    bytes: u64,
    /// Disambiguates names written within the same millisecond.
    counter: u64,
}

impl Spool {
    /// Opens (creating) `dir` and picks up the files an earlier process left.
    pub fn open(dir: &Path, max_bytes: u64) -> std::io::Result<Self> {
        fs::create_dir_all(dir)?;
        let mut files: Vec<(PathBuf, u64)> = fs::read_dir(dir)?
            .filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == EXTENSION))
            .filter_map(|e| Some((e.path(), e.metadata().ok()?.len())))
            .collect();
        files.sort();
        let old = fs::read_dir(dir)?
            .filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == OLD_EXTENSION))
            .count();
        if old > 0 {
            tracing::warn!(
                dir = %dir.display(),
                files = old,
                "telemetry spool files (*.otb) written by an older release are in a format this \
                 release does not read; they are left in place and will not be uploaded"
            );
        }
        let bytes = files.iter().map(|(_, n)| n).sum();
        Ok(Self {
            dir: dir.to_path_buf(),
            max_bytes,
            files: files.into(),
            bytes,
            counter: 0,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Writes `batch` as the newest file. Returns the batches dropped (oldest first) to stay
    /// within the byte bound, as their aggregate counts when readable.
    pub fn push(&mut self, batch: &TelemetryBatch) -> std::io::Result<Vec<usize>> {
        let bytes = wire::encode(batch).map_err(std::io::Error::other)?;
        let now = chrono::Utc::now().timestamp_millis();
        self.counter += 1;
        let name = format!(
            "{now:016}-{:08}-{}-{:012}.{EXTENSION}",
            self.counter % 100_000_000,
            sanitize(&batch.instance_id),
            batch.sequence
        );
        let path = self.dir.join(name);
        let tmp = path.with_extension("tmp");
        {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
        }
        fs::rename(&tmp, &path)?;
        self.files.push_back((path, bytes.len() as u64));
        self.bytes += bytes.len() as u64;
        let mut dropped = Vec::new();
        while self.bytes > self.max_bytes && self.files.len() > 1 {
            let n = self.peek().map_or(0, |b| b.aggregates.len());
            self.pop();
            dropped.push(n);
        }
        Ok(dropped)
    }

    /// The oldest spooled batch. An unreadable file is removed (and reported as `Err` once).
    pub fn peek(&mut self) -> Option<TelemetryBatch> {
        loop {
            let (path, _) = self.files.front()?;
            match fs::read(path)
                .map_err(|e| e.to_string())
                .and_then(|b| wire::decode(&b).map_err(|e| e.to_string()))
            {
                Ok(batch) => return Some(batch),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "dropping an unreadable telemetry spool file");
                    metrics::counter!("outpost_telemetry_dropped_total", "reason" => "unreadable")
                        .increment(1);
                    self.pop();
                }
            }
        }
    }

    /// Removes the oldest file (uploaded or dropped).
    pub fn pop(&mut self) {
        if let Some((path, n)) = self.files.pop_front() {
            self.bytes -= n;
            if let Err(e) = fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove a telemetry spool file");
            }
        }
    }
}

fn sanitize(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(40)
        .collect()
}
