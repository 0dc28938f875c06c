//! Operator commands that talk to the management API (`apply`, `export`, `gateway-token`) and
//! the offline ones (`validate`, `import-openapi`).
//!
//! The HTTP calls are blocking (reqwest's blocking client): these are one-shot commands. Each
//! command has a library function returning data ([`Connection::apply`], [`Connection::export`],
//! [`Connection::gateway_token`], [`import_openapi_value`]) and a thin CLI wrapper that prints.

use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use outpost_model::document::{API_VERSION, Document};
use outpost_model::{Problem, Problems};
use serde_json::{Map, Value, json};

use crate::control_plane::admin_api::{Action, ApplyResult};
use crate::control_plane::error::ErrorBody;
use crate::control_plane::gateway_state::SigningKeysResponse;
use crate::control_plane::tokens::TokenResponse;

/// Where the CLI looks for the admin token when none is given (the default data directory).
pub const DEFAULT_TOKEN_FILE: &str = "./outpost-data/admin-token";

/// Where the management API is and how to authenticate to it.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// Management API base URL.
    #[arg(long, env = "OUTPOST_SERVER", default_value = "http://127.0.0.1:7070")]
    pub server: String,
    /// Admin bearer token.
    #[arg(long, env = "OUTPOST_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// File holding the admin token (the control plane writes `<data_dir>/admin-token`).
    #[arg(long, env = "OUTPOST_ADMIN_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
}

/// A failed call: the server's error body when it sent one.
#[derive(Debug)]
pub enum CallError {
    Api { status: u16, body: ErrorBody },
    Other(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Api { status, body } => {
                write!(f, "HTTP {status} {}: {}", body.error, body.message)?;
                for p in &body.problems {
                    write!(f, "\n  - {p}")?;
                }
                Ok(())
            }
            CallError::Other(m) => f.write_str(m),
        }
    }
}

/// An error with its chain of causes: reqwest's own message ("error sending request for url")
/// says nothing about why, which is in the sources (connection refused, TLS, timeout, DNS).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let m = cause.to_string();
        // Some layers repeat their source's text in their own.
        if !m.is_empty() && !out.contains(&m) {
            out.push_str(": ");
            out.push_str(&m);
        }
        source = cause.source();
    }
    out
}

/// How `POST /api/v1/apply` is asked to apply a file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyOptions {
    pub dry_run: bool,
    /// Also delete the resources of the file's kinds that it does not list.
    pub prune: bool,
    /// Apply only if the global revision is still this one (the revision a reviewed plan was
    /// computed at).
    pub if_revision: Option<u64>,
}

impl From<CallError> for String {
    fn from(e: CallError) -> String {
        e.to_string()
    }
}

/// An authenticated connection to the management API.
pub struct Connection {
    base: String,
    token: String,
    http: reqwest::blocking::Client,
}

impl Connection {
    pub fn new(server: &str, token: &str) -> Result<Connection, String> {
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .map_err(|e| format!("cannot create an HTTP client: {}", error_chain(&e)))?;
        Ok(Connection {
            base: server.trim_end_matches('/').to_owned(),
            token: token.trim().to_owned(),
            http,
        })
    }

    /// From `--server` and `--token` / `OUTPOST_ADMIN_TOKEN` / `--token-file`, falling back to
    /// [`DEFAULT_TOKEN_FILE`] when it exists.
    pub fn from_args(args: &ServerArgs) -> Result<Connection, String> {
        let token = match (&args.token, &args.token_file) {
            (Some(t), _) if !t.trim().is_empty() => t.clone(),
            (_, Some(f)) => read_token_file(f)?,
            _ if Path::new(DEFAULT_TOKEN_FILE).exists() => {
                read_token_file(Path::new(DEFAULT_TOKEN_FILE))?
            }
            _ => {
                return Err(
                    "no admin token: pass --token, set OUTPOST_ADMIN_TOKEN, or pass --token-file \
                     (the control plane keeps a generated token in <data_dir>/admin-token)"
                        .into(),
                );
            }
        };
        Connection::new(&args.server, &token)
    }

    fn url(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.base)
    }

    fn send(&self, req: reqwest::blocking::RequestBuilder) -> Result<String, CallError> {
        let res = req.bearer_auth(&self.token).send().map_err(|e| {
            CallError::Other(format!("cannot reach {}: {}", self.base, error_chain(&e)))
        })?;
        let status = res.status();
        let text = res.text().map_err(|e| {
            CallError::Other(format!(
                "reading the answer of {}: {}",
                self.base,
                error_chain(&e)
            ))
        })?;
        if status.is_success() {
            return Ok(text);
        }
        match serde_json::from_str::<ErrorBody>(&text) {
            Ok(body) => Err(CallError::Api {
                status: status.as_u16(),
                body,
            }),
            Err(_) => Err(CallError::Other(format!(
                "HTTP {status} from {}: {}",
                self.base,
                text.chars().take(500).collect::<String>()
            ))),
        }
    }

    fn json<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, CallError> {
        serde_json::from_str(text)
            .map_err(|e| CallError::Other(format!("unexpected answer ({e}): {text}")))
    }

    /// `POST /api/v1/apply` with a declarative file's text (YAML or JSON), additive: nothing
    /// is deleted.
    pub fn apply(&self, text: &str, dry_run: bool) -> Result<ApplyResult, CallError> {
        self.apply_with(
            text,
            ApplyOptions {
                dry_run,
                ..ApplyOptions::default()
            },
        )
    }

    /// `POST /api/v1/apply?dry_run=…&prune=…` (with `If-Match` when `if_revision` is set).
    pub fn apply_with(&self, text: &str, opts: ApplyOptions) -> Result<ApplyResult, CallError> {
        let mut req = self
            .http
            .post(self.url(&format!(
                "/apply?dry_run={}&prune={}",
                opts.dry_run, opts.prune
            )))
            .header(reqwest::header::CONTENT_TYPE, "application/yaml")
            .body(text.to_owned());
        if let Some(rev) = opts.if_revision {
            req = req.header(reqwest::header::IF_MATCH, format!("\"{rev}\""));
        }
        Self::json(&self.send(req)?)
    }

    /// `GET /api/v1/export`: the whole configuration as YAML, secrets masked.
    pub fn export(&self) -> Result<String, CallError> {
        self.send(self.http.get(self.url("/export")))
    }

    /// `GET /api/v1/export?include_secrets=true`: as [`Connection::export`], secret named
    /// values in clear (what an offline gateway needs).
    pub fn export_including_secrets(&self) -> Result<String, CallError> {
        self.send(self.http.get(self.url("/export?include_secrets=true")))
    }

    /// `POST /api/v1/gateways/{gateway}/token`; without a lifetime the control plane's maximum.
    pub fn gateway_token(
        &self,
        gateway: &str,
        lifetime: Option<Duration>,
        key: &str,
    ) -> Result<TokenResponse, CallError> {
        let body = match lifetime {
            Some(l) => json!({"key": key, "lifetime-secs": l.as_secs()}),
            None => json!({"key": key}),
        };
        let req = self
            .http
            .post(self.url(&format!("/gateways/{gateway}/token")))
            .json(&body);
        Self::json(&self.send(req)?)
    }

    /// `GET /api/v1/signing-keys`, or `POST /api/v1/signing-keys/rotate` when `rotate`.
    pub fn signing_keys(&self, rotate: bool) -> Result<SigningKeysResponse, CallError> {
        let req = if rotate {
            self.http.post(self.url("/signing-keys/rotate"))
        } else {
            self.http.get(self.url("/signing-keys"))
        };
        Self::json(&self.send(req)?)
    }
}

fn read_token_file(path: &Path) -> Result<String, String> {
    let t = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the admin token from {}: {e}", path.display()))?;
    let t = t.trim();
    if t.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(t.to_owned())
}

fn read_file(file: &Path) -> Result<String, String> {
    std::fs::read_to_string(file).map_err(|e| format!("cannot read {}: {e}", file.display()))
}

/// What `outpost apply` was asked to do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyFlags {
    pub dry_run: bool,
    pub prune: bool,
    /// Delete without asking.
    pub yes: bool,
}

/// `outpost apply -f FILE [-f FILE…] [--prune] [--dry-run] [--yes]`: prints the changes; on
/// validation errors prints every problem with its location and exits non-zero.
///
/// Only `--prune` can delete. A plan that deletes is shown and needs a "yes" typed at the
/// terminal, or `--yes`; without a terminal (CI) and without `--yes` it is refused, since
/// nobody can have reviewed it.
pub fn apply(
    server: &ServerArgs,
    files: &[PathBuf],
    flags: ApplyFlags,
) -> Result<ExitCode, String> {
    let (text, label) = read_declarative_files(files)?;
    let conn = Connection::from_args(server)?;
    let mut opts = ApplyOptions {
        dry_run: flags.dry_run,
        prune: flags.prune,
        if_revision: None,
    };
    if flags.prune && !flags.dry_run && !flags.yes {
        let plan = match conn.apply_with(
            &text,
            ApplyOptions {
                dry_run: true,
                ..opts
            },
        ) {
            Ok(plan) => plan,
            Err(e) => return apply_failed(&label, files.len() == 1, e),
        };
        let deletes = plan
            .changes
            .iter()
            .filter(|c| c.action == Action::Delete)
            .count();
        if deletes > 0 {
            print!("{}", format_changes(&plan));
            let _ = std::io::stdout().flush();
            if !std::io::stdin().is_terminal() {
                eprintln!(
                    "error: refusing to delete {deletes} resource(s) without confirmation: standard input is not a terminal; \
                     review the plan (--dry-run) and pass --yes to apply it. Nothing was changed."
                );
                return Ok(ExitCode::FAILURE);
            }
            if !confirm(&format!(
                "Apply {} change(s), deleting {deletes} resource(s)? [y/N] ",
                plan.changes.len()
            ))? {
                eprintln!("cancelled; nothing was changed");
                return Ok(ExitCode::FAILURE);
            }
        }
        // Exactly the reviewed plan: anything written since makes the apply fail (412).
        opts.if_revision = Some(plan.revision);
    }
    match conn.apply_with(&text, opts) {
        Ok(result) => {
            print!("{}", format_apply(&result));
            Ok(ExitCode::SUCCESS)
        }
        Err(CallError::Api { status: 412, body }) if opts.if_revision.is_some() => Err(format!(
            "the configuration changed while the plan was being confirmed ({}); nothing was changed, run the command again",
            body.message
        )),
        Err(e) => apply_failed(&label, files.len() == 1, e),
    }
}

/// `one_file`: the server saw the file as written, so its lines and columns are the file's;
/// several files are sent merged into one document, where they would point nowhere useful.
fn apply_failed(label: &str, one_file: bool, e: CallError) -> Result<ExitCode, String> {
    match e {
        // 400: a resource of the file; 409: resources that do not fit together, in the file or
        // with the stored configuration.
        CallError::Api {
            status: 400 | 409,
            body,
        } => {
            eprintln!("{label}: {}", body.message);
            let mut problems = Problems(body.problems);
            if !problems.is_empty() {
                if !one_file {
                    for p in &mut problems.0 {
                        (p.line, p.column) = (None, None);
                    }
                }
                eprintln!("{}", problems.render_in(label));
            }
            Ok(ExitCode::FAILURE)
        }
        e => Err(e.into()),
    }
}

/// Asks on the terminal; only `y` or `yes` agrees.
fn confirm(question: &str) -> Result<bool, String> {
    eprint!("{question}");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin()
        .read_line(&mut answer)
        .map_err(|e| format!("cannot read the answer: {e}"))?;
    Ok(matches!(
        answer.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    ))
}

/// The text of one file, or several files merged into one document (their lists concatenated)
/// so that they are applied, and pruned, as one: a team's file never prunes another team's
/// resources when all the files are applied together. Also returns how to name the input in
/// messages.
pub fn read_declarative_files(files: &[PathBuf]) -> Result<(String, String), String> {
    match files {
        [] => Err("no file given (-f FILE)".into()),
        [one] => Ok((read_file(one)?, one.display().to_string())),
        many => {
            let mut parsed = Vec::new();
            for f in many {
                let text = read_file(f)?;
                let value: Value = serde_saphyr::from_str(&text)
                    .map_err(|e| format!("{}: not valid YAML: {e}", f.display()))?;
                parsed.push((f.as_path(), value));
            }
            let merged = merge_documents(parsed)?;
            let label = many
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(" + ");
            Ok((merged.to_string(), label))
        }
    }
}

/// Concatenates the resource lists of several declarative files; every conflict is listed.
/// Per-resource checks (duplicates across files included) are the control plane's, on the
/// merged document.
pub fn merge_documents(files: Vec<(&Path, Value)>) -> Result<Value, String> {
    let mut problems = Vec::new();
    let mut merged = Map::new();
    let mut policies_from: Option<&Path> = None;
    for (file, value) in files {
        let Value::Object(map) = value else {
            problems.push(format!(
                "{}: the file must be a map with apiVersion and resource lists",
                file.display()
            ));
            continue;
        };
        for (section, items) in map {
            match (section.as_str(), items) {
                ("apiVersion", v) => match merged.get("apiVersion") {
                    Some(first) if *first != v => problems.push(format!(
                        "{}: apiVersion {v} differs from the other files' {first}",
                        file.display()
                    )),
                    Some(_) => {}
                    None => {
                        merged.insert(section, v);
                    }
                },
                ("policies", v) => match policies_from {
                    Some(first) => problems.push(format!(
                        "{}: the global policies are also in {}; keep them in one file",
                        file.display(),
                        first.display()
                    )),
                    None => {
                        policies_from = Some(file);
                        merged.insert(section, v);
                    }
                },
                (_, Value::Null) => {
                    merged
                        .entry(section)
                        .or_insert_with(|| Value::Array(vec![]));
                }
                (_, Value::Array(items)) => {
                    // Only lists are ever inserted for these sections.
                    if let Value::Array(all) = merged
                        .entry(section)
                        .or_insert_with(|| Value::Array(vec![]))
                    {
                        all.extend(items);
                    }
                }
                (_, _) => problems.push(format!("{}: {section} must be a list", file.display())),
            }
        }
    }
    if problems.is_empty() {
        Ok(Value::Object(merged))
    } else {
        Err(format!(
            "the files cannot be applied together:\n- {}",
            problems.join("\n- ")
        ))
    }
}

/// The change lines of a plan or result.
pub fn format_changes(r: &ApplyResult) -> String {
    let mut out = String::new();
    for c in &r.changes {
        let verb = match c.action {
            Action::Create => "create",
            Action::Update => "update",
            Action::Delete => "delete",
        };
        out.push_str(&format!("{verb:<7} {}\n", c.key));
    }
    out
}

/// The text `outpost apply` prints for a result.
pub fn format_apply(r: &ApplyResult) -> String {
    let mut out = format_changes(r);
    let n = r.changes.len();
    if r.dry_run {
        out.push_str(&format!(
            "dry run: {n} change(s) would be made, {} resource(s) unchanged; nothing was changed (revision {})\n",
            r.unchanged, r.revision
        ));
    } else if n == 0 {
        out.push_str(&format!(
            "no changes, {} resource(s) unchanged (revision {})\n",
            r.unchanged, r.revision
        ));
    } else {
        out.push_str(&format!(
            "applied {n} change(s), {} resource(s) unchanged; now at revision {}\n",
            r.unchanged, r.revision
        ));
    }
    out
}

/// `outpost export [-o FILE] [--include-secrets]`.
pub fn export(
    server: &ServerArgs,
    output: Option<&Path>,
    include_secrets: bool,
) -> Result<(), String> {
    let conn = Connection::from_args(server)?;
    let yaml = if include_secrets {
        conn.export_including_secrets()?
    } else {
        conn.export()?
    };
    write_output(output, &yaml, true)?;
    if include_secrets {
        match output {
            Some(path) => eprintln!(
                "warning: {} contains secret values in clear (mode 0600); do not commit or share it",
                path.display()
            ),
            None => eprintln!(
                "warning: the export on standard output contains secret values in clear; do not commit or share it"
            ),
        }
    }
    Ok(())
}

/// Writes to a file (owner-only when created) or stdout. `private`: also make an existing file
/// owner-only before writing, since an export holds subscription keys and maybe secrets.
fn write_output(output: Option<&Path>, text: &str, private: bool) -> Result<(), String> {
    match output {
        None => {
            let mut stdout = std::io::stdout().lock();
            stdout
                .write_all(text.as_bytes())
                .and_then(|()| stdout.flush())
                .map_err(|e| format!("cannot write to standard output: {e}"))
        }
        Some(path) => {
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create(true).truncate(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                options.mode(0o600);
            }
            let mut file = options
                .open(path)
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            #[cfg(unix)]
            if private {
                use std::os::unix::fs::PermissionsExt;
                file.set_permissions(std::fs::Permissions::from_mode(0o600))
                    .map_err(|e| format!("cannot make {} owner-only: {e}", path.display()))?;
            }
            #[cfg(not(unix))]
            let _ = private;
            file.write_all(text.as_bytes())
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            eprintln!("wrote {}", path.display());
            Ok(())
        }
    }
}

/// Checks a declarative file offline.
pub fn validate(file: &Path) -> Result<ExitCode, String> {
    let text = read_file(file)?;
    // The same two checks the control plane runs before accepting a change: the model's rules,
    // then the gateway's own compiler; and, since a valid file must also be servable offline,
    // no secret left as the export mask.
    // Their problems name resources by key; the index puts them back in the file.
    let checked = Document::from_yaml_indexed(&text).and_then(|(doc, index)| {
        let mut problems = doc.masked_secrets();
        problems.extend(outpost_actors::route_table::validate_config(&doc.resources));
        index.locate(problems).into_result().map(|()| doc)
    });
    match checked {
        Ok(doc) => {
            println!(
                "{}: valid, {} resources",
                file.display(),
                doc.resources.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(problems) => {
            let name = file.display().to_string();
            eprintln!(
                "{name}: {} problem(s):\n{}",
                problems.len(),
                problems.render_in(&name)
            );
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `outpost gateway-token --gateway NAME --expires 7d --key primary`: prints the token. Without
/// `--expires` the token gets the control plane's longest lifetime; a longer one is refused by
/// the control plane, whose message names the maximum.
///
/// With `output_dir`, one token per gateway goes to `<output_dir>/<gateway>` instead (mode 0600,
/// replaced atomically: a gateway starting meanwhile reads the old token or the new one, never
/// half of one), for gateways that read `control_plane.token_file`.
pub fn gateway_token(
    server: &ServerArgs,
    gateways: &[String],
    expires: Option<&str>,
    key: &str,
    output_dir: Option<&Path>,
) -> Result<(), String> {
    let lifetime = expires
        .map(parse_duration)
        .transpose()
        .map_err(|e| format!("--expires: {e}"))?;
    if !matches!(key, "primary" | "secondary") {
        return Err(format!("--key must be primary or secondary, not '{key}'"));
    }
    if gateways.len() != 1 && output_dir.is_none() {
        return Err("several --gateway need --output-dir (one token file per gateway)".into());
    }
    for gateway in gateways {
        // The name becomes a file name: nothing that could leave the directory.
        if gateway.is_empty() || gateway.starts_with('.') || gateway.contains(['/', '\\']) {
            return Err(format!("--gateway '{gateway}' is not a gateway name"));
        }
    }
    let conn = Connection::from_args(server)?;
    let mut signing_keys = Vec::new();
    for gateway in gateways {
        let token = conn.gateway_token(gateway, lifetime, key)?;
        let written = output_dir
            .map(|dir| {
                let path = dir.join(gateway);
                write_secret_file(&path, &format!("{}\n", token.value))?;
                Ok::<_, String>(format!(", written to {} (mode 0600)", path.display()))
            })
            .transpose()?;
        eprintln!(
            "token for gateway '{gateway}' from its {key} key, valid until {}{}",
            token.expiry,
            written.as_deref().unwrap_or_default()
        );
        if output_dir.is_none() {
            println!("{}", token.value);
        }
        signing_keys = token.config_signing_keys;
    }
    // Standard error, so that `$(outpost gateway-token ...)` still captures only the token.
    if !signing_keys.is_empty() {
        eprintln!(
            "config signing key to trust (gateway setting control_plane.config_signing_keys, \
             env OUTPOST_CONTROL_PLANE_CONFIG_SIGNING_KEYS): {}",
            signing_keys.join(",")
        );
    }
    Ok(())
}

/// Writes an owner-only file next to `path`, then renames it over `path`.
fn write_secret_file(path: &Path, text: &str) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_file_name(format!(
        ".{}.tmp",
        path.file_name().unwrap_or_default().to_string_lossy()
    ));
    let fail = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
    // A leftover from an interrupted run may have any mode: start afresh.
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(fail(e)),
        _ => {}
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(fail)?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)
}

/// `outpost signing-key show|rotate`: the active public key on standard output, the history
/// on standard error.
pub fn signing_key(server: &ServerArgs, rotate: bool) -> Result<(), String> {
    let conn = Connection::from_args(server)?;
    let keys = conn.signing_keys(rotate)?;
    if rotate {
        eprintln!(
            "signing key rotated: configurations are now signed with the new key, endorsed by \
             the previous one. Add the new key to control_plane.config_signing_keys of the \
             gateways that list keys explicitly, then remove the old one when all have synced."
        );
    }
    for k in &keys.keys {
        let state = if k.key == keys.active {
            "active"
        } else {
            "retired"
        };
        let by = if k.endorsed_by.is_empty() {
            String::new()
        } else {
            format!(", endorsed by {}", k.endorsed_by)
        };
        eprintln!("  {} ({state}, created {}{by})", k.key, k.created_at);
    }
    println!("{}", keys.active);
    Ok(())
}

/// `30m`, `12h`, `7d`, `90s`, or combinations such as `1d12h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration; write e.g. 30m, 12h or 7d".into());
    }
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 7 * 86_400,
            _ => {
                return Err(format!(
                    "'{s}': unknown unit '{c}'; use s, m, h, d or w (e.g. 30m, 12h, 7d)"
                ));
            }
        };
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("'{s}': a number must come before '{c}'"))?;
        digits.clear();
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| format!("'{s}' is too long"))?;
    }
    if !digits.is_empty() {
        return Err(format!(
            "'{s}': the number {digits} needs a unit (s, m, h, d or w)"
        ));
    }
    if total == 0 {
        return Err(format!("'{s}' is zero"));
    }
    Ok(Duration::from_secs(total))
}

// === import-openapi ===

/// `outpost import-openapi FILE --name N [--backend-url U] [--path P] [--validate] [-o OUT]`.
pub fn import_openapi(
    file: &Path,
    name: &str,
    backend_url: Option<&str>,
    path: Option<&str>,
    validate: bool,
    output: Option<&Path>,
) -> Result<(), String> {
    let text = read_file(file)?;
    let spec = parse_spec(&text).map_err(|e| format!("{}: {e}", file.display()))?;
    let imported = import_openapi_value(&spec, name, backend_url, path, validate)
        .map_err(|e| format!("{}: {e}", file.display()))?;
    for w in &imported.warnings {
        eprintln!("warning: {w}");
    }
    let yaml = format!(
        "# Generated by `outpost import-openapi` from {}.\n{}",
        file.file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default(),
        imported.document.to_yaml()
    );
    write_output(output, &yaml, false)
}

/// Parses an OpenAPI document given as JSON or YAML.
pub fn parse_spec(text: &str) -> Result<Value, String> {
    if text.trim_start().starts_with('{') {
        serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))
    } else {
        serde_saphyr::from_str(text).map_err(|e| format!("not valid YAML: {e}"))
    }
}

/// The result of an import: a validated declarative document and what was adapted on the way.
#[derive(Debug)]
pub struct Imported {
    pub document: Document,
    pub warnings: Vec<String>,
}

const HTTP_METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// Builds a backend and an API (operations from paths × methods) from an OpenAPI 3 document;
/// with `validate`, each operation also gets the validation policies its description allows
/// ([`crate::openapi_policies`]).
pub fn import_openapi_value(
    spec: &Value,
    name: &str,
    backend_url: Option<&str>,
    path: Option<&str>,
    validate: bool,
) -> Result<Imported, String> {
    if spec.get("swagger").is_some() {
        return Err("Swagger 2.0 documents are not supported; convert to OpenAPI 3 first".into());
    }
    match spec.get("openapi").and_then(Value::as_str) {
        Some(v) if v.starts_with("3.") => {}
        Some(v) => return Err(format!("OpenAPI version {v} is not supported (3.x is)")),
        None => return Err("not an OpenAPI 3 document (no 'openapi: 3.x' field)".into()),
    }
    let mut warnings = Vec::new();
    let url = match backend_url {
        Some(u) => u.to_owned(),
        None => first_server_url(spec)?,
    };
    let url = url.trim_end_matches('/').to_owned();
    let api_path = path.unwrap_or(name).trim_matches('/').to_owned();

    let mut operations = Vec::new();
    let mut names = std::collections::HashSet::new();
    let paths = spec
        .get("paths")
        .and_then(Value::as_object)
        .ok_or("the document has no 'paths'")?;
    for (p, item_value) in paths {
        let Some(item) = item_value.as_object() else {
            continue;
        };
        let (template, warning) = convert_template(p);
        if let Some(w) = warning {
            warnings.push(w);
        }
        for method in HTTP_METHODS {
            let Some(op) = item.get(method) else {
                continue;
            };
            let base = op
                .get("operationId")
                .and_then(Value::as_str)
                .map(sanitize_name)
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| sanitize_name(&format!("{method} {p}")));
            let mut op_name = base.clone();
            let mut i = 2;
            while !names.insert(op_name.clone()) {
                op_name = format!("{}-{i}", truncate(&base, 76));
                i += 1;
            }
            let mut operation = json!({
                "name": op_name,
                "method": method.to_ascii_uppercase(),
                "url-template": template,
            });
            if validate {
                let params: Vec<String> = template
                    .split('/')
                    .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
                    .map(str::to_owned)
                    .collect();
                let policies = crate::openapi_policies::validation_policies(
                    spec,
                    item_value,
                    op,
                    &format!("operation '{op_name}'"),
                    &param_name,
                    &params,
                    &mut warnings,
                );
                if !policies.is_empty() {
                    operation["policies"] = json!({"inbound": policies});
                }
            }
            operations.push(operation);
        }
    }
    if operations.is_empty() {
        warnings.push("the document has no operations; the API has none either".into());
    }
    let mut api = Map::new();
    api.insert("name".into(), json!(name));
    if let Some(title) = spec.pointer("/info/title").and_then(Value::as_str) {
        api.insert("display-name".into(), json!(title));
    }
    api.insert("path".into(), json!(api_path));
    api.insert("backend".into(), json!(name));
    api.insert("operations".into(), Value::Array(operations));
    let file = json!({
        "apiVersion": API_VERSION,
        "backends": [{"name": name, "url": url}],
        "apis": [Value::Object(api)],
    });
    let document = Document::from_value(file).map_err(|p| {
        format!(
            "the generated file is not valid ({} problem(s)):\n{p}",
            p.len()
        )
    })?;
    Ok(Imported { document, warnings })
}

/// The first server's URL with its variables set to their defaults.
fn first_server_url(spec: &Value) -> Result<String, String> {
    let server = spec
        .pointer("/servers/0")
        .ok_or("the document lists no servers; give --backend-url")?;
    let mut url = server
        .get("url")
        .and_then(Value::as_str)
        .ok_or("the first server has no url; give --backend-url")?
        .to_owned();
    if let Some(vars) = server.get("variables").and_then(Value::as_object) {
        for (k, v) in vars {
            if let Some(d) = v.get("default").and_then(Value::as_str) {
                url = url.replace(&format!("{{{k}}}"), d);
            }
        }
    }
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(format!(
            "the first server URL '{url}' is not an absolute http(s) URL; give --backend-url"
        ));
    }
    Ok(url)
}

/// `/orders/{orderId}` stays; a segment mixing text and parameters (`/{name}.{ext}`) becomes one
/// parameter (with a warning), since Outpost templates take whole segments.
fn convert_template(p: &str) -> (String, Option<String>) {
    let mut warning = None;
    let segments: Vec<String> = p
        .trim_start_matches('/')
        .split('/')
        .map(|seg| {
            if !seg.contains('{') && !seg.contains('}') {
                return seg.to_owned();
            }
            if seg.starts_with('{') && seg.ends_with('}') && seg.matches('{').count() == 1 {
                return format!("{{{}}}", param_name(&seg[1..seg.len() - 1]));
            }
            warning = Some(format!(
                "path '{p}': segment '{seg}' mixes text and parameters; it matches as one parameter"
            ));
            format!("{{{}}}", param_name(seg))
        })
        .collect();
    (format!("/{}", segments.join("/")), warning)
}

fn param_name(s: &str) -> String {
    let n: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let n = n.trim_matches('_').to_owned();
    if n.is_empty() { "param".into() } else { n }
}

/// `getOrderById` → `get-order-by-id`; `GET /orders/{id}` → `get-orders-id`.
pub fn sanitize_name(s: &str) -> String {
    let mut out = String::new();
    let mut prev_lower = false;
    for c in s.chars() {
        if c.is_ascii_uppercase() {
            if prev_lower {
                out.push('-');
            }
            out.push(c.to_ascii_lowercase());
            prev_lower = false;
        } else if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
            prev_lower = true;
        } else if matches!(c, '.' | '_') {
            out.push(c);
            prev_lower = false;
        } else {
            out.push('-');
            prev_lower = false;
        }
    }
    let mut collapsed = String::new();
    for c in out.chars() {
        if c == '-' && collapsed.ends_with('-') {
            continue;
        }
        collapsed.push(c);
    }
    let trimmed = collapsed
        .trim_start_matches(|c: char| !c.is_ascii_alphanumeric())
        .trim_end_matches('-');
    truncate(trimmed, 80).trim_end_matches('-').to_owned()
}

fn truncate(s: &str, n: usize) -> &str {
    // Names are ASCII here.
    &s[..s.len().min(n)]
}

/// Problems as the CLI prints them, one per line with its location.
pub fn format_problems(problems: &[Problem]) -> String {
    Problems(problems.to_vec()).to_string()
}

/// The token file the control plane writes in a data directory.
pub fn token_file_in(data_dir: &Path) -> PathBuf {
    data_dir.join(crate::control_plane::auth::TOKEN_FILE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_duration("12h").unwrap(), Duration::from_secs(43_200));
        assert_eq!(parse_duration("7d").unwrap(), Duration::from_secs(604_800));
        assert_eq!(
            parse_duration("1d12h").unwrap(),
            Duration::from_secs(129_600)
        );
        for bad in ["", "7", "d", "7x", "0m", "-1h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn several_files_merge_into_one_document_and_conflicts_are_all_listed() {
        let a = json!({"apiVersion": "outpost/v1", "apis": [{"name": "a"}], "policies": {}});
        let b = json!({"apiVersion": "outpost/v1", "apis": [{"name": "b"}], "subscriptions": null});
        let merged = merge_documents(vec![
            (Path::new("a.yaml"), a.clone()),
            (Path::new("b.yaml"), b),
        ])
        .unwrap();
        assert_eq!(merged["apis"], json!([{"name": "a"}, {"name": "b"}]));
        assert_eq!(
            merged["subscriptions"],
            json!([]),
            "an empty section stays a section"
        );
        let c = json!({"apiVersion": "outpost/v2", "policies": {}, "apis": {}});
        let err =
            merge_documents(vec![(Path::new("a.yaml"), a), (Path::new("c.yaml"), c)]).unwrap_err();
        for want in [
            "c.yaml: apiVersion",
            "c.yaml: the global policies are also in a.yaml",
            "c.yaml: apis must be a list",
        ] {
            assert!(err.contains(want), "{want} in {err}");
        }
    }

    #[test]
    fn names_are_sanitised() {
        assert_eq!(sanitize_name("getOrderById"), "get-order-by-id");
        assert_eq!(sanitize_name("get /orders/{id}"), "get-orders-id");
        assert_eq!(sanitize_name("List_Orders v2"), "list_orders-v2");
        assert_eq!(sanitize_name("__x"), "x");
        assert_eq!(sanitize_name(&"a".repeat(100)).len(), 80);
    }

    #[test]
    fn imports_an_openapi_document() {
        let spec = parse_spec(
            r#"
openapi: 3.0.3
info: {title: Orders, version: "1"}
servers:
  - url: "https://{host}/v2/"
    variables: {host: {default: orders.example.com}}
paths:
  /orders:
    get: {operationId: listOrders}
    post: {operationId: createOrder}
  /orders/{order.id}:
    get: {operationId: getOrder}
    delete: {}
  /files/{name}.{ext}:
    get: {operationId: getOrder}
"#,
        )
        .unwrap();
        let imported = import_openapi_value(&spec, "orders", None, None, false).unwrap();
        assert_eq!(imported.warnings.len(), 1, "{:?}", imported.warnings);
        let v = imported.document.to_value();
        assert_eq!(v["backends"][0]["url"], "https://orders.example.com/v2");
        let api = &v["apis"][0];
        assert_eq!(api["path"], "orders");
        assert_eq!(api["display-name"], "Orders");
        let ops: Vec<(String, String, String)> = api["operations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| {
                (
                    o["name"].as_str().unwrap().to_owned(),
                    o["method"].as_str().unwrap().to_owned(),
                    o["url-template"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        let expect = |n: &str, m: &str, t: &str| (n.to_owned(), m.to_owned(), t.to_owned());
        assert!(
            ops.contains(&expect("list-orders", "GET", "/orders")),
            "{ops:?}"
        );
        assert!(ops.contains(&expect("create-order", "POST", "/orders")));
        // Duplicate operation ids get a suffix (which one depends on the paths' order).
        let get_orders: Vec<&(String, String, String)> = ops
            .iter()
            .filter(|o| o.0.starts_with("get-order"))
            .collect();
        assert_eq!(get_orders.len(), 2, "{ops:?}");
        assert!(get_orders.iter().any(|o| o.0 == "get-order"));
        assert!(get_orders.iter().any(|o| o.0 == "get-order-2"));
        assert!(get_orders.iter().any(|o| o.2 == "/orders/{order_id}"));
        assert!(get_orders.iter().any(|o| o.2 == "/files/{name___ext}"));
        assert!(ops.contains(&expect(
            "delete-orders-order.id",
            "DELETE",
            "/orders/{order_id}"
        )));

        let err =
            import_openapi_value(&json!({"swagger": "2.0"}), "x", None, None, false).unwrap_err();
        assert!(err.contains("Swagger 2.0"), "{err}");
        let err = import_openapi_value(
            &json!({"openapi": "3.1.0", "servers": [{"url": "/v1"}], "paths": {}}),
            "x",
            None,
            None,
            false,
        )
        .unwrap_err();
        assert!(err.contains("--backend-url"), "{err}");
        let err = import_openapi_value(
            &json!({"openapi": "3.1.0", "paths": {}}),
            "Bad Name",
            Some("http://x"),
            None,
            false,
        )
        .unwrap_err();
        assert!(err.contains("not a valid name"), "{err}");
    }

    #[test]
    fn sample_api_file_is_valid() {
        let text = include_str!("../config/sample-api.yaml");
        let doc = Document::from_yaml(text).unwrap_or_else(|p| panic!("{p}"));
        let kinds: std::collections::BTreeSet<_> = doc.resources.iter().map(|r| r.kind()).collect();
        assert_eq!(
            kinds.len(),
            6,
            "every kind but the global policy: {kinds:?}"
        );
        let names: Vec<String> = doc.resources.iter().map(|r| r.key().to_string()).collect();
        for want in ["apis/orders", "gateways/site-a"] {
            assert!(names.iter().any(|n| n == want), "{want} in {names:?}");
        }
    }

    #[test]
    fn control_plane_example_settings_are_the_defaults_and_list_every_key() {
        use crate::control_plane::settings::ControlPlaneSettings;
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/control-plane.toml");
        let loaded: ControlPlaneSettings =
            crate::settings::load(Some(&path), &Default::default(), &Default::default())
                .unwrap_or_else(|p| panic!("{p}"));
        assert_eq!(loaded, ControlPlaneSettings::default());
        let text = std::fs::read_to_string(&path).unwrap();
        let file: toml::Value = toml::from_str(&text).unwrap();
        let file = serde_json::to_value(file).unwrap();
        let defaults = serde_json::to_value(ControlPlaneSettings::default()).unwrap();
        let keys = |v: &Value| -> Vec<String> {
            crate::settings::leaves(v)
                .into_iter()
                .map(|(p, _)| p.join("."))
                .collect()
        };
        assert_eq!(keys(&file), keys(&defaults));
    }
}
