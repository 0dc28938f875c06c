//! `outpost demo`: a control plane, a gateway and a sample backend in one process, wired the
//! way a real deployment is — the gateway reaches the control plane over HTTP with a minted
//! token, long-polls its configuration and keeps a backup — so what the demo shows is what
//! production does, not a shortcut.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use outpost_model::Resource;
use outpost_model::document::Document;
use outpost_model::resources::{GatewayHostname, NamedValue};

use crate::control_plane::settings::{ControlPlaneSettings, StoreDir};
use crate::control_plane::store::{Precondition, Write};
use crate::control_plane::tokens;
use crate::gateway::settings::GatewaySettings;

const DEMO_FILE: &str = include_str!("../config/demo.yaml");
const GATEWAY: &str = "demo";
/// The backend of `config/demo.yaml` that the demo points at its sample backend.
const DEMO_BACKEND: &str = "sample";
const KEY: &str = "demo0000000000000000000000000000000000000000000000000000000000000";

/// Ports tried first (so the printed commands are the familiar ones); any that is taken is
/// replaced by a free one.
const DEFAULT_PORTS: [u16; 6] = [7070, 7071, 8080, 8090, 9000, 8443];
/// The name the demo's HTTPS certificate is for (and served to clients without SNI).
const TLS_HOST: &str = "localhost";

pub fn run(port_base: u16) -> Result<(), String> {
    crate::logging::init(&crate::logging::LogSettings {
        level: "warn".into(),
        format: "text".into(),
    });
    let ports = pick_ports(port_base);
    let dir = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;

    let (backend, backend_addr) = start_backend(ports[4])?;

    let mut cp_settings = ControlPlaneSettings::default();
    cp_settings.admin.listen = format!("127.0.0.1:{}", ports[0]);
    cp_settings.gateway_api.listen = format!("127.0.0.1:{}", ports[1]);
    cp_settings.store.data_dir = StoreDir::Dir(dir.path().join("control-plane"));
    let cp = crate::control_plane::start(cp_settings).map_err(|e| e.to_string())?;

    let mut doc =
        Document::from_yaml(DEMO_FILE).map_err(|p| format!("demo configuration:\n{p}"))?;
    point_backend_at(&mut doc, &format!("http://{backend_addr}"))?;
    add_certificate(&mut doc)?;
    let writes = doc
        .resources
        .into_iter()
        .map(|r| Write::Put(Box::new(r), Precondition::None))
        .collect();
    let committed = cp.store().commit(writes).map_err(|e| e.to_string())?;

    let keys = cp
        .store()
        .gateway_keys(GATEWAY)
        .map_err(|e| e.to_string())?;
    let token = tokens::mint(
        GATEWAY,
        &keys.primary,
        chrono::Utc::now() + chrono::Duration::days(30),
    );

    let mut gw_settings = GatewaySettings::default();
    gw_settings.control_plane.url = cp.gateway_url();
    gw_settings.control_plane.token = token;
    gw_settings.listen.http = format!("127.0.0.1:{}", ports[2]);
    gw_settings.listen.https = Some(format!("127.0.0.1:{}", ports[5]));
    gw_settings.listen.https_default_hostname = Some(TLS_HOST.into());
    gw_settings.listen.ops = format!("127.0.0.1:{}", ports[3]);
    gw_settings.listen.workers = 2;
    gw_settings.backup.enabled = true;
    gw_settings.backup.dir = dir.path().join("gateway-backup");
    gw_settings.log.level = "warn".into();
    let gw = crate::gateway::start(gw_settings).map_err(|e| e.to_string())?;
    wait_ready(&gw.ops_url())?;

    let https = gw
        .https_addr()
        .map(|a| format!("https://{TLS_HOST}:{}", a.port()))
        .ok_or("the demo gateway has no HTTPS listener")?;
    print_guide(
        &gw.traffic_url(),
        &https,
        &gw.ops_url(),
        &cp.admin_url(),
        cp.admin_token(),
        committed.revision,
        &dir.path().display().to_string(),
    );

    crate::signals::wait_for_stop(std::future::pending())?;
    eprintln!("\nstopping the demo…");
    gw.stop();
    cp.stop();
    backend.stop(false);
    Ok(())
}

/// The demo file is also a working example (`outpost apply -f config/demo.yaml` against
/// `outpost sample-backend`), so its backend URL is a real address; the demo replaces it with
/// wherever its own sample backend ended up listening.
fn point_backend_at(doc: &mut Document, url: &str) -> Result<(), String> {
    let backend = doc.resources.iter_mut().find_map(|r| match r {
        Resource::Backend(b) if b.name == DEMO_BACKEND => Some(b),
        _ => None,
    });
    match backend {
        Some(b) => {
            b.url = url.to_owned();
            Ok(())
        }
        None => Err(format!(
            "demo configuration: config/demo.yaml has no backend '{DEMO_BACKEND}'"
        )),
    }
}

/// A self-signed certificate for `localhost`, made now, as the demo gateway's HTTPS
/// certificate: named values (the key a secret) referenced by the gateway resource, as an
/// operator would set it up. Valid from yesterday for [`DEMO_CERT_DAYS`], like a real
/// short-lived certificate, so its expiry metric and dashboard entry read as they would in
/// production (rcgen's default runs to the year 4096).
fn add_certificate(doc: &mut Document) -> Result<(), String> {
    use chrono::Datelike;
    let fail = |e: rcgen::Error| format!("demo certificate: {e}");
    let day = |d: chrono::DateTime<chrono::Utc>| {
        // Month and day of a real date always fit in a byte.
        rcgen::date_time_ymd(d.year(), d.month() as u8, d.day() as u8)
    };
    let now = chrono::Utc::now();
    let mut params = rcgen::CertificateParams::new(vec![TLS_HOST.to_owned()]).map_err(fail)?;
    params.not_before = day(now - chrono::Duration::days(1));
    params.not_after = day(now + chrono::Duration::days(DEMO_CERT_DAYS));
    let signing_key = rcgen::KeyPair::generate().map_err(fail)?;
    let cert = params.self_signed(&signing_key).map_err(fail)?;
    let gateway = doc.resources.iter_mut().find_map(|r| match r {
        Resource::Gateway(g) if g.name == GATEWAY => Some(g),
        _ => None,
    });
    let Some(gateway) = gateway else {
        return Err(format!(
            "demo configuration: config/demo.yaml has no gateway '{GATEWAY}'"
        ));
    };
    gateway.hostnames.push(GatewayHostname {
        hostname: TLS_HOST.into(),
        certificate_pem: Some("{{demo-tls-certificate}}".into()),
        key_pem: Some("{{demo-tls-key}}".into()),
        client_certificate: Default::default(),
        client_ca_pem: None,
    });
    doc.resources.push(Resource::NamedValue(NamedValue {
        name: "demo-tls-certificate".into(),
        value: cert.pem(),
        secret: false,
    }));
    doc.resources.push(Resource::NamedValue(NamedValue {
        name: "demo-tls-key".into(),
        value: signing_key.serialize_pem(),
        secret: true,
    }));
    Ok(())
}

/// How long the demo's certificate is valid.
const DEMO_CERT_DAYS: i64 = 90;

fn pick_ports(base: u16) -> [u16; 6] {
    let wanted: [u16; 6] = if base == 0 {
        DEFAULT_PORTS
    } else {
        std::array::from_fn(|i| base.saturating_add(i as u16))
    };
    wanted.map(|p| {
        if TcpListener::bind(("127.0.0.1", p)).is_ok() {
            p
        } else {
            TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .unwrap_or(0)
        }
    })
}

/// The sample backend runs on its own actix system thread, like the other components.
fn start_backend(port: u16) -> Result<(BackendHandle, std::net::SocketAddr), String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("sample-backend".into())
        .spawn(move || {
            let system = actix_rt::System::new();
            system.block_on(async move {
                match crate::sample_backend::start(&format!("127.0.0.1:{port}")) {
                    Ok((server, addr)) => {
                        let _ = tx.send(Ok((server.handle(), addr)));
                        let _ = server.await;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(format!("sample backend: {e}")));
                    }
                }
            });
        })
        .map_err(|e| e.to_string())?;
    let (handle, addr) = rx
        .recv()
        .map_err(|_| "sample backend thread ended".to_owned())??;
    Ok((BackendHandle(handle), addr))
}

struct BackendHandle(actix_web::dev::ServerHandle);

impl BackendHandle {
    fn stop(&self, graceful: bool) {
        let handle = self.0.clone();
        // The handle's future completes once the server has stopped; block on it briefly.
        let _ = std::thread::spawn(move || {
            actix_rt::System::new().block_on(handle.stop(graceful));
        })
        .join();
    }
}

fn wait_ready(ops_url: &str) -> Result<(), String> {
    let client = reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(res) = client.get(format!("{ops_url}/readyz")).send()
            && res.status().is_success()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err("the demo gateway did not become ready within 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn print_guide(
    gw: &str,
    https: &str,
    ops: &str,
    admin: &str,
    token: &str,
    revision: u64,
    dir: &str,
) {
    let k = format!("-H 'Ocp-Apim-Subscription-Key: {KEY}'");
    println!(
        r#"
Outpost demo is running (configuration revision {revision}; data in {dir}).

  gateway      {gw}
  gateway TLS  {https}   (a self-signed certificate for {TLS_HOST}, made at start)
  gateway ops  {ops}   (/healthz /readyz /metrics)
  control plane {admin}  (management API at /api/v1, admin token below)
  dashboard    {admin}/#token={token}
  admin token  {token}

Try these:

  # an API call through the gateway (set-header policies, named values, key check)
  curl -s {k} {gw}/orders/orders/1001

  # the same over HTTPS and HTTP/2 (-k: the certificate is self-signed)
  curl -sk --http2 {k} {https}/orders/orders/1001

  # a response cached by the gateway for 30 s (watch the Age header on the second call)
  curl -si {k} {gw}/orders/orders | grep -i -E '^(HTTP|age|x-)'

  # answered by a return-response policy, the backend is not called
  curl -s {k} {gw}/orders/orders/1001/status

  # no key: 401; unknown API: 404; wrong method: 405
  curl -si {gw}/orders/orders/42 | head -1
  curl -si {k} {gw}/nope | head -1
  curl -si {k} -X DELETE {gw}/orders/orders/42 | head -1

  # the starter product allows 10 calls a minute: past that, 429 with Retry-After
  for i in $(seq 12); do curl -s -o /dev/null -w '%{{http_code}} ' {k} {gw}/orders/orders/1002; done; echo

  # the management API and what the gateway reports about itself
  curl -s -H 'Authorization: Bearer {token}' {admin}/api/v1/apis
  curl -s -H 'Authorization: Bearer {token}' {admin}/api/v1/gateways/{GATEWAY}/instances
  curl -s {ops}/readyz
  curl -s {ops}/metrics | grep '^outpost_'

Press Ctrl-C to stop."#
    );
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_demo_file_is_pointed_at_the_demo_backend() {
        let mut doc = super::Document::from_yaml(super::DEMO_FILE).unwrap();
        super::point_backend_at(&mut doc, "http://127.0.0.1:40001").unwrap();
        let urls: Vec<&str> = doc
            .resources
            .iter()
            .filter_map(|r| match r {
                super::Resource::Backend(b) => Some(b.url.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(urls, ["http://127.0.0.1:40001"]);
    }
}
