//! [`ComposeFleet`]: `compose/docker-compose.yml` run for real by a Docker engine, under a
//! project name of its own, and always taken down again (`down -v`), panics included.
//!
//! [`compose_cli`] says whether the machine can: it needs a Docker engine that answers
//! (`docker info`) and a Compose client, the `docker compose` plugin (v2) or the older
//! `docker-compose` (v1.29, Debian 12's); both take the same commands here.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::process::workspace_root;

/// The label Compose puts on everything it creates for a project.
pub const PROJECT_LABEL: &str = "com.docker.compose.project";

/// How the Compose client is invoked: `docker compose` or `docker-compose`.
#[derive(Debug, Clone)]
pub struct ComposeCli {
    program: &'static str,
    prefix: &'static [&'static str],
}

impl ComposeCli {
    /// `docker compose` or `docker-compose`, for messages.
    pub fn name(&self) -> String {
        std::iter::once(self.program)
            .chain(self.prefix.iter().copied())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// The Compose client to use, or why there is none (no engine, no client).
pub fn compose_cli() -> Result<ComposeCli, String> {
    let quiet = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    match Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .stdin(Stdio::null())
        .output()
    {
        Err(e) => return Err(format!("no docker client ({e})")),
        Ok(o) if !o.status.success() => {
            return Err(format!(
                "`docker info` failed, no Docker engine to talk to: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ));
        }
        Ok(_) => {}
    }
    if quiet("docker", &["compose", "version"]) {
        Ok(ComposeCli {
            program: "docker",
            prefix: &["compose"],
        })
    } else if quiet("docker-compose", &["version"]) {
        Ok(ComposeCli {
            program: "docker-compose",
            prefix: &[],
        })
    } else {
        Err("neither `docker compose` nor `docker-compose` is installed".into())
    }
}

/// A fleet started from `compose/docker-compose.yml` under `project`; dropped, it is taken
/// down with its volumes.
#[derive(Debug)]
pub struct ComposeFleet {
    cli: ComposeCli,
    project: String,
    env: Vec<(String, String)>,
    root: PathBuf,
    down: bool,
}

impl ComposeFleet {
    /// Nothing starts yet: `run(&["up", "-d"])` does. `env` is added to every Compose call
    /// (image names, the admin token, ...).
    pub fn new(cli: ComposeCli, project: impl Into<String>, env: Vec<(String, String)>) -> Self {
        ComposeFleet {
            cli,
            project: project.into(),
            env,
            root: workspace_root(),
            down: false,
        }
    }

    pub fn project(&self) -> &str {
        &self.project
    }

    /// The name Compose gives network `name` of this project.
    pub fn network(&self, name: &str) -> String {
        format!("{}_{name}", self.project)
    }

    /// A Compose command for this project, from the repository root.
    pub fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(self.cli.program);
        cmd.args(self.cli.prefix)
            .args(["-p", &self.project, "-f", "compose/docker-compose.yml"])
            .args(args)
            .current_dir(&self.root)
            .stdin(Stdio::null())
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// Runs a Compose command; its standard output, or an error with both outputs.
    pub async fn run(&self, args: &[&str]) -> Result<String, String> {
        let out = self
            .command(args)
            .output()
            .await
            .map_err(|e| format!("{} {}: {e}", self.cli.name(), args.join(" ")))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "{} {} exited with {}:\n{}{}",
                self.cli.name(),
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// `host:port` that Docker published `port` of `service` on (`compose port`).
    pub async fn port(&self, service: &str, port: u16) -> Result<String, String> {
        let out = self.run(&["port", service, &port.to_string()]).await?;
        let addr = out.trim();
        if addr.is_empty() || addr.ends_with(":0") {
            return Err(format!("{service}:{port} is not published"));
        }
        Ok(addr.to_owned())
    }

    /// The id of the container of `service` (`compose ps -q`).
    pub async fn container(&self, service: &str) -> Result<String, String> {
        let out = self.run(&["ps", "-q", service]).await?;
        out.lines()
            .next()
            .map(str::trim)
            .filter(|id| !id.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| format!("{service} has no container"))
    }

    /// `down -v`: containers, networks and volumes of the project removed.
    pub async fn down(&mut self) -> Result<(), String> {
        self.run(&["down", "-v", "--remove-orphans", "--timeout", "10"])
            .await?;
        self.down = true;
        Ok(())
    }

    /// What Docker still holds with this project's label: containers, networks, volumes.
    pub fn leftovers(&self) -> Vec<String> {
        let filter = format!("label={PROJECT_LABEL}={}", self.project);
        let mut out = Vec::new();
        for (kind, args) in [
            ("container", &["ps", "-a", "-q", "--filter", &filter][..]),
            ("network", &["network", "ls", "-q", "--filter", &filter][..]),
            ("volume", &["volume", "ls", "-q", "--filter", &filter][..]),
        ] {
            match Command::new("docker").args(args).output() {
                Ok(o) if o.status.success() => out.extend(
                    String::from_utf8_lossy(&o.stdout)
                        .lines()
                        .filter(|l| !l.trim().is_empty())
                        .map(|l| format!("{kind} {}", l.trim())),
                ),
                Ok(o) => out.push(format!(
                    "docker {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&o.stderr).trim()
                )),
                Err(e) => out.push(format!("docker {}: {e}", args.join(" "))),
            }
        }
        out
    }
}

impl Drop for ComposeFleet {
    fn drop(&mut self) {
        if self.down {
            return;
        }
        if std::thread::panicking() {
            // What the services said last is usually why the test failed.
            let logs = std::process::Command::new(self.cli.program)
                .args(self.cli.prefix)
                .args(["-p", &self.project, "-f", "compose/docker-compose.yml"])
                .args(["logs", "--no-color", "--tail", "30"])
                .current_dir(&self.root)
                .envs(self.env.iter().map(|(k, v)| (k, v)))
                .output();
            if let Ok(o) = logs {
                eprintln!(
                    "--- last logs of compose project {} ---\n{}",
                    self.project,
                    String::from_utf8_lossy(&o.stdout)
                );
            }
        }
        let status = std::process::Command::new(self.cli.program)
            .args(self.cli.prefix)
            .args(["-p", &self.project, "-f", "compose/docker-compose.yml"])
            .args(["down", "-v", "--remove-orphans", "--timeout", "5"])
            .current_dir(&self.root)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !status.is_ok_and(|s| s.success()) {
            eprintln!(
                "could not take compose project {} down: remove it with `{} -p {} down -v`",
                self.project,
                self.cli.name(),
                self.project
            );
        }
    }
}

/// A command's standard output, or an error naming it; for `docker` calls beside Compose.
pub async fn docker(args: &[&str]) -> Result<String, String> {
    let out = tokio::process::Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| format!("docker {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "docker {} exited with {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Time allowed for a whole `up` on a shared, loaded machine.
pub const UP_TIMEOUT: Duration = Duration::from_secs(300);
