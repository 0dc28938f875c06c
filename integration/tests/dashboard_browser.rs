//! The dashboard in a real browser (issue 15, item 4): Debian's headless `chromium` loads `/`
//! from a real control plane while a real gateway proxies traffic to a real backend pool, and
//! the rendered DOM is checked: the SVG charts per API and per gateway have lines, the API's
//! request count is the store's, and the instance rows show readiness (with the reason of an
//! instance that is draining), token and certificate expiry, and the pool members' states. A
//! screenshot is kept as a test artefact: `target/test-artefacts/dashboard.png`.
//!
//! Needs `chromium` (Debian's package; `.ci/run` installs it): without it the test says so and
//! passes without running.

use std::path::Path;
use std::process::Stdio;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use outpost_integration::*;
use serde_json::Value;

const HOST: &str = "shop.example.com";
/// How long the page may run (virtual time) before chromium dumps or shoots it: its fetches
/// hold virtual time still, so this only has to cover its timers.
const VIRTUAL_TIME_MS: u32 = 4000;

/// One API, `shop`, on a pool of the live backend and a port nobody listens on (its active
/// checks fail: `failing-checks`), served by `site-a` with an HTTPS certificate.
fn estate(live: &str, dead: &str, cert: &(String, String)) -> String {
    let indent = |pem: &str| pem.trim_end().replace('\n', "\n      ");
    format!(
        r#"
apiVersion: outpost/v1
named-values:
  - name: shop-cert
    value: |
      {}
  - name: shop-key
    secret: true
    value: |
      {}
backends:
  - name: shop
    members:
      - {{url: "{live}"}}
      - {{url: "{dead}"}}
    passive-health: {{consecutive-failures: 0}}
    health-check: {{path: /healthz, interval-ms: 500, timeout-ms: 500, healthy-threshold: 1, unhealthy-threshold: 1}}
apis:
  - name: shop
    path: shop
    backend: shop
    subscription-required: false
    operations:
      - {{name: any, method: GET, url-template: "/{{*rest}}"}}
gateways:
  - name: site-a
    apis: [shop]
    hostnames:
      - {{hostname: {HOST}, certificate-pem: "{{{{shop-cert}}}}", key-pem: "{{{{shop-key}}}}"}}
"#,
        indent(&cert.0),
        indent(&cert.1),
    )
}

/// `chromium --version`, or why there is none.
fn chromium_version() -> Result<String, String> {
    let out = std::process::Command::new("chromium")
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("chromium: {e}"))?;
    if !out.status.success() {
        return Err(format!("chromium --version: {}", out.status));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Runs headless chromium on `url` with `args` (a profile of its own in `profile`); returns
/// its standard output.
async fn chromium(profile: &Path, args: &[String], url: &str) -> Result<String, String> {
    let mut cmd = tokio::process::Command::new("chromium");
    cmd.args([
        "--headless=new",
        "--disable-gpu",
        "--no-sandbox",
        "--no-first-run",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .arg(format!("--virtual-time-budget={VIRTUAL_TIME_MS}"))
    .args(args)
    .arg(url)
    .stdin(Stdio::null())
    .kill_on_drop(true);
    let out = tokio::time::timeout(scaled(secs(120)), cmd.output())
        .await
        .map_err(|_| "chromium did not finish within 120 s".to_owned())?
        .map_err(|e| format!("chromium: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "chromium exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The markup from the element that carries `attr` to the end of `until` after it.
fn element<'a>(dom: &'a str, attr: &str, until: &str) -> Option<&'a str> {
    let start = dom.find(attr)?;
    let rest = &dom[start..];
    let end = rest.find(until)? + until.len();
    Some(&rest[..end])
}

/// The `d` attributes of the chart's series paths.
fn series_paths(svg: &str) -> Vec<&str> {
    svg.split("class=\"series\"")
        .skip(1)
        .filter_map(|p| {
            let d = p.find(" d=\"")? + 4;
            let len = p[d..].find('"')?;
            Some(&p[d..d + len])
        })
        .collect()
}

/// The text of the `n`th `<td>` of a table row (tags stripped).
fn cell(row: &str, n: usize) -> String {
    let Some(td) = row.split("<td>").nth(n + 1) else {
        return String::new();
    };
    let td = td.split("</td>").next().unwrap_or_default();
    let mut text = String::new();
    let mut in_tag = false;
    for c in td.chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag => text.push(c),
            _ => {}
        }
    }
    text
}

async fn api_requests(cp: &ControlPlane) -> u64 {
    let (status, body) = cp
        .call("GET", "/api/v1/analytics?api=shop&group_by=minute", None)
        .await;
    assert_eq!(status, 200, "{body:#}");
    body["total"]["requests"].as_u64().unwrap_or(0)
}

async fn instances(cp: &ControlPlane) -> Vec<Value> {
    let (status, body) = cp.call("GET", "/api/v1/instances", None).await;
    assert_eq!(status, 200, "{body:#}");
    body.as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_in_a_real_browser() {
    let version = match chromium_version() {
        Ok(v) => v,
        Err(reason) => {
            eprintln!(
                "skipped: the dashboard browser test needs Debian's chromium ({reason}); .ci/run installs it"
            );
            return;
        }
    };
    eprintln!("browser: {version}");

    let backend = TestBackend::start();
    let dead = format!("http://127.0.0.1:{}", free_port());
    let pki = TestPki::new();
    let cert = pki.issue("shop", &[HOST]);
    let cp = ControlPlane::start().await;
    cp.apply(&estate(&backend.url(), &dead, &cert)).await;
    let token = cp.token("site-a").await;
    let options = |drain: &str| GatewayOptions {
        control_plane_url: Some(cp.gateway_url()),
        token: Some(token.clone()),
        extra_env: vec![("OUTPOST_SHUTDOWN_DRAIN_SECS".into(), drain.into())],
        ..Default::default()
    };
    let serving = Gateway::start("gateway-serving", options("0")).await;
    // A second instance of site-a that drains (for ten minutes, longer than the test): not
    // ready, and its heartbeats say why.
    let draining = Gateway::start("gateway-draining", options("600")).await;
    let id = async |gw: &Gateway| {
        let (_, readyz) = gw.readyz().await;
        readyz["instance_id"]
            .as_str()
            .unwrap_or_else(|| panic!("{readyz:#}"))
            .to_owned()
    };
    let (serving_id, draining_id) = (id(&serving).await, id(&draining).await);
    kill(
        Pid::from_raw(i32::try_from(draining.process.pid()).unwrap()),
        Signal::SIGTERM,
    )
    .unwrap();

    // Traffic flowing: three of four requests answered 200 by the live member, one 503.
    let urls = ["/shop/a", "/shop/b", "/shop/c", "/shop/status/503"]
        .iter()
        .map(|p| serving.url(p))
        .collect();
    let load = LoadLoop::start(client(), urls, 20.0, secs(600));
    let before = eventually(secs(60), ms(250), async || {
        let n = api_requests(&cp).await;
        if n >= 40 {
            Ok(n)
        } else {
            Err(format!("{n} requests of shop in the analytics so far"))
        }
    })
    .await
    .unwrap();
    eventually(secs(60), ms(250), async || {
        let all = instances(&cp).await;
        let find = |id: &str| all.iter().find(|i| i["instance-id"] == id);
        let (Some(s), Some(d)) = (find(&serving_id), find(&draining_id)) else {
            return Err(format!("instances not both listed: {all:#?}"));
        };
        let pool_ok = s["pool-members"]
            .as_array()
            .is_some_and(|m| m.iter().any(|m| m["state"] == "failing-checks"));
        if s["ready"] == true && d["ready"] == false && pool_ok {
            Ok(())
        } else {
            Err(format!("not yet: {s:#} {d:#}"))
        }
    })
    .await
    .unwrap();

    // The page as chromium renders it, once its fetches are done.
    let profile = tempfile::tempdir().unwrap();
    let url = format!("{}/#token={ADMIN_TOKEN}", cp.admin_url());
    let dom = eventually(secs(120), ms(500), async || {
        let dom = chromium(profile.path(), &["--dump-dom".into()], &url).await?;
        if dom.contains("data-chart=\"gateway:site-a/latency\"")
            && dom.contains(&format!("data-key=\"instance:{draining_id}\""))
        {
            Ok(dom)
        } else {
            Err(format!(
                "the page is not rendered yet: {}",
                &dom[..dom.len().min(3000)]
            ))
        }
    })
    .await
    .unwrap();
    let after = api_requests(&cp).await;
    let short = |s: &str| s.chars().take(4000).collect::<String>();

    // Charts: all traffic, per API and per gateway; requests/s, error rate and latency each
    // with lines (an error rate of 25 % and latencies every minute with traffic).
    for scope in ["all", "api:shop", "gateway:site-a"] {
        for (chart, series) in [
            ("requests", &["req/s"][..]),
            ("errors", &["5xx"]),
            ("latency", &["p50", "p95", "p99"]),
        ] {
            let attr = format!("data-chart=\"{scope}/{chart}\"");
            let svg = element(&dom, &attr, "</svg>")
                .unwrap_or_else(|| panic!("no chart {attr} in {}", short(&dom)));
            let paths = series_paths(svg);
            assert_eq!(paths.len(), series.len(), "{svg}");
            for (d, name) in paths.iter().zip(series) {
                assert!(d.starts_with('M') && d.len() > 4, "{name}: {svg}");
                assert!(svg.contains(&format!("data-series=\"{name}\"")), "{svg}");
            }
        }
    }
    // The API's request count, between what the store said before and after the page loaded.
    let row = element(&dom, "data-key=\"traffic-api:shop\"", "</tr>")
        .unwrap_or_else(|| panic!("no traffic row for shop: {}", short(&dom)));
    let shown: u64 = cell(row, 1)
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{e}: {row}"));
    assert!(
        (before..=after).contains(&shown),
        "shown {shown}, store {before}..={after}: {row}"
    );
    let errors = cell(row, 2);
    assert!(
        errors.contains('%') && !errors.starts_with("0 "),
        "5xx answered: {row}"
    );
    assert!(
        element(&dom, "data-key=\"traffic-gateway:site-a\"", "</tr>").is_some(),
        "a traffic row per gateway"
    );
    let tile = element(&dom, "data-tile=\"instances\"", "</div></div>").unwrap();
    assert!(
        tile.contains("1 / 2"),
        "one of two running instances ready: {tile}"
    );

    // The instances: readiness (and why not), expiries, pool members.
    let row = element(
        &dom,
        &format!("data-key=\"instance:{serving_id}\""),
        "</tr>",
    )
    .unwrap_or_else(|| panic!("no row for {serving_id}: {}", short(&dom)));
    let health = cell(row, 3);
    assert!(health.starts_with("ready"), "{health}: {row}");
    let token_cell = cell(row, 6);
    assert!(
        token_cell.contains("UTC") && token_cell.contains("in "),
        "token expiry with its distance: {token_cell}"
    );
    let cert_cell = cell(row, 7);
    assert!(
        cert_cell.contains(HOST) && cert_cell.contains("UTC"),
        "{cert_cell}"
    );
    let cert_html = element(row, "class=\"certificate-expiry\"", "</div>").unwrap();
    assert!(
        cert_html.contains("class=\"badge expiring\""),
        "the test certificate lives two days: within the warning window: {cert_html}"
    );
    let pool = cell(row, 8);
    assert!(
        pool.contains(&backend.url()) && pool.contains("healthy"),
        "{pool}"
    );
    assert!(
        pool.contains(&dead) && pool.contains("failing-checks"),
        "{pool}"
    );
    let row = element(
        &dom,
        &format!("data-key=\"instance:{draining_id}\""),
        "</tr>",
    )
    .unwrap();
    let health = cell(row, 3);
    assert!(
        health.starts_with("not ready") && health.contains("draining"),
        "the reason shown: {health}"
    );

    // The screenshot, kept for people to look at.
    let dir = target_dir().join("test-artefacts");
    std::fs::create_dir_all(&dir).unwrap();
    let png = dir.join("dashboard.png");
    let _ = std::fs::remove_file(&png);
    chromium(
        profile.path(),
        &[
            format!("--screenshot={}", png.display()),
            "--window-size=1400,1800".into(),
        ],
        &url,
    )
    .await
    .unwrap();
    check_png(&png);
    eprintln!("screenshot: {}", png.display());
    let report = load.stop().await;
    assert!(report.responses() > 0, "{report}");
}

/// A PNG of the window's size with more than a blank page's worth of content.
fn check_png(path: &Path) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    let be = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
    assert_eq!(&bytes[12..16], b"IHDR");
    assert_eq!((be(16), be(20)), (1400, 1800), "the window's size");
    assert!(
        bytes.len() > 60_000,
        "{} bytes: too small for a page of tables and charts",
        bytes.len()
    );
}
