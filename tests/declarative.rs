//! The declarative endpoints and the CLI commands built on them, over real HTTP against
//! `control_plane::start`: apply (diff, one revision, idempotence, deletes, dry run, problems
//! with locations), export → apply round trip, and `outpost apply` / `export` /
//! `gateway-token` / `import-openapi` / `validate` both as library calls and as the binary.

use std::path::Path;
use std::process::Command;

use outpost::client::{self, ApplyFlags, ApplyOptions, CallError, Connection, ServerArgs};
use outpost::control_plane::admin_api::{Action, ApplyResult};
use outpost::control_plane::settings::ControlPlaneSettings;
use outpost::control_plane::{RunningControlPlane, start};
use outpost_model::resources::SECRET_MASK;
use outpost_model::{Kind, Resource, ResourceKey};

const TOKEN: &str = "declarative-test-token-0123456789";
const BIN: &str = env!("CARGO_BIN_EXE_outpost");

fn sample() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/sample-api.yaml"))
        .unwrap()
}

fn cp() -> RunningControlPlane {
    let mut s = ControlPlaneSettings::default();
    s.admin.listen = "127.0.0.1:0".into();
    s.gateway_api.listen = "127.0.0.1:0".into();
    s.store.data_dir = ":memory:".into();
    s.admin.token = TOKEN.into();
    start(s).unwrap()
}

fn conn(cp: &RunningControlPlane) -> Connection {
    Connection::new(&cp.admin_url(), TOKEN).unwrap()
}

fn server_args(cp: &RunningControlPlane) -> ServerArgs {
    ServerArgs {
        server: cp.admin_url(),
        token: Some(TOKEN.into()),
        token_file: None,
    }
}

fn keys(r: &ApplyResult, action: Action) -> Vec<String> {
    r.changes
        .iter()
        .filter(|c| c.action == action)
        .map(|c| c.key.clone())
        .collect()
}

fn problems_of(e: CallError) -> Vec<String> {
    match e {
        CallError::Api {
            status: 400 | 409,
            body,
        } => body.problems.iter().map(ToString::to_string).collect(),
        other => panic!("expected a 400 or 409, got {other}"),
    }
}

#[test]
fn apply_is_one_revision_and_idempotent_and_export_round_trips() {
    let cp = cp();
    let c = conn(&cp);
    // Dry run first: the changes, and nothing changed.
    let dry = c.apply(&sample(), true).unwrap();
    assert!(dry.dry_run);
    assert_eq!(dry.revision, 0);
    assert_eq!(keys(&dry, Action::Create).len(), 9, "{dry:?}");
    assert_eq!(cp.store().revision(), 0);
    assert!(cp.store().state().resources.is_empty());

    let first = c.apply(&sample(), false).unwrap();
    assert_eq!(first.revision, 1, "everything in one revision");
    assert_eq!(first.changes, dry.changes);
    // Creates come in dependency order.
    let order: Vec<Kind> = first.changes.iter().map(|c| c.kind).collect();
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(order, sorted);

    // Applying the same file again changes nothing (generated subscription keys are kept).
    let again = c.apply(&sample(), false).unwrap();
    assert!(again.changes.is_empty(), "{again:?}");
    assert_eq!(again.revision, 1);
    assert_eq!(again.unchanged, 9);

    // Export → apply is a no-op too, secrets included (they are exported masked).
    let exported = c.export().unwrap();
    assert!(exported.contains(SECRET_MASK), "{exported}");
    assert!(!exported.contains("replace-me-with-the-real-backend-key"));
    assert!(
        exported.contains("primary-key"),
        "subscription keys are exported"
    );
    let round = c.apply(&exported, false).unwrap();
    assert!(round.changes.is_empty(), "{round:?}");
    assert_eq!(cp.store().revision(), 1);
    let stored = cp
        .store()
        .state()
        .get(&ResourceKey::new(Kind::NamedValue, "orders-backend-key"))
        .map(|s| s.resource.clone());
    match stored {
        Some(Resource::NamedValue(nv)) => {
            assert_eq!(nv.value, "replace-me-with-the-real-backend-key")
        }
        other => panic!("{other:?}"),
    }
    // A second export is identical to the first.
    assert_eq!(c.export().unwrap(), exported);
}

fn prune(dry_run: bool) -> ApplyOptions {
    ApplyOptions {
        dry_run,
        prune: true,
        if_revision: None,
    }
}

#[test]
fn apply_is_additive_and_prune_deletes_only_the_sections_of_the_file() {
    let cp = cp();
    let c = conn(&cp);
    c.apply(&sample(), false).unwrap();
    let reduced = sample()
        .split("\nsubscriptions:")
        .next()
        .unwrap()
        .replace("display-name: Starter", "display-name: Starter plan");
    // Without prune, what the file leaves out stays.
    let r = c.apply(&reduced, true).unwrap();
    assert_eq!(keys(&r, Action::Update), vec!["products/starter"]);
    assert!(keys(&r, Action::Delete).is_empty(), "{r:?}");
    // With prune, the file owns only the kinds it has a section for: no subscriptions or
    // gateways section, so none of those is deleted either.
    let r = c.apply_with(&reduced, prune(true)).unwrap();
    assert!(keys(&r, Action::Delete).is_empty(), "{r:?}");
    // An empty section claims the kind: every subscription goes.
    let none = format!("{reduced}\nsubscriptions: []\ngateways:\n");
    let r = c.apply_with(&none, prune(true)).unwrap();
    assert_eq!(
        keys(&r, Action::Delete),
        vec![
            "gateways/site-a",
            "subscriptions/ops-tools",
            "subscriptions/web-shop"
        ],
        "deletes in reverse dependency order"
    );
    assert_eq!(cp.store().revision(), 1, "dry runs");
    let r = c.apply_with(&none, prune(false)).unwrap();
    assert_eq!(r.revision, 2);
    assert_eq!(r.changes.len(), 4);
    assert_eq!(cp.store().state().of_kind(Kind::Subscription).count(), 0);
    assert_eq!(cp.store().state().of_kind(Kind::Api).count(), 1);

    // The global policy: created from a file; a file without `policies` leaves it even when
    // pruning; `policies: {}` with prune removes it.
    let with_global = format!(
        "{reduced}\npolicies:\n  inbound:\n    - set-header: {{name: X-Global, value: \"1\"}}\n"
    );
    let r = c.apply(&with_global, false).unwrap();
    assert_eq!(keys(&r, Action::Create), vec!["policies/global"]);
    let r = c.apply_with(&reduced, prune(false)).unwrap();
    assert!(r.changes.is_empty(), "{r:?}");
    let r = c
        .apply_with(&format!("{reduced}\npolicies: {{}}\n"), prune(false))
        .unwrap();
    assert_eq!(keys(&r, Action::Delete), vec!["policies/global"]);
    assert_eq!(r.revision, 4);

    // If-Match on the global revision: a plan reviewed at an old revision is not applied.
    let stale = ApplyOptions {
        if_revision: Some(3),
        ..prune(false)
    };
    match c.apply_with(&sample(), stale) {
        Err(CallError::Api { status: 412, .. }) => {}
        other => panic!("expected 412, got {other:?}"),
    }
    assert_eq!(cp.store().revision(), 4);
}

/// The pool sample applies, exports without the empty `url` and round-trips; a gateway
/// compiles it.
#[test]
fn a_backend_pool_round_trips_through_export_and_apply() {
    let pool =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/pool-api.yaml"))
            .unwrap();
    let doc = outpost_model::document::Document::from_yaml(&pool).unwrap_or_else(|p| panic!("{p}"));
    let problems = outpost_actors::route_table::validate_config(&doc.resources);
    assert!(problems.is_empty(), "{problems}");
    let cp = cp();
    let c = conn(&cp);
    let first = c.apply(&pool, false).unwrap();
    assert_eq!(first.revision, 1);
    let exported = c.export().unwrap();
    for want in [
        "members:",
        "weight: 2",
        "least-request",
        "health-check:",
        "circuit-breaker:",
    ] {
        assert!(exported.contains(want), "{want} not in {exported}");
    }
    assert!(!exported.contains("url: ''"), "{exported}");
    let round = c.apply(&exported, false).unwrap();
    assert!(round.changes.is_empty(), "{round:?}");
    assert_eq!(c.export().unwrap(), exported);
}

#[test]
fn backend_pool_mistakes_are_listed_with_their_locations() {
    let cp = cp();
    let c = conn(&cp);
    let bad = r#"
apiVersion: outpost/v1
backends:
  - name: both
    url: "http://a"
    members: [{url: "http://b"}]
  - name: neither
  - name: single
    url: "http://a"
    health-check: {path: /h}
  - name: pool
    members:
      - {url: "ftp://a", weight: 0}
      - {url: "http://b"}
      - {url: "http://b/"}
      - {url: "http://{{missing}}"}
    passive-health: {ejection-ms: 0, failure-statuses: [700]}
    health-check: {path: h, interval-ms: 50, timeout-ms: 0, healthy-threshold: 0}
    circuit-breaker: {error-rate-percent: 101, min-requests: 0}
"#;
    let problems = problems_of(c.apply(bad, false).unwrap_err());
    for want in [
        "backends[0] (both).members: set either url or members",
        "backends[1] (neither).url: a backend needs a url or members",
        "backends[2] (single).health-check: applies to pools only",
        "backends[3] (pool).members[0].url",
        "backends[3] (pool).members[0].weight",
        "backends[3] (pool).members[2].url: 'http://b/' is listed twice",
        "backends[3] (pool).passive-health.ejection-ms",
        "backends[3] (pool).passive-health.failure-statuses[0]",
        "backends[3] (pool).health-check.path",
        "backends[3] (pool).health-check.interval-ms",
        "backends[3] (pool).health-check.timeout-ms",
        "backends[3] (pool).health-check.healthy-threshold",
        "backends[3] (pool).circuit-breaker.error-rate-percent",
        "backends[3] (pool).circuit-breaker.min-requests",
    ] {
        assert!(
            problems.iter().any(|p| p.starts_with(want)),
            "{want} not in {problems:#?}"
        );
    }
    assert_eq!(cp.store().revision(), 0);
}

#[test]
fn apply_lists_every_problem_with_its_location() {
    let cp = cp();
    let c = conn(&cp);
    let bad = r#"
apiVersion: outpost/v1
backends:
  - {name: b, url: "ftp://nowhere", connect-timeout-ms: 0}
apis:
  - name: orders
    path: /orders
    backend: b
    operations:
      - {name: a, method: FETCH, url-template: "orders"}
    policies:
      inbound:
        - no-such-policy: {}
  - name: Bad Name
    backend: b
gadgets: []
"#;
    let problems = problems_of(c.apply(bad, false).unwrap_err());
    for want in [
        "backends[0] (b).url",
        "backends[0] (b).connect-timeout-ms",
        "apis[0] (orders).policies.inbound[0]",
        "apis[1] (Bad Name).name",
        "gadgets",
    ] {
        assert!(
            problems.iter().any(|p| p.starts_with(want)),
            "{want} not in {problems:#?}"
        );
    }
    let problems = problems_of(c.apply("apiVersion: outpost/v0\n", false).unwrap_err());
    assert!(problems[0].starts_with("apiVersion"), "{problems:?}");
    let problems = problems_of(c.apply("a: [unclosed", false).unwrap_err());
    assert!(problems[0].contains("not valid YAML"), "{problems:?}");
    // A masked secret with nothing stored behind it.
    let masked = format!(
        "apiVersion: outpost/v1\nnamed-values:\n  - {{name: k, value: \"{SECRET_MASK}\", secret: true}}\n"
    );
    let problems = problems_of(c.apply(&masked, false).unwrap_err());
    assert!(
        problems[0].starts_with("named-values[0] (k).value"),
        "{problems:?}"
    );
    assert_eq!(cp.store().revision(), 0);
}

/// Five mistakes of different layers: `outpost validate` lists them all in one run, each as
/// `FILE:LINE:COLUMN: PATH: MESSAGE` with the line of the offending field.
const FIVE_MISTAKES: &str = r#"apiVersion: outpost/v1
backends:
  - {name: orders, url: "http://127.0.0.1:9000"}
apis:
  - name: typed
    path: typed
    backend: orders
    operations: {name: get-order}
  - name: policed
    path: policed
    backend: orders
    policies:
      inbound:
        - xsl-transform: {apply: always}
  - name: orphan
    path: orphan
    backend: nowhere
  - name: templated
    path: templated
    backend: orders
    operations:
      - {name: get-item, method: GET, url-template: "items/{id"}
subscriptions:
  - {name: alice, scope: all-apis, primary-key: "0123456789abcdef0123456789abcdef"}
  - {name: bob, scope: all-apis, primary-key: "0123456789abcdef0123456789abcdef"}
"#;

/// (line, column, path, words of the message, what the file has at that line and column) of
/// each of [`FIVE_MISTAKES`]'s problems.
const FIVE_PROBLEMS: [(u32, u32, &str, &str, &str); 5] = [
    (
        8,
        5,
        "apis[0] (typed).operations",
        "expected a sequence",
        "operations: {",
    ),
    (
        14,
        11,
        "apis[1] (policed).policies.inbound[0]",
        "unknown or unsupported policy 'xsl-transform'",
        "xsl-transform:",
    ),
    (
        17,
        5,
        "apis[2] (orphan).backend",
        "unknown backend 'nowhere'",
        "backend: nowhere",
    ),
    (
        22,
        39,
        "apis[3] (templated).operations[0].url-template",
        "must start with '/'",
        "url-template: \"items/{id\"",
    ),
    (
        25,
        34,
        "subscriptions[1] (bob).primary-key",
        "key already used by subscription 'alice'",
        "primary-key:",
    ),
];

#[test]
fn validate_lists_the_problems_of_every_layer_in_one_run_with_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("five.yaml");
    std::fs::write(&file, FIVE_MISTAKES).unwrap();
    let name = file.display().to_string();
    let out = Command::new(BIN)
        .args(["validate", "-f", &name])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.starts_with(&format!("{name}: 5 problem(s):\n")),
        "{err}"
    );
    let lines: Vec<&str> = err.lines().skip(1).collect();
    assert_eq!(lines.len(), 5, "{err}");
    // In file order, one form for all.
    for (line, (l, c, path, words, there)) in lines.iter().zip(FIVE_PROBLEMS) {
        let head = format!("{name}:{l}:{c}: {path}: ");
        assert!(line.starts_with(&head), "want {head}…\n{err}");
        assert!(line.contains(words), "want {words}\n{err}");
        // The position is the offending field's.
        let source = FIVE_MISTAKES.lines().nth(l as usize - 1).unwrap();
        assert!(
            source[c as usize - 1..].starts_with(there),
            "{l}:{c} is not at {there}: {source}"
        );
    }
}

/// Five mistakes that serde alone would report one per run: two type errors in different
/// resources, an unknown field in a resource that also has a type error, a bad policy option,
/// and a dangling reference in a resource after them.
const FIVE_TYPE_MISTAKES: &str = r#"apiVersion: outpost/v1
backends:
  - name: orders
    url: "http://127.0.0.1:9000"
    connect-timeout-ms: soon
    retries: 3
apis:
  - name: orders
    path: orders
    backend: orders
    subscription-required: maybe
    policies:
      inbound:
        - rate-limit: {calls: 10, renewal-period: 60, outage: sometimes}
  - name: orphan
    path: orphan
    backend: nowhere
"#;

#[test]
fn validate_lists_every_type_error_with_the_other_problems_in_one_run() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("typed.yaml");
    std::fs::write(&file, FIVE_TYPE_MISTAKES).unwrap();
    let name = file.display().to_string();
    let out = Command::new(BIN)
        .args(["validate", "-f", &name])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.starts_with(&format!("{name}: 5 problem(s):\n")),
        "{err}"
    );
    let want = [
        (
            5,
            5,
            "backends[0] (orders).connect-timeout-ms",
            "invalid type: string \"soon\", expected u64",
        ),
        (
            6,
            5,
            "backends[0] (orders).retries",
            "unknown field `retries`",
        ),
        (
            11,
            5,
            "apis[0] (orders).subscription-required",
            "invalid type: string \"maybe\", expected a boolean",
        ),
        (
            14,
            55,
            "apis[0] (orders).policies.inbound[0].rate-limit.outage",
            "unknown variant `sometimes`, expected one of `fail-open`, `local`, `fail-closed`",
        ),
        (
            17,
            5,
            "apis[1] (orphan).backend",
            "unknown backend 'nowhere'",
        ),
    ];
    let lines: Vec<&str> = err.lines().skip(1).collect();
    assert_eq!(lines.len(), want.len(), "{err}");
    for (line, (l, c, path, message)) in lines.iter().zip(want) {
        let head = format!("{name}:{l}:{c}: {path}: {message}");
        assert!(line.starts_with(&head), "want {head}…\n{err}");
    }
}

/// A file whose resources are each valid but do not fit together is refused as a single write
/// making the configuration inconsistent is, 409; one with a problem in a resource alone is a
/// 400 with every problem, those between resources included.
#[test]
fn apply_answers_409_when_only_the_resources_do_not_fit_together() {
    let cp = cp();
    let c = conn(&cp);
    let dangling = "apiVersion: outpost/v1\napis:\n  - {name: a, path: a, backend: nowhere}\n  - {name: a, path: b, backend: nowhere}\n";
    match c.apply(dangling, true).unwrap_err() {
        CallError::Api { status: 409, body } => {
            let got: Vec<(&str, Option<u32>)> = body
                .problems
                .iter()
                .map(|p| (p.path.as_str(), p.line))
                .collect();
            assert_eq!(
                got,
                [("apis[0] (a).backend", Some(3)), ("apis[1] (a)", Some(4))],
                "{body:?}"
            );
        }
        other => panic!("expected a 409, got {other}"),
    }
    let also_wrong = format!("{dangling}  - {{name: c, path: c, backend: \"Not A Name\"}}\n");
    match c.apply(&also_wrong, true).unwrap_err() {
        CallError::Api { status: 400, body } => {
            let has = |words: &str| body.problems.iter().any(|p| p.message.contains(words));
            assert!(
                has("is not a valid name") && has("unknown backend 'nowhere'"),
                "{body:?}"
            );
        }
        other => panic!("expected a 400, got {other}"),
    }
    // Whole numbers written as floats are integers, in YAML as in JSON.
    let floats = "apiVersion: outpost/v1\nbackends:\n  - {name: b, url: \"http://127.0.0.1:9\", connect-timeout-ms: 250.0}\n";
    c.apply(floats, true).unwrap();
    assert_eq!(cp.store().revision(), 0);
}

#[test]
fn apply_problems_carry_the_file_path_form_and_position() {
    let cp = cp();
    let c = conn(&cp);
    let problems = match c.apply(FIVE_MISTAKES, false).unwrap_err() {
        CallError::Api { status: 400, body } => body.problems,
        other => panic!("expected a 400, got {other}"),
    };
    let got: Vec<(u32, u32, &str)> = problems
        .iter()
        .map(|p| (p.line.unwrap(), p.column.unwrap(), p.path.as_str()))
        .collect();
    let want: Vec<(u32, u32, &str)> = FIVE_PROBLEMS
        .iter()
        .map(|(l, c, p, _, _)| (*l, *c, *p))
        .collect();
    assert_eq!(got, want, "{problems:#?}");
    // Problems the store finds after the file parsed are put back in the file too.
    let masked = format!(
        "apiVersion: outpost/v1\nnamed-values:\n  - {{name: k, value: \"{SECRET_MASK}\", secret: true}}\n"
    );
    // A problem with what is stored (nothing behind the mask): 409, located all the same.
    let problems = match c.apply(&masked, false).unwrap_err() {
        CallError::Api { status: 409, body } => body.problems,
        other => panic!("expected a 409, got {other}"),
    };
    assert_eq!(
        problems[0].path, "named-values[0] (k).value",
        "{problems:?}"
    );
    assert_eq!((problems[0].line, problems[0].column), (Some(3), Some(15)));
    assert_eq!(cp.store().revision(), 0);
}

#[test]
fn cli_functions_and_binary_end_to_end() {
    let cp = cp();
    let dir = tempfile::tempdir().unwrap();
    let sample_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/sample-api.yaml");
    let args = server_args(&cp);

    // Library entry points used by the CLI.
    let dry = ApplyFlags {
        dry_run: true,
        ..ApplyFlags::default()
    };
    assert_eq!(
        client::apply(&args, std::slice::from_ref(&sample_path), dry).unwrap(),
        std::process::ExitCode::SUCCESS
    );
    assert_eq!(cp.store().revision(), 0);
    let export_path = dir.path().join("export.yaml");
    client::export(&args, Some(&export_path), false).unwrap();
    let empty = std::fs::read_to_string(&export_path).unwrap();
    assert!(empty.contains("apiVersion: outpost/v1"), "{empty}");

    // The binary.
    let run = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(args)
            .env("OUTPOST_SERVER", cp.admin_url())
            .env("OUTPOST_ADMIN_TOKEN", TOKEN)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let sample_arg = sample_path.to_str().unwrap();
    let (code, out, err) = run(&["apply", "-f", sample_arg, "--dry-run"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("create  apis/orders") && out.contains("dry run"),
        "{out}"
    );
    assert_eq!(cp.store().revision(), 0);
    let (code, out, err) = run(&["apply", "-f", sample_arg]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("now at revision 1"), "{out}");
    let (code, out, _) = run(&["apply", "-f", sample_arg]);
    assert_eq!(code, Some(0));
    assert!(out.contains("no changes"), "{out}");

    let export_arg = export_path.to_str().unwrap();
    let (code, _, err) = run(&["export", "-o", export_arg]);
    assert_eq!(code, Some(0), "{err}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&export_path)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "exports hold subscription keys");
    }
    let (code, stdout_export, _) = run(&["export"]);
    assert_eq!(code, Some(0));
    assert_eq!(
        std::fs::read_to_string(&export_path).unwrap(),
        stdout_export
    );
    let (code, out, _) = run(&["apply", "-f", export_arg]);
    assert_eq!(code, Some(0));
    assert!(out.contains("no changes"), "{out}");
    // A masked export can be applied back but not served: validate names the masked value.
    let (code, _, err) = run(&["validate", "-f", export_arg]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(
            "(orders-backend-key): value is the export mask '********'; export with --include-secrets or set the real value"
        ),
        "{err}"
    );

    // Problems: non-zero exit, every problem with its location on stderr.
    let bad_path = dir.path().join("bad.yaml");
    std::fs::write(
        &bad_path,
        "apiVersion: outpost/v1\nbackends:\n  - {name: b, url: \"nope\", request-timeout-ms: 0}\n",
    )
    .unwrap();
    let (code, _, err) = run(&["apply", "-f", bad_path.to_str().unwrap()]);
    assert_eq!(code, Some(1));
    assert!(err.contains("backends[0] (b).url"), "{err}");
    assert!(err.contains("backends[0] (b).request-timeout-ms"), "{err}");
    // Wrong token: non-zero exit with the server's reason.
    let out = Command::new(BIN)
        .args(["export", "--server", &cp.admin_url(), "--token", "wrong"])
        .env_remove("OUTPOST_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid admin token"));

    // A gateway token from the CLI, with the admin token from a file.
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let out = Command::new(BIN)
        .args([
            "gateway-token",
            "--gateway",
            "site-a",
            "--expires",
            "7d",
            "--key",
            "secondary",
            "--server",
            &cp.admin_url(),
            "--token-file",
            token_file.to_str().unwrap(),
        ])
        .env_remove("OUTPOST_ADMIN_TOKEN")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("GatewayKey site-a&"), "{stdout}");
    let (code, _, err) = run(&["gateway-token", "--gateway", "site-a", "--expires", "90d"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("maximum"), "{err}");
    let (code, _, err) = run(&["gateway-token", "--gateway", "site-a", "--expires", "7"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("--expires"), "{err}");
}

#[test]
fn import_openapi_then_apply() {
    let cp = cp();
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("petstore.json");
    std::fs::write(
        &spec,
        r#"{"openapi": "3.0.0", "info": {"title": "Pets", "version": "1"},
            "servers": [{"url": "http://127.0.0.1:9000/pets-v1"}],
            "paths": {
              "/pets": {"get": {"operationId": "listPets"}, "post": {"operationId": "createPet"}},
              "/pets/{petId}": {"get": {"operationId": "showPetById"}, "delete": {}}
            }}"#,
    )
    .unwrap();
    let out_path = dir.path().join("pets.yaml");
    let out = Command::new(BIN)
        .args([
            "import-openapi",
            spec.to_str().unwrap(),
            "--name",
            "pets",
            "--path",
            "/animals/pets/",
            "-o",
            out_path.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let yaml = std::fs::read_to_string(&out_path).unwrap();
    for want in [
        "list-pets",
        "create-pet",
        "show-pet-by-id",
        "/pets/{petId}",
        "path: animals/pets",
        "http://127.0.0.1:9000/pets-v1",
    ] {
        assert!(yaml.contains(want), "{want} in\n{yaml}");
    }
    let out = Command::new(BIN)
        .args(["validate", "-f", out_path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let r = conn(&cp).apply(&yaml, false).unwrap();
    assert_eq!(keys(&r, Action::Create), vec!["backends/pets", "apis/pets"]);
}

/// Runs the binary against `cp` with no terminal on standard input, as CI does.
fn outpost(cp: &RunningControlPlane, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env("OUTPOST_SERVER", cp.admin_url())
        .env("OUTPOST_ADMIN_TOKEN", TOKEN)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn count(cp: &RunningControlPlane, kind: Kind) -> usize {
    cp.store().state().of_kind(kind).count()
}

#[test]
fn a_partial_file_leaves_the_rest_and_prune_deletes_only_after_confirmation() {
    let cp = cp();
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).display().to_string();
    let sample_path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("config/sample-api.yaml")
        .display()
        .to_string();
    let (code, _, err) = outpost(&cp, &["apply", "-f", &sample_path]);
    assert_eq!(code, Some(0), "{err}");
    // Another team's API and the global policy, added on their own.
    std::fs::write(
        path("legacy.yaml"),
        "apiVersion: outpost/v1\nbackends:\n  - {name: legacy, url: \"http://127.0.0.1:9\"}\n\
         apis:\n  - {name: legacy, path: legacy, backend: legacy}\n\
         policies:\n  inbound:\n    - set-header: {name: X-Global, value: \"1\"}\n",
    )
    .unwrap();
    let (code, _, err) = outpost(&cp, &["apply", "-f", &path("legacy.yaml")]);
    assert_eq!(code, Some(0), "{err}");
    let rev = cp.store().revision();

    // import-openapi, then apply: only creates.
    std::fs::write(
        path("pet.json"),
        r#"{"openapi": "3.0.0", "info": {"title": "Pets", "version": "1"},
            "servers": [{"url": "http://127.0.0.1:9000/pets"}],
            "paths": {"/pets": {"get": {"operationId": "listPets"}}}}"#,
    )
    .unwrap();
    let (code, _, err) = outpost(
        &cp,
        &[
            "import-openapi",
            &path("pet.json"),
            "--name",
            "petstore",
            "-o",
            &path("p.yaml"),
        ],
    );
    assert_eq!(code, Some(0), "{err}");
    let (code, out, err) = outpost(&cp, &["apply", "-f", &path("p.yaml"), "--dry-run"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("create  apis/petstore"), "{out}");
    assert!(!out.contains("delete"), "{out}");
    let (code, out, err) = outpost(&cp, &["apply", "-f", &path("p.yaml")]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("applied 2 change(s)"), "{out}");
    assert_eq!(count(&cp, Kind::Api), 3);
    assert_eq!(count(&cp, Kind::Gateway), 1);
    assert_eq!(count(&cp, Kind::Subscription), 2);
    assert_eq!(count(&cp, Kind::GlobalPolicy), 1);
    let rev = {
        assert_eq!(cp.store().revision(), rev + 1);
        rev + 1
    };

    // Both team files together, pruned: the plan deletes legacy's API and backend; without a
    // terminal and without --yes it is refused and nothing changes.
    let both = [
        "apply",
        "-f",
        &sample_path,
        "-f",
        &path("p.yaml"),
        "--prune",
    ];
    let (code, out, err) = outpost(&cp, &both);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        out.contains("delete  apis/legacy") && out.contains("delete  backends/legacy"),
        "{out}"
    );
    assert!(
        err.contains("refusing to delete 2 resource(s)") && err.contains("--yes"),
        "{err}"
    );
    assert_eq!(cp.store().revision(), rev);
    let (code, out, err) = outpost(&cp, &[&both[..], &["--dry-run"]].concat());
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("delete  apis/legacy"), "{out}");
    assert_eq!(cp.store().revision(), rev);

    let (code, out, err) = outpost(&cp, &[&both[..], &["--yes"]].concat());
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("applied 2 change(s)"), "{out}");
    let apis: Vec<String> = cp
        .store()
        .state()
        .of_kind(Kind::Api)
        .map(|s| s.resource.name().to_owned())
        .collect();
    assert_eq!(apis, vec!["orders", "petstore"]);
    // Kinds the files have no section for are not touched.
    assert_eq!(count(&cp, Kind::GlobalPolicy), 1);

    // Pruning with the pet file alone would delete the orders API that a product and a
    // gateway still use: the control plane refuses the whole plan.
    let (code, _, err) = outpost(&cp, &["apply", "-f", &path("p.yaml"), "--prune", "--yes"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("orders"), "{err}");
    assert_eq!(cp.store().revision(), rev + 1);
}

const SECRET: &str = "s3cret-backend-key-42";

#[test]
fn masked_exports_are_refused_offline_and_include_secrets_serves() {
    use outpost::gateway::{self, settings::GatewaySettings};
    let cp = cp();
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).display().to_string();
    let c = conn(&cp);
    c.apply(
        &format!(
            r#"
apiVersion: outpost/v1
named-values:
  - {{name: backend-key, value: {SECRET}, secret: true}}
backends:
  - {{name: echo, url: "http://127.0.0.1:9"}}
apis:
  - name: echo
    path: echo
    backend: echo
    subscription-required: false
    operations:
      - {{name: get, method: GET, url-template: /hello}}
    policies:
      inbound:
        - return-response: {{status-code: 200, body: "key={{{{backend-key}}}}"}}
gateways:
  - {{name: gw-a, apis: [echo]}}
"#
        ),
        false,
    )
    .unwrap();
    let want = "named-values[0] (backend-key): value is the export mask '********'; export with --include-secrets or set the real value";

    let (code, _, err) = outpost(&cp, &["export", "-o", &path("masked.yaml")]);
    assert_eq!(code, Some(0), "{err}");
    assert!(!err.contains("secret values"), "{err}");
    let (code, _, err) = outpost(&cp, &["validate", "-f", &path("masked.yaml")]);
    assert_eq!(code, Some(1));
    assert!(err.contains(want), "{err}");
    // The offline gateway refuses it before listening on anything.
    let out = Command::new(BIN)
        .args(["gateway", "--offline-config", &path("masked.yaml")])
        .env("OUTPOST_LISTEN_HTTP", "127.0.0.1:0")
        .env("OUTPOST_LISTEN_HTTPS", "127.0.0.1:0")
        .env("OUTPOST_LISTEN_OPS", "127.0.0.1:0")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(want), "{err}");
    // Applying the masked export back keeps the stored secret.
    let r = c
        .apply(
            &std::fs::read_to_string(path("masked.yaml")).unwrap(),
            false,
        )
        .unwrap();
    assert!(r.changes.is_empty(), "{r:?}");

    // --include-secrets: the real value, an owner-only file even when it existed before, and a
    // warning.
    std::fs::write(path("full.yaml"), "").unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path("full.yaml"), std::fs::Permissions::from_mode(0o644))
            .unwrap();
    }
    let (code, _, err) = outpost(
        &cp,
        &["export", "--include-secrets", "-o", &path("full.yaml")],
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("contains secret values"), "{err}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path("full.yaml"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let full = std::fs::read_to_string(path("full.yaml")).unwrap();
    assert!(
        full.contains(SECRET) && !full.contains(SECRET_MASK),
        "{full}"
    );
    let (code, out, err) = outpost(&cp, &["export", "--include-secrets"]);
    assert_eq!(code, Some(0));
    assert!(out.contains(SECRET), "{out}");
    assert!(
        err.contains("standard output contains secret values"),
        "{err}"
    );
    let (code, _, err) = outpost(&cp, &["validate", "-f", &path("full.yaml")]);
    assert_eq!(code, Some(0), "{err}");

    let mut s = GatewaySettings::default();
    s.offline.config_file = Some(path("full.yaml").into());
    s.listen.http = "127.0.0.1:0".into();
    s.listen.https = Some("127.0.0.1:0".into());
    s.listen.ops = "127.0.0.1:0".into();
    let gw = gateway::start(s).expect("the full export is served offline");
    let body = reqwest::blocking::get(format!("{}/echo/hello", gw.traffic_url()))
        .unwrap()
        .text()
        .unwrap();
    assert_eq!(body, format!("key={SECRET}"));
    gw.stop();
}

#[test]
fn cli_errors_name_the_cause() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let out = Command::new(BIN)
        .args(["export", "--server", &url, "--token", "x"])
        .env_remove("OUTPOST_ADMIN_TOKEN")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("cannot reach {url}")), "{err}");
    assert!(err.to_lowercase().contains("connection refused"), "{err}");
}

/// Issue 10 A.6: a lifetime beyond `tokens.max_lifetime_days` is refused, not capped, and the
/// CLI says what the maximum is; without `--expires` a token gets the maximum, whatever it is.
#[test]
fn gateway_token_lifetimes_beyond_the_maximum_are_refused_naming_it() {
    let mut s = ControlPlaneSettings::default();
    s.admin.listen = "127.0.0.1:0".into();
    s.gateway_api.listen = "127.0.0.1:0".into();
    s.store.data_dir = ":memory:".into();
    s.admin.token = TOKEN.into();
    s.tokens.max_lifetime_days = 7;
    let cp = start(s).unwrap();
    conn(&cp)
        .apply(
            "apiVersion: outpost/v1\ngateways:\n  - {name: site-a}\n",
            false,
        )
        .unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(args)
            .env("OUTPOST_SERVER", cp.admin_url())
            .env("OUTPOST_ADMIN_TOKEN", TOKEN)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    let (code, out, err) = run(&["gateway-token", "--gateway", "site-a", "--expires", "90d"]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(out.is_empty(), "no token printed: {out}");
    assert!(
        err.contains("token lifetime 90 days exceeds the maximum of 7 days")
            && err.contains("tokens.max_lifetime_days"),
        "{err}"
    );

    // No --expires: the maximum, not a fixed 30 days the control plane would refuse.
    let (code, out, err) = run(&["gateway-token", "--gateway", "site-a"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.starts_with("GatewayKey site-a&"), "{out}");
    let expiry = outpost_actors::token::parse(out.trim()).unwrap().expiry;
    let lifetime = expiry - chrono::Utc::now();
    assert!(
        lifetime > chrono::TimeDelta::days(7) - chrono::TimeDelta::minutes(2)
            && lifetime <= chrono::TimeDelta::days(7),
        "{lifetime}"
    );
    cp.stop();
}
