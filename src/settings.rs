//! Process configuration: a TOML file per process, every key overridable from the environment.
//!
//! Keys are snake_case inside sections (`[backup] dir = "..."`); the environment variable for a
//! key is `OUTPOST_` followed by its path in upper case joined with `_` (`OUTPOST_BACKUP_DIR`).
//! The set of keys comes from the settings type's defaults, so every key has a variable and no
//! variable is ambiguous (a unit test checks that for each settings type).
//!
//! Values are converted once, here: a settings struct holds `Duration`s and optional paths
//! (the adapters of [`typed`] keep the keys and their written forms), so the code that uses a
//! setting never parses it again.
//!
//! Loading never stops at the first problem: unknown keys, unknown `OUTPOST_*` variables,
//! unparsable values and failed checks are all collected and reported together, and the process
//! exits non-zero.

pub mod typed;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use outpost_model::Problems;
use serde::{Serialize, de::DeserializeOwned};
use serde_json::{Map, Value};

/// Settings types check themselves after parsing.
pub trait Validate {
    fn validate(&self, problems: &mut Problems);
}

pub const ENV_PREFIX: &str = "OUTPOST_";

/// `OUTPOST_*` variables that are not process settings, with who reads them. A typo in a
/// settings variable used to be silently ignored, so [`load`] refuses every `OUTPOST_*` variable
/// it cannot place; these are the legitimate ones it must leave alone. They often sit in the
/// same shell or env file as the settings (an operator's profile, a CI job, a compose `.env`).
/// A unit test in `src/cli.rs` checks that every `env` of the CLI's arguments is listed here.
pub const OTHER_VARIABLES: &[(&str, &str)] = &[
    (
        "OUTPOST_SERVER",
        "operator CLI: management API URL (--server)",
    ),
    (
        "OUTPOST_ADMIN_TOKEN",
        "operator CLI: admin token (--token); also the control plane's [admin] token",
    ),
    (
        "OUTPOST_STORE_URL",
        "outpost store copy: the target database (--to); also the control plane's [store] url",
    ),
    (
        "OUTPOST_STORE_CA_FILE",
        "outpost store copy: CA for TLS to the target (--ca-file); also the control plane's [store] ca_file",
    ),
    (
        "OUTPOST_ADMIN_TOKEN_FILE",
        "operator CLI: file holding the admin token (--token-file)",
    ),
    (
        "OUTPOST_IMAGE",
        "compose/docker-compose.yml: the image to run",
    ),
    (
        "OUTPOST_REDIS_IMAGE",
        "compose/docker-compose.yml and compose/build-images.sh: the Redis image",
    ),
    (
        "OUTPOST_NGINX_IMAGE",
        "compose/docker-compose.yml and compose/build-images.sh: the nginx image",
    ),
    (
        "OUTPOST_POSTGRES_IMAGE",
        "compose/docker-compose.yml and compose/build-images.sh: the PostgreSQL image",
    ),
    (
        "OUTPOST_POSTGRES_PASSWORD",
        "compose/docker-compose.yml: the PostgreSQL password (initdb, the control planes' store URL)",
    ),
    (
        "OUTPOST_BIND",
        "compose/docker-compose.yml: address the published ports bind to",
    ),
    (
        "OUTPOST_BENCH_ROUNDS",
        "benches/control_plane_sync.rs: rounds to measure",
    ),
    (
        "OUTPOST_BENCH_ROLE",
        "benches/control_plane_sync.rs: role of a child process",
    ),
    ("OUTPOST_BIN", "integration harness: the binary under test"),
    (
        "OUTPOST_TEST_REBUILD",
        "integration harness: build the binary once per test process",
    ),
    (
        "OUTPOST_TEST_PATIENCE",
        "integration harness: timeout multiplier",
    ),
    (
        "OUTPOST_TEST_KEEP_LOGS",
        "integration harness: keep every process log",
    ),
    (
        "OUTPOST_REDIS_SERVER",
        "integration harness: path of redis-server",
    ),
    (
        "OUTPOST_TEST_PG_BIN",
        "integration harness: directory of the PostgreSQL binaries (initdb, postgres, psql)",
    ),
    (
        "OUTPOST_FAULT_DURATION_SECS",
        "integration fault suite: length of each fault",
    ),
];

/// Loads `T` from its defaults, then `file`, then the environment. Every bad value is reported
/// at once: a value of the wrong type is replaced by its default for the rest of the checks, so
/// it does not hide the next one nor [`Validate`]'s. A problem about a value the file holds has
/// the line and column of its key (see [`render`]). `neighbours` are the variables of the other
/// process's settings ([`variables`]): known, so not refused, though `T` does not read them.
pub fn load<T>(
    file: Option<&Path>,
    env: &BTreeMap<String, String>,
    neighbours: &BTreeSet<String>,
) -> Result<T, Problems>
where
    T: Serialize + DeserializeOwned + Default + Validate,
{
    let mut problems = Problems::new();
    let defaults = serde_json::to_value(T::default()).expect("settings serialise");
    let mut merged = defaults.clone();
    let mut positions = BTreeMap::new();
    if let Some(path) = file {
        match std::fs::read_to_string(path) {
            Err(e) => problems.push(path.display().to_string(), format!("cannot read: {e}")),
            Ok(text) => match toml::from_str::<toml::Value>(&text) {
                Err(e) => {
                    problems.push("", format!("not valid TOML: {}", e.message().trim_end()));
                    if let (Some(span), Some(p)) = (e.span(), problems.0.last_mut()) {
                        let (line, column) = line_column(&text, span.start);
                        (p.line, p.column) = (Some(line), Some(column));
                    }
                }
                Ok(t) => {
                    positions = toml_positions(&text);
                    let from_file = serde_json::to_value(t).expect("TOML converts to JSON");
                    merge(&mut merged, &defaults, from_file, "", &mut problems);
                }
            },
        }
    }
    let mut own = BTreeSet::new();
    for (path, default) in leaves(&defaults) {
        let var = env_name(&path);
        if let Some(raw) = env.get(&var) {
            // The value no longer comes from the file: its position would mislead.
            positions.remove(&path.join("."));
            match parse_env(raw, default) {
                Ok(v) => set_path(&mut merged, &path, v),
                Err(e) => problems.push(var.clone(), e),
            }
        }
        own.insert(var);
    }
    check_unknown_variables(env, &own, neighbours, &mut problems);
    let mut parsed = None;
    // One round per bad value, each bounded by the number of settings.
    for _ in 0..=leaves(&defaults).len() {
        match serde_path_to_error::deserialize::<_, T>(merged.clone()) {
            Ok(t) => {
                parsed = Some(t);
                break;
            }
            Err(e) => {
                let path: Vec<String> = e
                    .path()
                    .iter()
                    .map_while(|s| match s {
                        serde_path_to_error::Segment::Map { key } => Some(key.clone()),
                        _ => None,
                    })
                    .collect();
                problems.push(path.join("."), e.inner().to_string());
                let default = value_at(&defaults, &path).filter(|d| !d.is_object());
                match default {
                    Some(d) if value_at(&merged, &path) != Some(d) => {
                        set_path(&mut merged, &path, d.clone());
                    }
                    // Nothing to put back: the checks that need a parsed value cannot run.
                    _ => break,
                }
            }
        }
    }
    if let Some(t) = &parsed {
        t.validate(&mut problems);
    }
    for p in &mut problems.0 {
        if let Some((line, column)) = positions.get(&p.path) {
            (p.line, p.column) = (Some(*line), Some(*column));
        }
    }
    match parsed {
        Some(t) if problems.is_empty() => Ok(t),
        _ => Err(problems),
    }
}

/// Settings problems one per line; those about a value in `file` start `FILE:LINE:COLUMN:`
/// like a compiler's, the others (environment variables) name the variable.
pub fn render(problems: &Problems, file: Option<&Path>) -> String {
    let name = file.map(|f| f.display().to_string()).unwrap_or_default();
    problems
        .0
        .iter()
        .map(|p| match (p.line, p.column) {
            (Some(l), Some(c)) => format!("- {name}:{l}:{c}: {p}"),
            _ => format!("- {p}"),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn value_at<'a>(root: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(root, |v, k| v.get(k.as_str()))
}

/// Dotted key (`log.level`) → line and column (from 1) of the key in a TOML text.
fn toml_positions(text: &str) -> BTreeMap<String, (u32, u32)> {
    use toml::de::{DeTable, DeValue};
    fn walk(text: &str, table: &DeTable<'_>, prefix: &str, out: &mut BTreeMap<String, (u32, u32)>) {
        for (k, v) in table {
            let path = if prefix.is_empty() {
                k.get_ref().to_string()
            } else {
                format!("{prefix}.{}", k.get_ref())
            };
            out.entry(path.clone())
                .or_insert_with(|| line_column(text, k.span().start));
            if let DeValue::Table(t) = v.get_ref() {
                walk(text, t, &path, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    if let Ok(root) = DeTable::parse(text) {
        walk(text, root.get_ref(), "", &mut out);
    }
    out
}

/// The 1-based line and column (in characters) of byte `offset` of `text`.
fn line_column(text: &str, offset: usize) -> (u32, u32) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (
        u32::try_from(line).unwrap_or(u32::MAX),
        u32::try_from(column).unwrap_or(u32::MAX),
    )
}

/// The `OUTPOST_*` variables of the settings type `T`, one per key.
pub fn variables<T: Serialize + Default>() -> BTreeSet<String> {
    let defaults = serde_json::to_value(T::default()).expect("settings serialise");
    leaves(&defaults).iter().map(|(p, _)| env_name(p)).collect()
}

/// Checks a `host:port` listen address.
pub fn check_listen(p: &mut Problems, key: &str, value: &str) {
    if value.parse::<std::net::SocketAddr>().is_err() {
        p.push(
            key,
            format!("'{value}' is not an address:port such as 0.0.0.0:7070"),
        );
    }
}

/// Refuses the `OUTPOST_*` variables that nothing reads: typos, mostly. A variable of the
/// *other* process's settings is not one: control plane and gateway often share an env file
/// or a shell (the demo, a single-host install, CI), and `OUTPOST_STORE_DATA_DIR` next to a
/// gateway is not a mistake in the gateway's configuration.
fn check_unknown_variables(
    env: &BTreeMap<String, String>,
    own: &BTreeSet<String>,
    others: &BTreeSet<String>,
    problems: &mut Problems,
) {
    let mut known: Vec<&str> = own.iter().map(String::as_str).collect();
    known.extend(others.iter().map(String::as_str));
    known.extend(OTHER_VARIABLES.iter().map(|(name, _)| *name));
    for var in env.keys().filter(|k| k.starts_with(ENV_PREFIX)) {
        if known.contains(&var.as_str()) {
            continue;
        }
        let hint = match closest(var, known.iter().copied()) {
            Some(near) if own.contains(near) => format!("; did you mean {near}?"),
            Some(near) if others.contains(near) => {
                format!("; did you mean {near} (a setting of the other process)?")
            }
            Some(near) => format!("; did you mean {near}?"),
            None => String::new(),
        };
        problems.push(
            var.clone(),
            format!(
                "unknown variable: no setting has this name (config/gateway.toml and \
                 config/control-plane.toml list every key){hint}"
            ),
        );
    }
}

/// The candidate nearest to `word` by edit distance, if it is near enough to be a typo of it:
/// at most one edit per five characters of `word`, and never more than three.
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let word = word.to_ascii_lowercase();
    let limit = (word.chars().count() / 5).clamp(1, 3);
    candidates
        .into_iter()
        .map(|c| (edit_distance(&word, &c.to_ascii_lowercase()), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Levenshtein distance (insertions, deletions, substitutions), by characters.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (diagonal + usize::from(ca != *cb))
                .min(above + 1)
                .min(row[j] + 1);
            diagonal = above;
        }
    }
    row[b.len()]
}

/// The process environment, for [`load`].
pub fn process_env() -> BTreeMap<String, String> {
    std::env::vars()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX))
        .collect()
}

/// `backup.dir` → `OUTPOST_BACKUP_DIR`.
pub fn env_name(path: &[String]) -> String {
    let mut s = String::from(ENV_PREFIX);
    s.push_str(&path.join("_").replace('-', "_").to_ascii_uppercase());
    s
}

/// Every leaf key of a settings tree with its default value.
pub fn leaves(v: &Value) -> Vec<(Vec<String>, &Value)> {
    fn walk<'a>(v: &'a Value, prefix: &mut Vec<String>, out: &mut Vec<(Vec<String>, &'a Value)>) {
        match v {
            Value::Object(map) => {
                for (k, child) in map {
                    prefix.push(k.clone());
                    walk(child, prefix, out);
                    prefix.pop();
                }
            }
            _ => out.push((prefix.clone(), v)),
        }
    }
    let mut out = Vec::new();
    walk(v, &mut Vec::new(), &mut out);
    out
}

fn merge(target: &mut Value, defaults: &Value, from: Value, at: &str, problems: &mut Problems) {
    let Value::Object(from) = from else {
        *target = from;
        return;
    };
    let Some(target_map) = target.as_object_mut() else {
        problems.push(at, "expected a value, found a table");
        return;
    };
    let empty = Map::new();
    let default_map = defaults.as_object().unwrap_or(&empty);
    for (k, v) in from {
        let path = if at.is_empty() {
            k.clone()
        } else {
            format!("{at}.{k}")
        };
        match default_map.get(&k) {
            None => problems.push(
                path,
                format!(
                    "unknown key; known keys here: {}",
                    default_map.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            ),
            Some(d @ Value::Object(_)) => {
                let slot = target_map.entry(k).or_insert_with(|| d.clone());
                merge(slot, d, v, &path, problems);
            }
            Some(_) => {
                target_map.insert(k, v);
            }
        }
    }
}

fn parse_env(raw: &str, default: &Value) -> Result<Value, String> {
    match default {
        Value::Bool(_) => match raw.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(Value::Bool(true)),
            "false" | "0" | "no" | "off" => Ok(Value::Bool(false)),
            _ => Err(format!("'{raw}' is not a boolean")),
        },
        Value::Number(_) => raw
            .trim()
            .parse::<serde_json::Number>()
            .map(Value::Number)
            .map_err(|_| format!("'{raw}' is not a number")),
        Value::Array(_) => {
            if raw.trim_start().starts_with('[') {
                serde_json::from_str(raw).map_err(|e| format!("not a JSON list: {e}"))
            } else {
                Ok(Value::Array(
                    raw.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(|s| Value::String(s.to_owned()))
                        .collect(),
                ))
            }
        }
        _ => Ok(Value::String(raw.to_owned())),
    }
}

fn set_path(root: &mut Value, path: &[String], v: Value) {
    let mut cur = root;
    for seg in &path[..path.len() - 1] {
        cur = &mut cur[seg.as_str()];
    }
    cur[path[path.len() - 1].as_str()] = v;
}

/// Asserts that a settings type's environment variable names are unambiguous (used by tests).
pub fn env_names_are_unique<T: Serialize + Default>() -> Result<(), String> {
    let defaults = serde_json::to_value(T::default()).expect("settings serialise");
    let mut seen = BTreeMap::new();
    for (path, _) in leaves(&defaults) {
        if let Some(prev) = seen.insert(env_name(&path), path.join(".")) {
            return Err(format!(
                "{} and {} share {}",
                prev,
                path.join("."),
                env_name(&path)
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct Sample {
        listen: String,
        backup: Backup,
    }
    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct Backup {
        enabled: bool,
        dir: String,
        keep: u32,
    }
    impl Default for Sample {
        fn default() -> Self {
            Self {
                listen: "0.0.0.0:1".into(),
                backup: Backup::default(),
            }
        }
    }
    impl Default for Backup {
        fn default() -> Self {
            Self {
                enabled: false,
                dir: "/tmp".into(),
                keep: 3,
            }
        }
    }
    impl Validate for Sample {
        fn validate(&self, p: &mut Problems) {
            if self.backup.keep == 0 {
                p.push("backup.keep", "must be at least 1");
            }
        }
    }

    #[test]
    fn every_bad_value_of_a_file_at_once_with_its_line_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("s.toml");
        std::fs::write(&f, "listen = 5\n[backup]\nenabled = \"yes\"\n  keep = 0\n").unwrap();
        let err = render(
            &load::<Sample>(Some(&f), &BTreeMap::new(), &BTreeSet::new()).unwrap_err(),
            Some(&f),
        );
        let f = f.display();
        for want in [
            format!("- {f}:1:1: listen: invalid type: integer `5`, expected a string"),
            format!("- {f}:3:1: backup.enabled: invalid type: string \"yes\", expected a boolean"),
            format!("- {f}:4:3: backup.keep: must be at least 1"),
        ] {
            assert!(err.contains(&want), "{want}\nnot in:\n{err}");
        }
        assert_eq!(err.lines().count(), 3, "{err}");

        let dir = tempfile::tempdir().unwrap();
        let g = dir.path().join("bad.toml");
        std::fs::write(&g, "listen = \"x\"\n[backup\n").unwrap();
        let p = load::<Sample>(Some(&g), &BTreeMap::new(), &BTreeSet::new()).unwrap_err();
        assert_eq!(p.len(), 1, "{p}");
        assert!(p.0[0].message.starts_with("not valid TOML"), "{p}");
        assert_eq!(p.0[0].line, Some(2), "{p:?}");
    }

    #[test]
    fn file_then_env_and_all_problems_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("s.toml");
        std::fs::write(
            &f,
            "listen = \"127.0.0.1:9\"\n[backup]\nenabled = true\nbogus = 1\n",
        )
        .unwrap();
        let env: BTreeMap<String, String> = [
            ("OUTPOST_BACKUP_DIR".to_string(), "/var/x".to_string()),
            ("OUTPOST_BACKUP_KEEP".to_string(), "zero".to_string()),
        ]
        .into();
        let err = render(
            &load::<Sample>(Some(&f), &env, &BTreeSet::new()).unwrap_err(),
            Some(&f),
        );
        assert!(
            err.contains(&format!("{}:4:1: backup.bogus: unknown key", f.display())),
            "{err}"
        );
        assert!(
            err.contains("OUTPOST_BACKUP_KEEP: 'zero' is not a number"),
            "{err}"
        );

        std::fs::write(&f, "listen = \"127.0.0.1:9\"\n[backup]\nenabled = true\n").unwrap();
        let env: BTreeMap<String, String> =
            [("OUTPOST_BACKUP_DIR".to_string(), "/var/x".to_string())].into();
        let s = load::<Sample>(Some(&f), &env, &BTreeSet::new()).unwrap();
        assert_eq!(s.listen, "127.0.0.1:9");
        assert!(s.backup.enabled);
        assert_eq!(s.backup.dir, "/var/x");
        assert!(env_names_are_unique::<Sample>().is_ok());

        let env: BTreeMap<String, String> =
            [("OUTPOST_BACKUP_KEEP".to_string(), "0".to_string())].into();
        assert!(
            load::<Sample>(None, &env, &BTreeSet::new())
                .unwrap_err()
                .to_string()
                .contains("must be at least 1")
        );
    }

    #[test]
    fn unknown_variables_are_problems_with_a_suggestion() {
        let env: BTreeMap<String, String> = [
            ("OUTPOST_BACKUP_ENABLE", "true"),
            ("OUTPOST_BACKUP_KEP", "4"),
            ("OUTPOST_NOTHING_LIKE_IT", "x"),
            // The other process's settings and the non-settings variables are not typos.
            ("OUTPOST_STORE_DATA_DIR", "/var/lib/outpost"),
            ("OUTPOST_SERVER", "http://cp:7070"),
            ("OUTPOST_TEST_PATIENCE", "3"),
            // Not ours at all.
            ("RUST_LOG", "debug"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let neighbours = BTreeSet::from(["OUTPOST_STORE_DATA_DIR".to_string()]);
        let err = load::<Sample>(None, &env, &neighbours).unwrap_err();
        let lines: Vec<String> = err.0.iter().map(ToString::to_string).collect();
        assert_eq!(lines.len(), 3, "{err}");
        assert!(
            lines[0].starts_with("OUTPOST_BACKUP_ENABLE: unknown variable")
                && lines[0].ends_with("did you mean OUTPOST_BACKUP_ENABLED?"),
            "{err}"
        );
        assert!(
            lines[1].ends_with("did you mean OUTPOST_BACKUP_KEEP?"),
            "{err}"
        );
        assert!(!lines[2].contains("did you mean"), "{err}");
    }

    #[test]
    fn suggestions_are_near_misses_only() {
        let names = ["OUTPOST_REDIS_TIMEOUT_MS", "OUTPOST_REDIS_URL"];
        assert_eq!(
            closest("OUTPOST_REDIS_TIMOUT_MS", names),
            Some("OUTPOST_REDIS_TIMEOUT_MS")
        );
        assert_eq!(
            closest("OUTPOST_REDIS_URI", names),
            Some("OUTPOST_REDIS_URL")
        );
        assert_eq!(closest("OUTPOST_CACHE_SIZE", names), None);
        assert_eq!(closest("warning", ["warn", "info"]), None);
        assert_eq!(closest("inf", ["warn", "info"]), Some("info"));
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
    }
}
