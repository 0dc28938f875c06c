//! docs/operations.md, "Single binary", done as a new operator does it: the commands of that
//! section, in order, with the example files of `config/` — only ports and folders are this
//! test's own (and the example backend host, overridden by a second file as a team would).

use std::process::Command;

use outpost_integration::*;
use serde_json::Value;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run outpost");
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_single_binary_steps_of_operations_md_work_as_written() {
    let root = workspace_root();
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("control-plane");
    let (admin, gateway_api) = (free_port(), free_port());
    let (http, https, ops, backend) = (free_port(), free_port(), free_port(), free_port());

    // A service to front (the example file's backend).
    let mut sample = outpost_command();
    sample.args([
        "sample-backend",
        "--listen",
        &format!("127.0.0.1:{backend}"),
    ]);
    let _sample = ManagedProcess::spawn("sample-backend", sample).unwrap();

    // Control plane: `OUTPOST_STORE_DATA_DIR=… outpost control-plane`.
    let mut cp = outpost_command();
    cp.arg("control-plane")
        .env("OUTPOST_STORE_DATA_DIR", &data_dir)
        .env("OUTPOST_ADMIN_LISTEN", format!("127.0.0.1:{admin}"))
        .env(
            "OUTPOST_GATEWAY_API_LISTEN",
            format!("127.0.0.1:{gateway_api}"),
        );
    let mut cp = ManagedProcess::spawn("control-plane", cp).unwrap();
    cp.wait_for_output("management API and dashboard on", secs(30))
        .await
        .unwrap_or_else(|e| panic!("control plane did not start: {e}"));
    let token_file = data_dir.join("admin-token");
    assert!(
        token_file.exists(),
        "a token is generated into <data_dir>/admin-token"
    );

    // `export OUTPOST_SERVER=…; export OUTPOST_ADMIN_TOKEN_FILE=…; outpost apply -f …`
    let cli = || {
        let mut c = outpost_command();
        c.env("OUTPOST_SERVER", format!("http://127.0.0.1:{admin}"))
            .env("OUTPOST_ADMIN_TOKEN_FILE", &token_file);
        c
    };
    let site = dir.path().join("site.yaml");
    std::fs::write(
        &site,
        format!(
            "apiVersion: outpost/v1\nnamed-values:\n  - {{name: orders-backend-host, value: \"127.0.0.1:{backend}\"}}\n"
        ),
    )
    .unwrap();
    run(cli()
        .args(["apply", "-f"])
        .arg(root.join("config/sample-api.yaml")));
    // Apply only adds and updates: the second file changes the one value it names.
    run(cli().args(["apply", "-f"]).arg(&site));

    // `outpost gateway-token --gateway site-a --expires 30d` prints the token.
    let token = run(cli().args(["gateway-token", "--gateway", "site-a", "--expires", "30d"]));
    let token = token.trim();
    assert!(token.starts_with("GatewayKey site-a&"), "{token}");

    // Gateway: `OUTPOST_CONTROL_PLANE_URL=… OUTPOST_CONTROL_PLANE_TOKEN=… OUTPOST_BACKUP_…
    // outpost gateway --config config/gateway.toml`.
    let mut gw = outpost_command();
    gw.args(["gateway", "--config"])
        .arg(root.join("config/gateway.toml"))
        .env(
            "OUTPOST_CONTROL_PLANE_URL",
            format!("http://127.0.0.1:{gateway_api}"),
        )
        .env("OUTPOST_CONTROL_PLANE_TOKEN", token)
        .env("OUTPOST_BACKUP_ENABLED", "true")
        .env("OUTPOST_BACKUP_DIR", dir.path().join("backup"))
        .env("OUTPOST_LISTEN_HTTP", format!("127.0.0.1:{http}"))
        .env("OUTPOST_LISTEN_HTTPS", format!("127.0.0.1:{https}"))
        .env("OUTPOST_LISTEN_OPS", format!("127.0.0.1:{ops}"));
    let mut gw = ManagedProcess::spawn("gateway", gw).unwrap();
    gw.wait_for_output("outpost gateway: traffic on", secs(30))
        .await
        .unwrap_or_else(|e| panic!("gateway did not start: {e}\n{}", gw.tail(30)));

    // A call through the gateway with the key of a subscription the file created.
    let sub: Value = client()
        .get(format!(
            "http://127.0.0.1:{admin}/api/v1/subscriptions/ops-tools"
        ))
        .bearer_auth(std::fs::read_to_string(&token_file).unwrap().trim())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = sub["primary-key"]
        .as_str()
        .expect("a generated key")
        .to_owned();
    let res = client()
        .get(format!("http://127.0.0.1:{http}/orders/orders/1001"))
        .header("Ocp-Apim-Subscription-Key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "{}", gw.tail(20));
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["id"], "1001", "{body}");
    assert!(dir.path().join("backup").exists(), "the backup is written");

    let status = gw.stop(secs(10)).await;
    assert!(status.success(), "{status:?}\n{}", gw.tail(20));
    cp.stop(secs(10)).await;
}
