//! What the containers of compose/ need from the binary, since their images hold nothing else
//! (no shell, no curl): `outpost probe` as the health check, `outpost gateway-token
//! --output-dir` writing one owner-only token file per gateway, and the gateway reading its
//! token from such a file (`control_plane.token_file`). Real processes on loopback.

use std::os::unix::fs::PermissionsExt as _;
use std::process::{Command, Output};

use outpost_integration::*;

const FLEET: &str = "apiVersion: outpost/v1
gateways:
  - name: site-a
  - name: site-b
";

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("run outpost")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn probe(url: &str, timeout: &str) -> Output {
    run(outpost_command().args(["probe", url, "--timeout", timeout]))
}

fn admin_cli(cp: &ControlPlane) -> Command {
    let mut c = outpost_command();
    c.env("OUTPOST_SERVER", cp.admin_url())
        .env("OUTPOST_ADMIN_TOKEN", ADMIN_TOKEN);
    c
}

#[tokio::test(flavor = "multi_thread")]
async fn probe_token_files_and_a_gateway_that_reads_its_token_from_one() {
    let cp = ControlPlane::start().await;
    cp.apply(FLEET).await;
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::create_dir(&tokens).unwrap();

    // One file per gateway, owner-only; nothing on standard output.
    let out = run(admin_cli(&cp)
        .args([
            "gateway-token",
            "--gateway",
            "site-a",
            "--gateway",
            "site-b",
            "--expires",
            "1d",
            "--output-dir",
        ])
        .arg(&tokens));
    assert!(out.status.success(), "{}", text(&out));
    assert!(out.stdout.is_empty(), "tokens printed: {}", text(&out));
    for site in ["site-a", "site-b"] {
        let path = tokens.join(site);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{site}");
        let token = std::fs::read_to_string(&path).unwrap();
        assert!(
            token.starts_with(&format!("GatewayKey {site}&")) && token.ends_with('\n'),
            "{token}"
        );
    }
    let names: Vec<_> = std::fs::read_dir(&tokens)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "no temporary file left behind: {names:?}");

    // Several gateways need a directory; a name must not leave it.
    let out = run(admin_cli(&cp).args([
        "gateway-token",
        "--gateway",
        "site-a",
        "--gateway",
        "site-b",
    ]));
    assert!(!out.status.success());
    assert!(text(&out).contains("--output-dir"), "{}", text(&out));
    let out = run(admin_cli(&cp)
        .args(["gateway-token", "--gateway", "../site-a", "--output-dir"])
        .arg(&tokens));
    assert!(!out.status.success(), "{}", text(&out));

    // The gateway takes its token from the file.
    let gw = Gateway::start(
        "gw-token-file",
        GatewayOptions {
            control_plane_url: Some(cp.gateway_url()),
            extra_env: vec![(
                "OUTPOST_CONTROL_PLANE_TOKEN_FILE".into(),
                tokens.join("site-a").display().to_string(),
            )],
            ..GatewayOptions::default()
        },
    )
    .await;
    let (_, ready) = gw.readyz().await;
    assert_eq!(ready["token"]["gateway"], "site-a", "{ready}");
    assert_eq!(ready["control_plane"]["state"], "connected", "{ready}");

    // probe: exit 0 on 2xx, with the answer shown (Docker keeps it in the health log).
    for url in [
        format!("{}/readyz", gw.ops_url()),
        format!("{}/healthz", gw.ops_url()),
        format!("{}/healthz", cp.admin_url()),
    ] {
        let out = probe(&url, "3s");
        assert!(out.status.success(), "{url}: {}", text(&out));
        assert!(text(&out).starts_with("HTTP 200"), "{url}: {}", text(&out));
    }
    assert!(text(&probe(&format!("{}/readyz", gw.ops_url()), "3s")).contains("\"ready\":true"));

    // ... and 1 on anything else: a refusal, a closed port, no answer in time.
    let out = probe(&format!("{}/api/v1/apis", cp.admin_url()), "3s");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("HTTP 401"), "{}", text(&out));
    let closed = free_port();
    let out = probe(&format!("http://127.0.0.1:{closed}/healthz"), "3s");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("Connection refused"), "{}", text(&out));
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let out = probe(
        &format!("http://{}/healthz", silent.local_addr().unwrap()),
        "1s",
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("timed out"), "{}", text(&out));
    drop(silent);

    // A token file others can read is refused at start, and the token is not shown.
    let loose = dir.path().join("loose");
    std::fs::copy(tokens.join("site-a"), &loose).unwrap();
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    let secret = std::fs::read_to_string(&loose).unwrap();
    let signature = secret.trim().rsplit('&').next().unwrap().to_owned();
    let mut refused = Gateway::spawn(
        "gw-loose-token-file",
        GatewayOptions {
            control_plane_url: Some(cp.gateway_url()),
            extra_env: vec![(
                "OUTPOST_CONTROL_PLANE_TOKEN_FILE".into(),
                loose.display().to_string(),
            )],
            ..GatewayOptions::default()
        },
    );
    let status = refused
        .process
        .wait_exit(secs(30))
        .await
        .expect("the gateway exits");
    assert!(!status.success());
    let said = refused.process.output_so_far();
    assert!(
        said.contains("mode 0644") && said.contains("chmod 600"),
        "{said}"
    );
    assert!(!said.contains(&signature), "the token leaked: {said}");
}
