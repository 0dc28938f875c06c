//! The declarative endpoints and the CLI commands built on them, over real HTTP against
//! `control_plane::start`: apply (diff, one revision, idempotence, deletes, dry run, problems
//! with locations), export → apply round trip, and `outpost apply` / `export` /
//! `gateway-token` / `import-openapi` / `validate` both as library calls and as the binary.

use std::path::Path;
use std::process::Command;

use outpost::cli::ServerArgs;
use outpost::client::{self, CallError, Connection};
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
        CallError::Api { status: 400, body } => {
            body.problems.iter().map(ToString::to_string).collect()
        }
        other => panic!("expected a 400, got {other}"),
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

#[test]
fn apply_updates_and_deletes_what_the_file_leaves_out() {
    let cp = cp();
    let c = conn(&cp);
    c.apply(&sample(), false).unwrap();
    let reduced = sample()
        .split("\nsubscriptions:")
        .next()
        .unwrap()
        .replace("display-name: Starter", "display-name: Starter plan");
    let r = c.apply(&reduced, true).unwrap();
    assert_eq!(keys(&r, Action::Update), vec!["products/starter"]);
    assert_eq!(
        keys(&r, Action::Delete),
        vec![
            "gateways/site-a",
            "subscriptions/ops-tools",
            "subscriptions/web-shop"
        ],
        "deletes in reverse dependency order"
    );
    assert_eq!(cp.store().revision(), 1, "dry run");
    let r = c.apply(&reduced, false).unwrap();
    assert_eq!(r.revision, 2);
    assert_eq!(r.changes.len(), 4);
    assert_eq!(cp.store().state().of_kind(Kind::Subscription).count(), 0);
    // A global policy in the file is created; removing it from the file deletes it.
    let with_global = format!(
        "{reduced}\npolicies:\n  inbound:\n    - set-header: {{name: X-Global, value: \"1\"}}\n"
    );
    let r = c.apply(&with_global, false).unwrap();
    assert_eq!(keys(&r, Action::Create), vec!["policies/global"]);
    let r = c.apply(&reduced, false).unwrap();
    assert_eq!(keys(&r, Action::Delete), vec!["policies/global"]);
    assert_eq!(r.revision, 4);
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
        problems[0].starts_with("named-values/k.value"),
        "{problems:?}"
    );
    assert_eq!(cp.store().revision(), 0);
}

#[test]
fn cli_functions_and_binary_end_to_end() {
    let cp = cp();
    let dir = tempfile::tempdir().unwrap();
    let sample_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/sample-api.yaml");
    let args = server_args(&cp);

    // Library entry points used by the CLI.
    assert_eq!(
        client::apply(&args, &sample_path, true).unwrap(),
        std::process::ExitCode::SUCCESS
    );
    assert_eq!(cp.store().revision(), 0);
    let export_path = dir.path().join("export.yaml");
    client::export(&args, Some(&export_path)).unwrap();
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
    let (code, out, _) = run(&["validate", "-f", export_arg]);
    assert_eq!(code, Some(0), "{out}");

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
