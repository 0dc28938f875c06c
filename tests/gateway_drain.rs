//! Graceful drain of a real `outpost gateway` process: on SIGTERM `/readyz` turns 503 at once,
//! the listeners keep serving for `[shutdown] drain_secs` (closing HTTP/1.1 connections after
//! each answer), a request in flight finishes within
//! `grace_secs`, and the process exits 0. A client that follows readiness sees no failure.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

mod support;

const BIN: &str = env!("CARGO_BIN_EXE_outpost");

/// `http://127.0.0.1:PORT` after `label` in the gateway's start line.
fn url_after(line: &str, label: &str) -> String {
    let rest = &line[line
        .find(label)
        .unwrap_or_else(|| panic!("{label} in {line}"))
        + label.len()..];
    rest.split([',', ' ']).next().unwrap().to_owned()
}

#[test]
fn a_client_following_readiness_sees_no_failure_while_the_gateway_drains_and_exits() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("apis.yaml");
    std::fs::write(
        &file,
        format!(
            "apiVersion: outpost/v1\nbackends: [{{name: b, url: \"http://{}\"}}]\n\
             apis: [{{name: api, path: api, backend: b, subscription-required: false,\n\
             operations: [{{name: any, method: GET, url-template: \"/{{*rest}}\"}}]}}]\n",
            support::sample_backend_thread()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(BIN);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("OUTPOST_") {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd
        .args(["gateway", "--offline-config"])
        .arg(&file)
        .env("OUTPOST_LISTEN_HTTP", "127.0.0.1:0")
        .env("OUTPOST_LISTEN_HTTPS", "")
        .env("OUTPOST_LISTEN_OPS", "127.0.0.1:0")
        .env("OUTPOST_LISTEN_WORKERS", "2")
        .env("OUTPOST_SHUTDOWN_DRAIN_SECS", "3")
        .env("OUTPOST_SHUTDOWN_GRACE_SECS", "20")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (line_tx, lines) = std::sync::mpsc::channel::<String>();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            let _ = line_tx.send(line);
        }
    });
    let started = lines
        .iter()
        .find(|l| l.starts_with("outpost gateway:"))
        .expect("the gateway starts");
    let traffic = url_after(&started, "traffic on ");
    let ops = url_after(&started, "ops on ");
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    assert_eq!(
        http.get(format!("{ops}/readyz")).send().unwrap().status(),
        200
    );

    // Readiness, as a load balancer sees it.
    let ready = Arc::new(AtomicBool::new(true));
    let saw_draining = Arc::new(AtomicBool::new(false));
    let poller = {
        let (http, ops, ready, saw) = (
            http.clone(),
            ops.clone(),
            ready.clone(),
            saw_draining.clone(),
        );
        std::thread::spawn(move || {
            while ready.load(Ordering::SeqCst) {
                match http.get(format!("{ops}/readyz")).send() {
                    Ok(r) if r.status() == 200 => {}
                    Ok(r) => {
                        let body: serde_json::Value = r.json().unwrap();
                        saw.store(body["draining"] == true, Ordering::SeqCst);
                        ready.store(false, Ordering::SeqCst);
                    }
                    Err(_) => ready.store(false, Ordering::SeqCst),
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    // Clients sending while the gateway is ready, on keep-alive connections.
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let senders: Vec<_> = (0..3)
        .map(|_| {
            let (http, traffic, ready) = (http.clone(), traffic.clone(), ready.clone());
            let (ok, failed) = (ok.clone(), failed.clone());
            std::thread::spawn(move || {
                while ready.load(Ordering::SeqCst) {
                    match http.get(format!("{traffic}/api/hello")).send() {
                        Ok(r) if r.status() == 200 => ok.fetch_add(1, Ordering::SeqCst),
                        other => {
                            eprintln!("failed: {other:?}");
                            failed.fetch_add(1, Ordering::SeqCst)
                        }
                    };
                }
            })
        })
        .collect();
    // A slow request in flight across the drain's end: the backend answers after 5 s, the
    // listeners close after 3 s.
    let slow = {
        let (http, traffic) = (http.clone(), traffic.clone());
        std::thread::spawn(move || {
            http.get(format!("{traffic}/api/delay/5000"))
                .send()
                .map(|r| r.status().as_u16())
        })
    };
    while ok.load(Ordering::SeqCst) < 50 {
        std::thread::sleep(Duration::from_millis(10));
    }
    let sent = Instant::now();
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());

    poller.join().unwrap();
    for s in senders {
        s.join().unwrap();
    }
    assert!(saw_draining.load(Ordering::SeqCst), "/readyz said draining");
    // The listeners still serve during the drain, to clients that do not follow readiness too.
    if sent.elapsed() < Duration::from_millis(2500) {
        let late = http.get(format!("{traffic}/api/late")).send().unwrap();
        assert_eq!(late.status(), 200);
        assert_eq!(
            late.headers()
                .get("connection")
                .and_then(|v| v.to_str().ok()),
            Some("close"),
            "draining answers close their connections"
        );
    } else {
        eprintln!("the machine was too slow to check an answer during the drain");
    }
    assert_eq!(
        slow.join().unwrap().unwrap(),
        200,
        "the slow request finished"
    );
    let status = child.wait().unwrap();
    assert!(status.success(), "exit status {status:?}");
    assert_eq!(failed.load(Ordering::SeqCst), 0, "failed requests");
    assert!(ok.load(Ordering::SeqCst) >= 50);
    let log: Vec<String> = lines.try_iter().collect();
    assert!(
        log.iter().any(|l| l.contains("draining")),
        "{}",
        log.join("\n")
    );
}
