//! Served HTTPS certificates over their lifetime, with real processes (issue 11, items 2 and 7):
//! an offline gateway re-reads its file on SIGHUP (new handshakes get the new certificate, open
//! connections go on, a bad file is refused and the current one keeps serving), and expiry is
//! visible in `/metrics`, `/readyz` and the control plane's instance list.

use std::path::Path;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use outpost_integration::http::describe_error;
use outpost_integration::*;
use serde_json::Value;

const HOST: &str = "api.example.com";

fn yaml(env: &str, cert: &(String, String)) -> String {
    let indent = |pem: &str| pem.trim_end().replace('\n', "\n      ");
    format!(
        r#"
apiVersion: outpost/v1
named-values:
  - {{name: env, value: {env}}}
  - name: api-cert
    value: |
      {}
  - name: api-key
    secret: true
    value: |
      {}
backends:
  - {{name: b, url: "http://127.0.0.1:9"}}
apis:
  - name: hello
    path: hello
    backend: b
    subscription-required: false
    operations:
      - {{name: get, method: GET, url-template: /}}
    policies:
      inbound:
        - base
        - return-response: {{status-code: 200, body: "env={{{{env}}}}"}}
gateways:
  - name: site-a
    apis: [hello]
    hostnames:
      - {{hostname: {HOST}, certificate-pem: "{{{{api-cert}}}}", key-pem: "{{{{api-key}}}}"}}
"#,
        indent(&cert.0),
        indent(&cert.1),
    )
}

/// A client trusting the test CA that resolves [`HOST`] to the gateway's HTTPS port. Each
/// client has its own connection pool and session cache: a new client, a full handshake.
fn https_client(pki: &TestPki, port: u16) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(&pki.read("ca.pem")).unwrap();
    reqwest::Client::builder()
        .add_root_certificate(ca)
        .resolve(HOST, ([127, 0, 0, 1], port).into())
        .tls_info(true)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// `GET /hello/` over `client`: the body and the leaf certificate the gateway presented.
async fn hello(client: &reqwest::Client, port: u16) -> Result<(String, Vec<u8>), String> {
    let res = client
        .get(format!("https://{HOST}:{port}/hello/"))
        .send()
        .await
        .map_err(|e| describe_error(&e))?;
    let leaf = res
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|i| i.peer_certificate())
        .map(<[u8]>::to_vec)
        .ok_or("no peer certificate")?;
    let body = res.text().await.map_err(|e| e.to_string())?;
    Ok((body, leaf))
}

fn leaf_der(pem: &str) -> Vec<u8> {
    let body: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    decode_base64(&body)
}

/// Standard base64 (the PEM body), without pulling a crate into the harness for one test.
fn decode_base64(text: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let bytes: Vec<u8> = text.bytes().filter(|&c| c != b'=').collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &c)| acc | value(c) << (18 - 6 * i));
        let take = chunk.len() - 1;
        out.extend_from_slice(&n.to_be_bytes()[1..1 + take]);
    }
    out
}

fn hangup(gw: &Gateway) {
    kill(Pid::from_raw(gw.process.pid() as i32), Signal::SIGHUP).unwrap();
}

/// The value of `outpost_tls_certificate_expiry_seconds` for [`HOST`] in a scrape.
fn expiry_gauge(metrics: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| {
            l.starts_with("outpost_tls_certificate_expiry_seconds")
                && l.contains(&format!("hostname=\"{HOST}\""))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn offline_gateway(file: &Path, https_port: u16) -> Gateway {
    Gateway::spawn(
        "gateway",
        GatewayOptions {
            offline_file: Some(file.to_owned()),
            extra_env: vec![(
                "OUTPOST_LISTEN_HTTPS".into(),
                format!("127.0.0.1:{https_port}"),
            )],
            ..Default::default()
        },
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_the_offline_file_and_its_certificates() {
    let pki = TestPki::new();
    let first = pki.issue("api", &[HOST]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("site.yaml");
    std::fs::write(&file, yaml("one", &first)).unwrap();
    let port = free_port();
    let gw = offline_gateway(&file, port);
    gw.wait_ready().await;

    let open = https_client(&pki, port);
    let (body, leaf) = hello(&open, port).await.unwrap();
    assert_eq!((body.as_str(), leaf), ("env=one", leaf_der(&first.0)));

    // Expiry: TestPki certificates live two days, inside the 14-day warning window.
    let (_, ready) = gw.readyz().await;
    let certs = ready["certificates"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(certs.len(), 1, "{ready:#}");
    assert_eq!(certs[0]["hostname"], HOST);
    assert_eq!(certs[0]["expiring_soon"], true, "{ready:#}");
    let left = expiry_gauge(&gw.metrics().await).expect("the expiry gauge");
    assert!(
        (86_400.0..=2.0 * 86_400.0).contains(&left),
        "seconds left: {left}"
    );
    assert!(
        gw.process
            .output_so_far()
            .contains("the HTTPS certificate expires soon"),
        "a warning at load:\n{}",
        gw.process.tail(20)
    );

    // A rotated certificate and a changed value, applied by SIGHUP.
    let second = pki.issue("api", &[HOST]);
    assert_ne!(first.0, second.0);
    std::fs::write(&file, yaml("two", &second)).unwrap();
    hangup(&gw);
    eventually(secs(20), ms(100), async || {
        match hello(&https_client(&pki, port), port).await {
            Ok((body, leaf)) if body == "env=two" && leaf == leaf_der(&second.0) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await
    .unwrap();
    let (_, ready) = gw.readyz().await;
    assert_eq!(ready["config"]["source"], "offline");
    assert_eq!(ready["config"]["revision"], 1, "{ready:#}");
    // The connection opened before the reload finishes on the certificate it was opened with.
    let (body, leaf) = hello(&open, port).await.unwrap();
    assert_eq!((body.as_str(), leaf), ("env=two", leaf_der(&first.0)));

    // A broken file is refused whole; what serves keeps serving, and /readyz says why.
    std::fs::write(
        &file,
        "apiVersion: outpost/v1\napis: [{name: a}]\nbogus: 1\n",
    )
    .unwrap();
    hangup(&gw);
    let refused = eventually(secs(20), ms(100), async || {
        let (_, ready) = gw.readyz().await;
        match ready["last_refusal"]["reason"].as_str() {
            Some(reason) => Ok(reason.to_owned()),
            None => Err(format!("{ready:#}")),
        }
    })
    .await
    .unwrap();
    assert!(refused.contains("bogus"), "{refused}");
    let (body, leaf) = hello(&https_client(&pki, port), port).await.unwrap();
    assert_eq!((body.as_str(), leaf), ("env=two", leaf_der(&second.0)));
    let (_, ready) = gw.readyz().await;
    assert_eq!(ready["config"]["revision"], 1, "{ready:#}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_instance_list_shows_when_served_certificates_expire() {
    let pki = TestPki::new();
    let cert = pki.issue("api", &[HOST]);
    let cp = ControlPlane::start().await;
    cp.apply(&yaml("one", &cert)).await;
    let token = cp.token("site-a").await;
    let gw = Gateway::start(
        "gateway",
        GatewayOptions {
            control_plane_url: Some(cp.gateway_url()),
            token: Some(token),
            ..Default::default()
        },
    )
    .await;
    let listed: Value = eventually(secs(20), ms(100), async || {
        let (status, body) = cp
            .call("GET", "/api/v1/gateways/site-a/instances", None)
            .await;
        match body.as_array().and_then(|a| a.first()) {
            Some(i)
                if status == 200 && i["certificates"].as_array().is_some_and(|c| !c.is_empty()) =>
            {
                Ok(i.clone())
            }
            _ => Err(format!("{status} {body:#}")),
        }
    })
    .await
    .unwrap();
    assert_eq!(listed["certificates"][0]["hostname"], HOST, "{listed:#}");
    assert!(
        listed["certificates"][0]["not-after"].is_string(),
        "{listed:#}"
    );
    assert_eq!(listed["certificate-expiring-soon"], true, "{listed:#}");
    let left = listed["certificate-expires-in-secs"].as_i64().unwrap();
    assert!((86_400..=2 * 86_400).contains(&left), "{listed:#}");
    drop(gw);
}
