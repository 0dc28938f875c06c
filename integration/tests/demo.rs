//! `outpost demo`, the README's first command, does what it prints.

use outpost_integration::*;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread")]
async fn demo_starts_and_its_commands_work() {
    let mut cmd = outpost_command();
    cmd.args(["demo", "--port-base", &free_port().to_string()]);
    let mut demo = ManagedProcess::spawn("demo", cmd).expect("spawn demo");
    demo.wait_for_output("Press Ctrl-C", secs(60))
        .await
        .unwrap_or_else(|e| panic!("demo did not start: {e}"));
    let out = demo.output_so_far();
    let field = |name: &str| -> String {
        out.lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix(name)
                    .map(|r| r.split_whitespace().next().unwrap_or("").to_owned())
            })
            .unwrap_or_else(|| panic!("no '{name}' line in:\n{out}"))
    };
    let gateway = field("gateway ");
    let admin = field("control plane ");
    let token = field("admin token ");
    let key = "demo0000000000000000000000000000000000000000000000000000000000000";

    let res = client()
        .get(format!("{gateway}/orders/orders/1001"))
        .header("Ocp-Apim-Subscription-Key", key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["id"], "1001", "{body}");

    let res = client()
        .get(format!("{gateway}/orders/orders/1001"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401, "no key");

    // The HTTPS line: the same call over TLS with the demo's self-signed certificate.
    let https = field("gateway TLS ");
    assert!(https.starts_with("https://localhost:"), "{https}");
    let port = https.rsplit(':').next().unwrap().to_owned();
    let tls = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .resolve("localhost", ([127, 0, 0, 1], port.parse().unwrap()).into())
        .build()
        .unwrap();
    let res = tls
        .get(format!("{https}/orders/orders/1001"))
        .header("Ocp-Apim-Subscription-Key", key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["id"], "1001", "{body}");

    let res = client()
        .get(format!("{admin}/api/v1/gateways/demo/instances"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);

    let status = demo.stop(secs(10)).await;
    assert!(
        status.success(),
        "demo exits cleanly on SIGTERM: {status:?}\n{}",
        demo.tail(20)
    );
}
