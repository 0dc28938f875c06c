//! Waiting for the end of a foreground process: SIGINT / SIGTERM, or the component stopping
//! on its own. Shared by `control-plane`, `gateway` and `demo`.

use std::future::Future;
use std::time::Duration;

/// Why the wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// A signal asked the process to stop (its name, for the log).
    Signal(&'static str),
    /// The component stopped by itself (its listeners ended).
    Stopped,
}

/// Blocks the calling thread until a stop signal arrives or `stopped` completes.
pub fn wait_for_stop(stopped: impl Future<Output = ()>) -> Result<Stop, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    Ok(runtime.block_on(async {
        #[cfg(unix)]
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => Stop::Signal("SIGINT"),
            _ = term => Stop::Signal("SIGTERM"),
            _ = stopped => Stop::Stopped,
        }
    }))
}

/// Blocks the calling thread until a stop signal arrives (its name) or `timeout` passes
/// (`None`): a drain that a second signal cuts short.
pub fn wait_for_signal(timeout: Duration) -> Result<Option<&'static str>, String> {
    Ok(
        match wait_for_stop(async move { tokio::time::sleep(timeout).await })? {
            Stop::Signal(name) => Some(name),
            Stop::Stopped => None,
        },
    )
}
