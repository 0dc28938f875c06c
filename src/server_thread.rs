//! A component's listeners on a thread of their own, inside their own actix system.
//!
//! The control plane and the gateway both start this way, so they run the same from `main`,
//! from tests and from `outpost demo`, several in one process, without a process-global runtime.

use std::future::Future;
use std::sync::mpsc;
use std::thread::JoinHandle;

use actix_web::dev::ServerHandle;
use tokio::sync::watch;

/// How the component's thread reports that it serves (its listeners, and whatever else the
/// starter needs), or why it could not start (the component's own error type).
pub type Ready<T, E = String> = mpsc::Sender<Result<(Vec<ServerHandle>, T), E>>;

/// Why the component's thread did not report at all.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("cannot start the {name} thread: {source}")]
    Spawn {
        name: &'static str,
        source: std::io::Error,
    },
    #[error("the {name} thread ended during start")]
    Ended { name: &'static str },
}

impl From<SpawnError> for String {
    fn from(e: SpawnError) -> String {
        e.to_string()
    }
}

pub struct ServerThread {
    name: &'static str,
    servers: Vec<ServerHandle>,
    exited: watch::Receiver<bool>,
    thread: Option<JoinHandle<()>>,
}

impl ServerThread {
    /// Runs `serve` in a new actix system on a thread named `name` and returns once it has
    /// reported through its [`Ready`] sender; a start failure is returned after the thread ended.
    pub fn spawn<T, E, F, Fut>(name: &'static str, serve: F) -> Result<(ServerThread, T), E>
    where
        T: Send + 'static,
        E: From<SpawnError> + Send + 'static,
        F: FnOnce(Ready<T, E>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        let (ready_tx, ready_rx) = mpsc::channel();
        let (exited_tx, exited) = watch::channel(false);
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                actix_rt::System::new().block_on(serve(ready_tx));
                let _ = exited_tx.send(true);
            })
            .map_err(|source| SpawnError::Spawn { name, source })?;
        match ready_rx.recv() {
            Ok(Ok((servers, value))) => Ok((
                ServerThread {
                    name,
                    servers,
                    exited,
                    thread: Some(thread),
                },
                value,
            )),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(SpawnError::Ended { name }.into())
            }
        }
    }

    /// The listeners, to stop them from elsewhere.
    pub fn handles(&self) -> &[ServerHandle] {
        &self.servers
    }

    /// Asks every listener to stop; returns at once.
    pub fn signal_stop(&self, graceful: bool) {
        signal_stop(&self.servers, graceful);
    }

    /// Stops the listeners and waits until the thread has ended and the ports are released.
    pub fn stop(&mut self, graceful: bool) {
        self.signal_stop(graceful);
        self.join();
    }

    /// Waits until the thread ends.
    pub fn join(&mut self) {
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            tracing::error!(thread = self.name, "a server thread panicked");
        }
    }

    pub fn is_running(&self) -> bool {
        self.thread.is_some()
    }

    /// Resolves when the listeners have stopped, for whatever reason.
    pub async fn stopped(&self) {
        let mut rx = self.exited.clone();
        let _ = rx.wait_for(|done| *done).await;
    }
}

/// Asks listeners to stop; the command is sent at once, the returned futures only wait for it.
pub fn signal_stop(servers: &[ServerHandle], graceful: bool) {
    for s in servers {
        drop(s.stop(graceful));
    }
}

/// An address to connect to: a wildcard listen address (`0.0.0.0`, `::`) becomes loopback.
pub fn connectable(addr: std::net::SocketAddr) -> std::net::SocketAddr {
    let mut a = addr;
    if a.ip().is_unspecified() {
        a.set_ip(if a.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    a
}
