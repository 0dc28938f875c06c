//! The `outpost` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::client::ServerArgs;
use crate::control_plane::settings::ControlPlaneSettings;
use crate::gateway::settings::GatewaySettings;
use crate::settings;

#[derive(Debug, Parser)]
#[command(
    name = "outpost",
    version,
    about = "Distributed API management: one control plane, many self-hosted gateways"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the control plane (management API + dashboard on 7070, gateway endpoint on 7071).
    ControlPlane {
        /// TOML settings file; every key can also be set as `OUTPOST_<SECTION>_<KEY>`.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Run a self-hosted gateway (traffic on 8080/8443, ops on 8090).
    Gateway {
        /// TOML settings file; every key can also be set as `OUTPOST_<SECTION>_<KEY>`.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Serve this declarative file with no control plane (fully disconnected mode).
        #[arg(long)]
        offline_config: Option<PathBuf>,
    },
    /// Start a control plane, a gateway and a sample backend in one process, load a sample API,
    /// and print curl commands that work against it. Needs no Redis and no files.
    Demo {
        /// First of six consecutive ports (control plane admin, gateway endpoint, gateway
        /// traffic, gateway ops, sample backend, gateway HTTPS); 0: 7070, 7071, 8080, 8090,
        /// 9000 and 8443. A port that is taken is replaced by a free one.
        #[arg(long, default_value_t = 0)]
        port_base: u16,
    },
    /// Create and update what declarative files describe (idempotent); delete only with --prune.
    Apply {
        /// Declarative file (`apiVersion: outpost/v1`); repeat to apply several files as one (one revision, one prune).
        #[arg(long, short = 'f', required = true)]
        file: Vec<PathBuf>,
        /// Print what would change and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Also delete the resources of the kinds the files have a section for that they do
        /// not list; other kinds are never touched.
        #[arg(long)]
        prune: bool,
        /// Delete without asking (needed when standard input is not a terminal, e.g. in CI).
        #[arg(long, short = 'y')]
        yes: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Write the control plane's configuration in the declarative format.
    Export {
        /// Output file (mode 0600); standard output when absent.
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// Write secret named values in clear instead of the mask (needed to serve the file
        /// with `gateway --offline-config`).
        #[arg(long)]
        include_secrets: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Check a declarative file without a control plane; lists every problem.
    Validate {
        /// Declarative file (`apiVersion: outpost/v1`) to check.
        #[arg(long, short = 'f')]
        file: PathBuf,
    },
    /// Mint a gateway token (GatewayKey ...) from one of the gateway's keys.
    GatewayToken {
        /// Name of the gateway resource the token is for; repeat it, with --output-dir, to
        /// mint one token per gateway.
        #[arg(long, required = true)]
        gateway: Vec<String>,
        /// Lifetime such as 30m, 12h, 7d. Default: the control plane's maximum
        /// (`[tokens] max_lifetime_days`, 30 days unless changed); a longer lifetime is refused
        /// with an error naming that maximum.
        #[arg(long)]
        expires: Option<String>,
        /// Which gateway key signs the token: `primary` or `secondary` (rotate one while the
        /// other's tokens stay valid).
        #[arg(long, default_value = "primary", value_parser = ["primary", "secondary"])]
        key: String,
        /// Write each token to `DIR/<gateway>` (mode 0600, replaced atomically) instead of
        /// standard output, for gateways that read control_plane.token_file.
        #[arg(long)]
        output_dir: Option<PathBuf>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Show or rotate the control plane's config signing key (what gateways trust, see
    /// control_plane.config_signing_keys in the gateway settings).
    SigningKey {
        #[command(subcommand)]
        action: SigningKeyAction,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Work on a control-plane store directly.
    Store {
        #[command(subcommand)]
        action: StoreAction,
    },
    /// Create an API (with its operations) from an OpenAPI 3 document, as a declarative file.
    ImportOpenapi {
        /// OpenAPI 3 document, JSON or YAML.
        file: PathBuf,
        /// Name of the API to create.
        #[arg(long)]
        name: String,
        /// Backend URL (default: the document's first server).
        #[arg(long)]
        backend_url: Option<String>,
        /// Path suffix on the gateway (default: the name).
        #[arg(long)]
        path: Option<String>,
        /// Also give each operation the validation policies its description allows:
        /// validate-parameters (path and query parameters), validate-headers (header
        /// parameters) and validate-content (the JSON request body's schema, with the
        /// component schemas it refers to embedded). What cannot be checked is warned about.
        #[arg(long)]
        validate: bool,
        /// Output file; standard output when absent.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// GET a URL and exit 0 on a 2xx answer, 1 otherwise: a container health check that needs
    /// no curl or shell in the image (e.g. `outpost probe http://127.0.0.1:8090/readyz`).
    Probe {
        /// The URL to ask (http:// or https://).
        url: String,
        /// Give up after this long (e.g. 3s); counts as unhealthy.
        #[arg(long, default_value = "3s")]
        timeout: String,
    },
    /// Run the small echo backend the demo and the compose setup use.
    SampleBackend {
        /// Address and port to listen on.
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: String,
    },
}

#[derive(Debug, Clone, Copy, Subcommand)]
pub enum SigningKeyAction {
    /// Print the active public key (standard output) and the key history.
    Show,
    /// Replace the signing key with a new one, endorsed by the old one; gateways follow.
    Rotate,
}

#[derive(Debug, Clone, Subcommand)]
pub enum StoreAction {
    /// Copy a SQLite data directory into a new, empty PostgreSQL database: revisions, the
    /// change log, gateway keys (gateway tokens stay valid), signing keys and secrets, as they
    /// are. Stop the control plane using the data directory first (its lock is taken).
    Copy {
        /// The SQLite data directory (the control plane's `[store] data_dir`).
        #[arg(long)]
        from: PathBuf,
        /// `postgres://user:password@host:port/database` of the target (its schema is made by
        /// the copy); read from OUTPOST_STORE_URL when absent, which keeps the password out of
        /// the process list.
        #[arg(long, env = "OUTPOST_STORE_URL", hide_env_values = true)]
        to: String,
        /// PEM file of the CA for TLS to the target, like `[store] ca_file`.
        #[arg(long, env = "OUTPOST_STORE_CA_FILE")]
        ca_file: Option<PathBuf>,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode, String> {
    let env = settings::process_env();
    match cli.command {
        Command::ControlPlane { config } => {
            // The two processes often share an env file: the gateway's variables are no typos.
            let neighbours = settings::variables::<GatewaySettings>();
            let s = settings::load(config.as_deref(), &env, &neighbours).map_err(|p| {
                let p = settings::render(&p, config.as_deref());
                format!("invalid control plane settings:\n{p}")
            })?;
            crate::control_plane::run(s).map(|()| ExitCode::SUCCESS)
        }
        Command::Gateway {
            config,
            offline_config,
        } => {
            let mut env = env;
            if let Some(f) = offline_config {
                env.insert(
                    "OUTPOST_OFFLINE_CONFIG_FILE".into(),
                    f.display().to_string(),
                );
            }
            let neighbours = settings::variables::<ControlPlaneSettings>();
            let s = settings::load(config.as_deref(), &env, &neighbours).map_err(|p| {
                let p = settings::render(&p, config.as_deref());
                format!("invalid gateway settings:\n{p}")
            })?;
            crate::gateway::run(s)
                .map(|()| ExitCode::SUCCESS)
                .map_err(|e| e.to_string())
        }
        Command::Demo { port_base } => crate::demo::run(port_base).map(|()| ExitCode::SUCCESS),
        Command::Apply {
            file,
            dry_run,
            prune,
            yes,
            server,
        } => crate::client::apply(
            &server,
            &file,
            crate::client::ApplyFlags {
                dry_run,
                prune,
                yes,
            },
        ),
        Command::Export {
            output,
            include_secrets,
            server,
        } => crate::client::export(&server, output.as_deref(), include_secrets)
            .map(|()| ExitCode::SUCCESS),
        Command::Validate { file } => crate::client::validate(&file),
        Command::Store {
            action: StoreAction::Copy { from, to, ca_file },
        } => {
            let report = crate::control_plane::copy_store(&from, &to, ca_file.as_deref())
                .map_err(|e| e.to_string())?;
            eprintln!(
                "outpost: copied revision {} ({} resources, {} change-log entries, {} gateway \
                 key pairs, {} signing keys, {} analytics rows, {} telemetry batch ids)",
                report.revision,
                report.resources,
                report.changes,
                report.gateway_keys,
                report.signing_keys,
                report.analytics_rows,
                report.analytics_batches
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::GatewayToken {
            gateway,
            expires,
            key,
            output_dir,
            server,
        } => crate::client::gateway_token(
            &server,
            &gateway,
            expires.as_deref(),
            &key,
            output_dir.as_deref(),
        )
        .map(|()| ExitCode::SUCCESS),
        Command::SigningKey { action, server } => {
            crate::client::signing_key(&server, matches!(action, SigningKeyAction::Rotate))
                .map(|()| ExitCode::SUCCESS)
        }
        Command::ImportOpenapi {
            file,
            name,
            backend_url,
            path,
            validate,
            output,
        } => crate::client::import_openapi(
            &file,
            &name,
            backend_url.as_deref(),
            path.as_deref(),
            validate,
            output.as_deref(),
        )
        .map(|()| ExitCode::SUCCESS),
        Command::Probe { url, timeout } => {
            let timeout =
                crate::client::parse_duration(&timeout).map_err(|e| format!("--timeout: {e}"))?;
            crate::probe::run(&url, timeout).map(|()| ExitCode::SUCCESS)
        }
        Command::SampleBackend { listen } => {
            crate::sample_backend::run(&listen).map(|()| ExitCode::SUCCESS)
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// `outpost <command> --help` shows a sentence for every argument: walks the whole tree.
    #[test]
    fn every_command_and_argument_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let builtin = matches!(arg.get_id().as_str(), "help" | "version");
                if !builtin && arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} {}", arg.get_id()));
                }
            }
            for sub in cmd.get_subcommands() {
                let sub_path = format!("{path} {}", sub.get_name());
                if sub.get_name() != "help" && sub.get_about().is_none() {
                    missing.push(sub_path.clone());
                }
                walk(sub, &sub_path, missing);
            }
        }
        let mut missing = Vec::new();
        let cmd = super::Cli::command();
        cmd.clone().debug_assert();
        walk(&cmd, "outpost", &mut missing);
        assert!(missing.is_empty(), "no help text: {missing:?}");
    }

    /// The CLI's own environment variables must not be refused as unknown settings.
    #[test]
    fn cli_variables_are_known_to_the_settings_loader() {
        fn walk(cmd: &clap::Command, out: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                if let Some(env) = arg.get_env() {
                    out.push(env.to_string_lossy().into_owned());
                }
            }
            cmd.get_subcommands().for_each(|s| walk(s, out));
        }
        let mut vars = Vec::new();
        walk(&super::Cli::command(), &mut vars);
        assert!(vars.contains(&"OUTPOST_SERVER".to_string()));
        for var in vars {
            assert!(
                crate::settings::OTHER_VARIABLES
                    .iter()
                    .any(|(name, _)| *name == var),
                "{var} is read by the CLI but missing from settings::OTHER_VARIABLES"
            );
        }
    }
}
