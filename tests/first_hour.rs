//! What a new operator meets in the first hour, run as they would run it: the built binary.
//! Typos in `OUTPOST_*` variables and log levels stop the process with every problem listed,
//! logs into a pipe carry no colour codes, an unreachable Redis is named (without its
//! password), `--help` explains every argument, and every example in `config/` is valid.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use outpost::control_plane::settings::ControlPlaneSettings;
use outpost::gateway::settings::GatewaySettings;

const BIN: &str = env!("CARGO_BIN_EXE_outpost");

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// The binary with none of this shell's `OUTPOST_*` variables, so that a developer's or CI's
/// environment cannot change what the test sees.
fn outpost(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("OUTPOST_") {
            cmd.env_remove(k);
        }
    }
    cmd.env_remove("RUST_LOG");
    cmd.envs(env.iter().copied());
    cmd
}

fn run(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let Output { status, stderr, .. } = outpost(args, env).output().unwrap();
    (status.code(), String::from_utf8_lossy(&stderr).into_owned())
}

fn offline_gateway_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("OUTPOST_LISTEN_HTTP", "127.0.0.1:0"),
        ("OUTPOST_LISTEN_HTTPS", "127.0.0.1:0"),
        ("OUTPOST_LISTEN_OPS", "127.0.0.1:0"),
    ]
}

#[test]
fn typos_in_variables_and_log_levels_stop_the_gateway_with_every_problem() {
    let sample = repo("config/sample-api.yaml");
    let mut env = offline_gateway_env();
    env.extend([
        ("OUTPOST_BACKUP_ENABLE", "true"),
        ("OUTPOST_REDIS_TIMOUT_MS", "20"),
        ("OUTPOST_LOG_LEVEL", "warning"),
    ]);
    let (code, err) = run(
        &["gateway", "--offline-config", sample.to_str().unwrap()],
        &env,
    );
    assert_eq!(code, Some(1), "{err}");
    for expected in [
        "invalid gateway settings:",
        "- OUTPOST_BACKUP_ENABLE: unknown variable",
        "did you mean OUTPOST_BACKUP_ENABLED?",
        "- OUTPOST_REDIS_TIMOUT_MS: unknown variable",
        "did you mean OUTPOST_REDIS_TIMEOUT_MS?",
        "- log.level: 'warning' (did you mean warn?) is not a level; expected \
         error|warn|info|debug|trace (or off), or directives such as info,outpost=debug",
    ] {
        assert!(err.contains(expected), "{expected:?} missing from:\n{err}");
    }
}

/// A gateway that cannot start says why on one line, naming the setting or file to fix, and
/// exits with status 1.
#[test]
fn gateway_start_errors_name_what_to_fix() {
    let (code, err) = run(
        &["gateway", "--offline-config", "/nonexistent/outpost.yaml"],
        &offline_gateway_env(),
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.starts_with("error: cannot read the offline config file /nonexistent/outpost.yaml: "),
        "{err}"
    );

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let ops = taken.local_addr().unwrap().to_string();
    let sample = repo("config/sample-api.yaml");
    let mut env = offline_gateway_env();
    env.retain(|(k, _)| *k != "OUTPOST_LISTEN_OPS");
    env.push(("OUTPOST_LISTEN_OPS", &ops));
    let (code, err) = run(
        &["gateway", "--offline-config", sample.to_str().unwrap()],
        &env,
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!("error: cannot listen on {ops} (listen.ops): ")),
        "{err}"
    );
}

#[test]
fn typos_stop_the_control_plane_too_and_the_log_level_is_checked_in_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cp.toml");
    std::fs::write(
        &file,
        "[log]\nlevel = \"info,outpost=loud\"\n[admin]\nlisten = 7070\n",
    )
    .unwrap();
    let (code, err) = run(
        &["control-plane", "--config", file.to_str().unwrap()],
        &[
            ("OUTPOST_STORE_DATA_DIRR", "/tmp/x"),
            ("OUTPOST_STORE_DATA_DIR", ":memory:"),
        ],
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("invalid control plane settings:"), "{err}");
    assert!(
        err.contains("- OUTPOST_STORE_DATA_DIRR: unknown variable")
            && err.contains("did you mean OUTPOST_STORE_DATA_DIR?"),
        "{err}"
    );
    // Every bad value of the file at once, each with its line and column: a value of the
    // wrong type does not hide the level.
    let name = file.display();
    assert!(
        err.contains(&format!(
            "- {name}:2:1: log.level: 'outpost=loud' is not a level"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "- {name}:4:1: admin.listen: invalid type: integer `7070`, expected a string"
        )),
        "{err}"
    );
}

/// One gateway started the way an operator would, its log read from a pipe: the variables of
/// the other process and of the CLI are accepted, no colour codes, and the unreachable Redis
/// is named without its password together with what that means for limits.
#[test]
fn a_gateway_logging_into_a_pipe() {
    let sample = repo("config/sample-api.yaml");
    let mut env = offline_gateway_env();
    env.extend([
        // Port 1: refused at once.
        ("OUTPOST_REDIS_URL", "redis://app:s3cret-pw@127.0.0.1:1/0"),
        ("OUTPOST_STORE_DATA_DIR", "/var/lib/outpost/control-plane"),
        ("OUTPOST_SERVER", "http://127.0.0.1:7070"),
        ("OUTPOST_ADMIN_TOKEN_FILE", "/nonexistent"),
        ("OUTPOST_LOG_LEVEL", "info"),
    ]);
    let mut child = outpost(
        &["gateway", "--offline-config", sample.to_str().unwrap()],
        &env,
    )
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut log = Vec::new();
    let saw = |needle: &str, log: &mut Vec<String>| -> bool {
        if log.iter().any(|l| l.contains(needle)) {
            return true;
        }
        while let Ok(line) = rx.recv_timeout(Duration::from_secs(30)) {
            let found = line.contains(needle);
            log.push(line);
            if found {
                return true;
            }
        }
        false
    };
    let started = saw("gateway started", &mut log);
    let warned = started && saw("redis at", &mut log);
    let _ = child.kill();
    let _ = child.wait();
    let all = log.join("\n");
    assert!(started, "the gateway did not start:\n{all}");
    assert!(warned, "no Redis warning:\n{all}");
    assert!(!all.contains('\u{1b}'), "colour codes in a pipe:\n{all}");
    let warning = log.iter().find(|l| l.contains("redis at")).unwrap();
    assert!(
        warning.contains("redis://app:***@127.0.0.1:1/0")
            && warning
                .contains("rate limits and quotas are counted per node until Redis is reachable"),
        "{warning}"
    );
    assert!(!all.contains("s3cret-pw"), "password in the log:\n{all}");
}

#[test]
fn help_explains_every_argument() {
    let out = outpost(&["gateway", "--help"], &[]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(help.contains("TOML settings file"), "{help}");
    let out = outpost(&["gateway-token", "--help"], &[]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("[possible values: primary, secondary]"),
        "{help}"
    );
}

fn config_files(ext: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo("config"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    files.sort();
    files
}

/// `config/` is where the README sends people for examples: each must be valid as it stands.
#[test]
fn every_declarative_example_validates() {
    let files = config_files("yaml");
    assert!(files.len() >= 2, "{files:?}");
    for file in files {
        let out = outpost(&["validate", "-f", file.to_str().unwrap()], &[])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Each settings example loads through the real loader, and shows every key (the header of
/// each file promises that), set or commented out.
#[test]
fn every_settings_example_loads_and_lists_every_key() {
    let files = config_files("toml");
    assert_eq!(
        files.len(),
        2,
        "a new settings example? teach this test: {files:?}"
    );
    for file in files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let (defaults, problems) = match name.as_str() {
            "control-plane.toml" => (
                serde_json::to_value(ControlPlaneSettings::default()).unwrap(),
                outpost::settings::load::<ControlPlaneSettings>(
                    Some(&file),
                    &BTreeMap::new(),
                    &Default::default(),
                )
                .err(),
            ),
            // The token is the one key the example leaves to the environment, as it advises.
            "gateway.toml" => (
                serde_json::to_value(GatewaySettings::default()).unwrap(),
                outpost::settings::load::<GatewaySettings>(
                    Some(&file),
                    &[(
                        "OUTPOST_CONTROL_PLANE_TOKEN".to_string(),
                        "GatewayKey site-a&203001010000&c2lnbmF0dXJl".to_string(),
                    )]
                    .into(),
                    &Default::default(),
                )
                .err(),
            ),
            other => panic!("no settings type for config/{other}"),
        };
        assert!(problems.is_none(), "{name}: {}", problems.unwrap());
        let text = std::fs::read_to_string(&file).unwrap();
        let shown = shown_keys(&text);
        for (path, _) in outpost::settings::leaves(&defaults) {
            let key = path.join(".");
            assert!(shown.contains(&key), "{name} does not show {key}");
        }
    }
}

/// `section.key` for every `key = …` or `# key = …` line of a settings example.
fn shown_keys(text: &str) -> Vec<String> {
    let mut section = String::new();
    let mut keys = Vec::new();
    for line in text.lines().map(str::trim) {
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.to_owned();
            continue;
        }
        let line = line.strip_prefix("# ").unwrap_or(line);
        if let Some((key, _)) = line.split_once(" = ")
            && key
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            keys.push(format!("{section}.{key}"));
        }
    }
    keys
}
