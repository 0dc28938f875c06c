//! The deployment files hold together: `compose/` (docker-compose fleet, its declarative file,
//! the load balancer config, the Dockerfile) and `deploy/kubernetes/` (plain manifests).
//!
//! No Docker engine or cluster is needed: the files are parsed and checked against each other
//! and against the contracts (ports, health endpoints, volumes, start order). When a
//! `docker compose` (or `docker-compose`) or `kubectl` client is installed, their own offline
//! checks run too. `tests/compose_up.rs` starts the fleet for real where a Docker engine runs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use outpost_model::document::Document;
use outpost_model::{Resource, Scope};
use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("integration/ sits in the workspace")
        .to_path_buf()
}

fn read(rel: &str) -> String {
    let path = root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn yaml(rel: &str) -> Value {
    serde_saphyr::from_str::<Value>(&read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn yaml_docs(rel: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(&read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn s(v: &Value) -> &str {
    v.as_str()
        .unwrap_or_else(|| panic!("expected a string, found {v}"))
}

// ============================================================================ docker compose

const OUTPOST_SERVICES: [&str; 10] = [
    "control-plane-1",
    "control-plane-2",
    "init",
    "tokens",
    "gw-a1",
    "gw-a2",
    "gw-a3",
    "gw-b1",
    "backend-a",
    "backend-b",
];
const SITE_A_GATEWAYS: [&str; 3] = ["gw-a1", "gw-a2", "gw-a3"];
const GATEWAYS: [&str; 4] = ["gw-a1", "gw-a2", "gw-a3", "gw-b1"];
const CONTROL_PLANES: [&str; 2] = ["control-plane-1", "control-plane-2"];
/// Every gateway's `control_plane.url`: both replicas.
const CONTROL_PLANE_URLS: &str = "http://control-plane-1:7071,http://control-plane-2:7071";

struct Compose {
    services: serde_json::Map<String, Value>,
    volumes: BTreeSet<String>,
}

impl Compose {
    fn load() -> Compose {
        let doc = yaml("compose/docker-compose.yml");
        let services = doc["services"]
            .as_object()
            .expect("compose: services is a map")
            .clone();
        let volumes = doc["volumes"]
            .as_object()
            .expect("compose: top-level volumes is a map")
            .keys()
            .cloned()
            .collect();
        Compose { services, volumes }
    }

    fn svc(&self, name: &str) -> &Value {
        self.services
            .get(name)
            .unwrap_or_else(|| panic!("compose: no service {name}"))
    }

    /// The service's environment as a map (compose accepts a map or `KEY=VALUE` items).
    fn env(&self, name: &str) -> BTreeMap<String, String> {
        match &self.svc(name)["environment"] {
            Value::Object(m) => m
                .iter()
                .map(|(k, v)| {
                    let v = match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    (k.clone(), v)
                })
                .collect(),
            Value::Array(items) => items
                .iter()
                .map(|i| {
                    let (k, v) = s(i).split_once('=').expect("KEY=VALUE");
                    (k.to_owned(), v.to_owned())
                })
                .collect(),
            Value::Null => BTreeMap::new(),
            other => panic!("compose: {name}.environment is {other}"),
        }
    }

    /// `(source, target, read_only)` of every short-syntax volume mount.
    fn mounts(&self, name: &str) -> Vec<(String, String, bool)> {
        self.svc(name)["volumes"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|m| {
                        let parts: Vec<&str> = s(m).split(':').collect();
                        assert!(parts.len() >= 2, "compose: {name}: mount {m} has no target");
                        (
                            parts[0].to_owned(),
                            parts[1].to_owned(),
                            parts.get(2) == Some(&"ro"),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn mount_of(&self, name: &str, volume: &str) -> Option<(String, bool)> {
        self.mounts(name)
            .into_iter()
            .find(|(src, _, _)| src == volume)
            .map(|(_, target, ro)| (target, ro))
    }

    fn depends_on(&self, name: &str) -> BTreeMap<String, String> {
        match &self.svc(name)["depends_on"] {
            Value::Object(m) => m
                .iter()
                .map(|(k, v)| {
                    let cond = v["condition"].as_str().unwrap_or("service_started");
                    (k.clone(), cond.to_owned())
                })
                .collect(),
            Value::Array(a) => a
                .iter()
                .map(|k| (s(k).to_owned(), "service_started".to_owned()))
                .collect(),
            _ => BTreeMap::new(),
        }
    }

    fn networks(&self, name: &str) -> BTreeSet<String> {
        match &self.svc(name)["networks"] {
            Value::Array(a) => a.iter().map(|n| s(n).to_owned()).collect(),
            Value::Object(m) => m.keys().cloned().collect(),
            _ => ["default".to_owned()].into(),
        }
    }

    /// The health check command joined into one string; `None` when absent or disabled.
    fn healthcheck(&self, name: &str) -> Option<String> {
        let hc = &self.svc(name)["healthcheck"];
        if hc.is_null() || hc["disable"] == Value::Bool(true) {
            return None;
        }
        match &hc["test"] {
            Value::Array(parts) => Some(parts.iter().map(s).collect::<Vec<_>>().join(" ")),
            Value::String(cmd) => Some(cmd.clone()),
            other => panic!("compose: {name}.healthcheck.test is {other}"),
        }
    }

    /// Published `host:container` pairs as `(host port, container port)`.
    fn published(&self, name: &str) -> Vec<(String, String)> {
        self.svc(name)["ports"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|p| {
                        let parts: Vec<&str> = s(p).rsplitn(3, ':').collect();
                        assert!(
                            parts.len() >= 2,
                            "compose: {name}: port {p} is not published"
                        );
                        (parts[1].to_owned(), parts[0].to_owned())
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The service's command (or entrypoint script) as one string.
    fn command_text(&self, name: &str) -> String {
        let svc = self.svc(name);
        let mut out = String::new();
        for key in ["entrypoint", "command"] {
            match &svc[key] {
                Value::Array(a) => a.iter().for_each(|p| {
                    out.push_str(s(p));
                    out.push(' ');
                }),
                Value::String(c) => out.push_str(c),
                _ => {}
            }
        }
        out
    }
}

#[test]
fn compose_has_the_multi_site_fleet() {
    let c = Compose::load();
    let names: BTreeSet<&str> = c.services.keys().map(String::as_str).collect();
    let expected: BTreeSet<&str> = OUTPOST_SERVICES
        .iter()
        .copied()
        .chain(["redis-a", "lb-a", "postgres"])
        .collect();
    assert_eq!(names, expected, "compose services");

    // Every outpost service runs one image, built from compose/Dockerfile with the repository
    // as context, or by compose/build-images.sh under the same variable.
    for name in OUTPOST_SERVICES {
        let build = &c.svc(name)["build"];
        assert_eq!(build["dockerfile"], "compose/Dockerfile", "{name}.build");
        assert_eq!(build["context"], "..", "{name}.build.context");
        assert_eq!(c.svc(name)["image"], "${OUTPOST_IMAGE:-outpost:local}");
    }
    // Public images by default; compose/build-images.sh's FROM scratch ones by variable.
    assert_eq!(
        c.svc("redis-a")["image"],
        "${OUTPOST_REDIS_IMAGE:-redis:7-alpine}"
    );
    assert_eq!(
        c.svc("lb-a")["image"],
        "${OUTPOST_NGINX_IMAGE:-nginx:alpine}"
    );
    assert_eq!(
        c.svc("postgres")["image"],
        "${OUTPOST_POSTGRES_IMAGE:-postgres:15-alpine}"
    );
    let script = read("compose/build-images.sh");
    for default in [
        "${OUTPOST_IMAGE:-outpost:local}",
        "${OUTPOST_REDIS_IMAGE:-outpost-redis:local}",
        "${OUTPOST_NGINX_IMAGE:-outpost-nginx:local}",
        "${OUTPOST_POSTGRES_IMAGE:-outpost-postgres:local}",
    ] {
        assert!(script.contains(default), "build-images.sh names {default}");
    }

    // Backends: the sample backend on port 9000, one per site.
    for b in ["backend-a", "backend-b"] {
        let cmd = c.command_text(b);
        assert!(
            cmd.contains("sample-backend --listen 0.0.0.0:9000"),
            "{b}: {cmd}"
        );
    }
}

#[test]
fn compose_volumes_hold_the_state() {
    let c = Compose::load();
    for v in ["postgres-data", "gw-b1-backup", "tokens"] {
        assert!(c.volumes.contains(v), "compose: volume {v} is not declared");
    }

    // PostgreSQL keeps its data directory on the named volume; both replicas use it as their
    // store, with the user, database and password it is initialised with. The password has no
    // default: nothing in the repository is a real secret.
    let pg = c.env("postgres");
    let (target, ro) = c
        .mount_of("postgres", "postgres-data")
        .expect("postgres data mount");
    assert_eq!(target, "/var/lib/postgresql/data");
    assert!(!ro);
    let password = &pg["POSTGRES_PASSWORD"];
    assert!(
        password.starts_with("${OUTPOST_POSTGRES_PASSWORD:?"),
        "the PostgreSQL password is required, without a default: {password}"
    );
    let expected_url = format!(
        "postgres://{}:{password}@postgres:5432/{}",
        pg["POSTGRES_USER"], pg["POSTGRES_DB"]
    );
    for cp in CONTROL_PLANES {
        let env = c.env(cp);
        assert_eq!(env["OUTPOST_STORE_URL"], expected_url, "{cp} store");
        assert!(
            env.contains_key("OUTPOST_ADMIN_TOKEN"),
            "the admin token comes from the environment"
        );
        assert!(
            c.mounts(cp).is_empty(),
            "{cp} keeps nothing outside PostgreSQL"
        );
    }
    assert_eq!(
        c.env("control-plane-1"),
        c.env("control-plane-2"),
        "the replicas are configured alike"
    );

    // gw-b1: backup enabled, in its volume.
    let env = c.env("gw-b1");
    assert_eq!(env["OUTPOST_BACKUP_ENABLED"], "true");
    let (target, ro) = c
        .mount_of("gw-b1", "gw-b1-backup")
        .expect("gw-b1 backup mount");
    assert_eq!(
        target, env["OUTPOST_BACKUP_DIR"],
        "gw-b1 backup dir is on its volume"
    );
    assert!(!ro);

    // Tokens: `tokens` writes them, gateways read them (read-only) from the file they are told
    // (control_plane.token_file): never through the environment or a shell.
    let (tokens_dir, ro) = c
        .mount_of("tokens", "tokens")
        .expect("tokens mounts tokens");
    assert!(!ro, "the tokens service writes the tokens");
    assert!(
        c.command_text("tokens")
            .contains(&format!("--output-dir {tokens_dir} ")),
        "tokens writes into {tokens_dir}"
    );
    for gw in GATEWAYS {
        let (dir, ro) = c
            .mount_of(gw, "tokens")
            .unwrap_or_else(|| panic!("{gw}: tokens"));
        assert!(ro, "{gw} mounts the tokens read-only");
        let env = c.env(gw);
        let site = if gw == "gw-b1" { "site-b" } else { "site-a" };
        assert_eq!(
            env["OUTPOST_CONTROL_PLANE_TOKEN_FILE"],
            format!("{dir}/{site}"),
            "{gw} token file"
        );
        assert!(!env.contains_key("OUTPOST_CONTROL_PLANE_TOKEN"));
        assert_eq!(c.command_text(gw), "gateway ", "{gw}");
    }
    // Site A has no backup (contrast with site B in the README); only gw-b1 owns one.
    for gw in SITE_A_GATEWAYS {
        assert!(c.mount_of(gw, "gw-b1-backup").is_none());
    }
}

#[test]
fn compose_health_checks_and_start_order() {
    let c = Compose::load();
    for name in OUTPOST_SERVICES {
        let hc = c.healthcheck(name);
        match name {
            // One-shot: nothing to watch once it has exited.
            "init" | "tokens" => {
                assert!(hc.is_none(), "{name}: health check should be disabled");
            }
            // `outpost probe`: the images have no curl, wget or shell.
            cp if CONTROL_PLANES.contains(&cp) => {
                let hc = hc.expect("control plane health check");
                assert_eq!(hc, "CMD outpost probe http://127.0.0.1:7070/healthz");
            }
            gw if GATEWAYS.contains(&gw) => {
                let hc = hc.unwrap_or_else(|| panic!("{gw}: no health check"));
                assert_eq!(hc, "CMD outpost probe http://127.0.0.1:8090/readyz", "{gw}");
            }
            backend => {
                let hc = hc.unwrap_or_else(|| panic!("{backend}: no health check"));
                assert_eq!(
                    hc, "CMD outpost probe http://127.0.0.1:9000/healthz",
                    "{backend}"
                );
            }
        }
    }
    assert_eq!(
        c.healthcheck("redis-a").as_deref(),
        Some("CMD redis-cli ping")
    );
    assert_eq!(
        c.healthcheck("postgres").as_deref(),
        Some("CMD pg_isready -h 127.0.0.1 -U outpost -d outpost")
    );
    // Neither nginx image has an HTTP client; nothing waits for lb-a.
    assert!(c.healthcheck("lb-a").is_none());
    for name in c.services.keys() {
        let cmd = c.command_text(name);
        assert!(!cmd.contains("/bin/sh"), "{name} needs a shell: {cmd}");
    }

    let dep = |svc: &str, on: &str| -> String {
        c.depends_on(svc)
            .get(on)
            .cloned()
            .unwrap_or_else(|| panic!("{svc} does not depend on {on}"))
    };
    assert_eq!(dep("init", "control-plane-1"), "service_healthy");
    for cp in CONTROL_PLANES {
        assert_eq!(dep(cp, "postgres"), "service_healthy", "{cp}");
        assert!(c.networks(cp).contains("control") && c.networks(cp).contains("store"));
    }
    assert_eq!(
        c.networks("postgres"),
        BTreeSet::from(["store".to_owned()]),
        "PostgreSQL is reachable by the control planes only"
    );
    assert_eq!(dep("tokens", "init"), "service_completed_successfully");
    for gw in GATEWAYS {
        assert_eq!(dep(gw, "tokens"), "service_completed_successfully", "{gw}");
        // A gateway must be (re)startable while the control plane is down: no direct dependency.
        for cp in CONTROL_PLANES {
            assert!(
                !c.depends_on(gw).contains_key(cp),
                "{gw} must not depend on {cp} (restart from backup while it is down)"
            );
        }
        assert_eq!(c.env(gw)["OUTPOST_CONTROL_PLANE_URL"], CONTROL_PLANE_URLS);
        assert!(
            !c.networks(gw).contains("store"),
            "{gw} cannot reach PostgreSQL"
        );
        assert!(
            c.networks(gw).contains("control"),
            "{gw} reaches the control plane"
        );
    }
    for gw in SITE_A_GATEWAYS {
        assert_eq!(dep(gw, "redis-a"), "service_healthy", "{gw}");
        let env = c.env(gw);
        assert_eq!(env["OUTPOST_REDIS_URL"], "redis://redis-a:6379/0", "{gw}");
        assert_eq!(env["OUTPOST_REDIS_NODES"], "3", "{gw}");
        assert_eq!(dep("lb-a", gw), "service_healthy");
    }
    assert!(!c.env("gw-b1").contains_key("OUTPOST_REDIS_URL"));
    assert!(
        !c.networks("redis-a").contains("site-b"),
        "Redis is site A's only"
    );

    let init = c.command_text("init");
    assert_eq!(init, "apply -f /config/fleet.yaml ");
    let tokens = c.command_text("tokens");
    assert!(
        tokens.starts_with("gateway-token --gateway site-a --gateway site-b "),
        "{tokens}"
    );
    assert!(
        c.mounts("init")
            .iter()
            .any(|(src, dst, _)| src == "./fleet.yaml" && dst == "/config/fleet.yaml"),
        "init mounts compose/fleet.yaml"
    );
    assert_eq!(c.svc("init")["restart"], "no");
    assert_eq!(c.svc("tokens")["restart"], "no");
}

#[test]
fn compose_ports_and_load_balancer() {
    let c = Compose::load();
    let has = |svc: &str, host: &str, container: &str| {
        assert!(
            c.published(svc)
                .contains(&(host.to_owned(), container.to_owned())),
            "{svc} publishes {host}:{container}: {:?}",
            c.published(svc)
        );
    };
    // No fixed host port: Docker picks one (`docker compose port SERVICE PORT` tells), so
    // several fleets run side by side and nothing on the host is in the way.
    for cp in CONTROL_PLANES {
        has(cp, "", "7070");
    }
    has("lb-a", "", "8080");
    has("gw-b1", "", "8080");
    for gw in GATEWAYS {
        has(gw, "", "8090");
    }
    for (name, svc) in &c.services {
        for p in svc["ports"].as_array().into_iter().flatten() {
            assert!(
                s(p).starts_with("${OUTPOST_BIND:-127.0.0.1}:"),
                "{name}: {p} binds to loopback unless OUTPOST_BIND says otherwise"
            );
        }
    }
    // 7071 is internal only; so is PostgreSQL.
    for cp in CONTROL_PLANES {
        assert!(!c.published(cp).iter().any(|(_, p)| p == "7071"), "{cp}");
    }
    assert!(c.published("postgres").is_empty());

    let nginx = read("compose/nginx-site-a.conf");
    for gw in SITE_A_GATEWAYS {
        assert!(
            nginx.contains(&format!("server {gw}:8080")),
            "lb-a forwards to {gw}"
        );
    }
    assert!(nginx.contains("listen 8080;"));
    // A node that cannot be reached (killed, stopped) costs a retry on the next, not an error.
    assert!(nginx.contains("proxy_next_upstream error timeout;"));
    // Debian's nginx 1.22 (build-images.sh) has no `resolve` for upstream servers.
    assert!(
        nginx
            .lines()
            .filter(|l| l.trim_start().starts_with("server "))
            .all(|l| !l.contains("resolve")),
        "upstream servers use `resolve`"
    );
    assert!(c.mounts("lb-a").iter().any(
        |(src, dst, _)| src == "./nginx-site-a.conf" && dst == "/etc/nginx/conf.d/default.conf"
    ));
}

/// The gateway variables compose sets are real settings: derived from config/gateway.toml,
/// which lists every key of the gateway's settings.
#[test]
fn compose_gateway_variables_are_settings_keys() {
    let known = gateway_env_names();
    assert!(known.contains("OUTPOST_BACKUP_DIR") && known.contains("OUTPOST_CONTROL_PLANE_TOKEN"));
    let c = Compose::load();
    for gw in GATEWAYS {
        for var in c.env(gw).keys().filter(|k| k.starts_with("OUTPOST_")) {
            assert!(known.contains(var), "{gw}: {var} is not a gateway setting");
        }
    }
    let known = control_plane_env_names();
    for cp in CONTROL_PLANES {
        for var in c.env(cp).keys() {
            assert!(
                known.contains(var),
                "{cp}: {var} is not a control-plane setting"
            );
        }
    }
}

/// `OUTPOST_<SECTION>_<KEY>` for every `key = …` (or commented `# key = …`) in config/gateway.toml.
fn gateway_env_names() -> BTreeSet<String> {
    env_names("config/gateway.toml")
}

/// The same for config/control-plane.toml.
fn control_plane_env_names() -> BTreeSet<String> {
    env_names("config/control-plane.toml")
}

fn env_names(settings_file: &str) -> BTreeSet<String> {
    let mut section = String::new();
    let mut out = BTreeSet::new();
    for line in read(settings_file).lines() {
        let line = line.trim();
        if let Some(sec) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = sec.to_owned();
            continue;
        }
        let body = line.strip_prefix("# ").unwrap_or(line);
        if let Some((key, _)) = body.split_once(" = ")
            && !key.is_empty()
            && key.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        {
            out.insert(format!("OUTPOST_{section}_{key}").to_ascii_uppercase());
        }
    }
    out
}

// ============================================================================ fleet.yaml

#[test]
fn fleet_file_parses_and_matches_the_compose_topology() {
    let doc = Document::from_yaml(&read("compose/fleet.yaml"))
        .unwrap_or_else(|p| panic!("compose/fleet.yaml:\n{p}"));
    let c = Compose::load();

    let mut backends = BTreeMap::new();
    let mut apis = BTreeMap::new();
    let mut gateways = BTreeMap::new();
    let mut keys = BTreeSet::new();
    for r in &doc.resources {
        match r {
            Resource::Backend(b) => {
                backends.insert(b.name.clone(), b.url.clone());
            }
            Resource::Api(a) => {
                apis.insert(a.name.clone(), a.backend.clone());
            }
            Resource::Gateway(g) => {
                gateways.insert(g.name.clone(), g.apis.clone());
            }
            Resource::Subscription(sub) => {
                for k in [&sub.primary_key, &sub.secondary_key] {
                    assert!(
                        k.len() == 64 && k.chars().all(|c| c.is_ascii_hexdigit()),
                        "subscription {}: keys are fixed 64-hex strings so the README works",
                        sub.name
                    );
                    keys.insert(k.clone());
                }
                if let Scope::Product(p) = &sub.scope {
                    assert!(
                        doc.resources
                            .iter()
                            .any(|r| matches!(r, Resource::Product(x) if &x.name == p))
                    );
                }
            }
            _ => {}
        }
    }
    assert_eq!(
        gateways.keys().map(String::as_str).collect::<Vec<_>>(),
        ["site-a", "site-b"]
    );
    // The product with the shared limit exists (the README's rate-limit walk-through).
    assert!(
        doc.resources
            .iter()
            .any(|r| matches!(r, Resource::Product(p)
        if p.policies.inbound.iter().any(|x| x.name() == "rate-limit")))
    );

    // Each site's gateways can reach the backends of the APIs assigned to that site.
    let site_nodes = [("site-a", &SITE_A_GATEWAYS[..]), ("site-b", &["gw-b1"][..])];
    for (site, nodes) in site_nodes {
        assert!(!gateways[site].is_empty(), "{site} has APIs assigned");
        for api in &gateways[site] {
            let url = &backends[&apis[api]];
            let host = url
                .trim_start_matches("http://")
                .split([':', '/'])
                .next()
                .unwrap_or_default();
            assert!(
                c.services.contains_key(host),
                "{api}: backend host {host} is a service"
            );
            for node in nodes {
                assert!(
                    !c.networks(node).is_disjoint(&c.networks(host)),
                    "{node} ({site}) cannot reach {host} for API {api}"
                );
            }
        }
    }

    // Every subscription key quoted in the README is one the fleet defines.
    let readme = read("compose/README.md");
    let quoted = hex64_words(&readme);
    assert!(!quoted.is_empty(), "the README shows subscription keys");
    for k in quoted {
        assert!(
            keys.contains(&k),
            "README uses key {k} that fleet.yaml does not define"
        );
    }
}

fn hex64_words(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| w.len() == 64 && w.chars().all(|c| c.is_ascii_hexdigit()))
        .map(str::to_owned)
        .collect()
}

// ============================================================================ Dockerfile

#[test]
fn dockerfile_builds_a_non_root_image_with_a_health_check() {
    let d = read("compose/Dockerfile");
    let probe = r#"CMD ["outpost", "probe", "http://127.0.0.1:8090/healthz"]"#;
    for needle in [
        "FROM rust:",
        "cargo build --release --locked",
        "FROM debian:bookworm-slim",
        "USER 10001",
        "HEALTHCHECK",
        probe,
        r#"ENTRYPOINT ["outpost"]"#,
        "/var/lib/outpost",
    ] {
        assert!(d.contains(needle), "compose/Dockerfile lacks {needle}");
    }
    assert!(!d.contains("curl"), "the health check needs no curl");

    // The images compose/build-images.sh builds without a registry: FROM scratch, unprivileged,
    // and the outpost one interchangeable with compose/Dockerfile's.
    let local = read("compose/images/outpost.Dockerfile");
    for needle in [
        "FROM scratch",
        "USER 10001:10001",
        "COPY --chown=10001:10001 state/ /var/lib/outpost/",
        probe,
        r#"ENTRYPOINT ["outpost"]"#,
        "EXPOSE 8080 8443 8090 7070 7071",
    ] {
        assert!(
            local.contains(needle),
            "images/outpost.Dockerfile lacks {needle}"
        );
    }
    for (file, user) in [
        ("compose/images/redis.Dockerfile", "USER 999:999"),
        ("compose/images/nginx.Dockerfile", "USER 101:101"),
        ("compose/images/postgres.Dockerfile", "USER 999:999"),
    ] {
        let d = read(file);
        assert!(d.contains("FROM scratch") && d.contains(user), "{file}");
    }
    // PostgreSQL: initdb at the first start as the image's user, the password from the
    // environment through a pipe (never built into the image), passwords for every TCP client.
    let pg = read("compose/images/postgres.Dockerfile");
    assert!(!pg.contains("PASSWORD="), "no password in the image");
    assert!(pg.contains(r#"ENTRYPOINT ["postgres-entrypoint.sh"]"#));
    let entry = read("compose/images/postgres-entrypoint.sh");
    for needle in [
        "initdb --pgdata=\"$PGDATA\"",
        "--pwfile=/dev/stdin",
        "--auth-host=scram-sha-256",
        "host all all all scram-sha-256",
        "unset POSTGRES_PASSWORD",
        "exec postgres",
    ] {
        assert!(
            entry.contains(needle),
            "postgres-entrypoint.sh lacks {needle}"
        );
    }
    let script = read("compose/build-images.sh");
    for (dir, mode) in [
        ("control-plane,backup,spool,tokens", "chmod 0700"),
        ("/etc/ssl/certs/ca-certificates.crt", "cp -L"),
    ] {
        assert!(
            script.lines().any(|l| l.contains(dir) && l.contains(mode)),
            "build-images.sh: {mode} {dir}"
        );
    }
}

// ============================================================================ Kubernetes

fn k8s_objects() -> Vec<(String, Value)> {
    let kust = yaml("deploy/kubernetes/kustomization.yaml");
    let resources: Vec<String> = kust["resources"]
        .as_array()
        .expect("kustomization resources")
        .iter()
        .map(|r| s(r).to_owned())
        .collect();
    // Every manifest in the folder is listed, and every listed one exists.
    let mut on_disk: Vec<String> = std::fs::read_dir(root().join("deploy/kubernetes"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    on_disk.sort();
    let mut listed = resources.clone();
    listed.sort();
    assert_eq!(listed, on_disk, "kustomization.yaml resources vs files");

    resources
        .iter()
        .flat_map(|f| yaml_docs(&format!("deploy/kubernetes/{f}")))
        .map(|o| (s(&o["kind"]).to_owned(), o))
        .collect()
}

fn find<'a>(objs: &'a [(String, Value)], kind: &str, name: &str) -> &'a Value {
    objs.iter()
        .find(|(k, o)| k == kind && o["metadata"]["name"] == name)
        .map(|(_, o)| o)
        .unwrap_or_else(|| panic!("no {kind} {name} in deploy/kubernetes"))
}

#[test]
fn kubernetes_gateway_workload() {
    let objs = k8s_objects();
    assert!(objs.iter().any(|(k, _)| k == "Namespace"));

    // StatefulSet: one backup claim per pod (see the file's header for why not a Deployment).
    let sts = find(&objs, "StatefulSet", "outpost-gateway");
    let spec = &sts["spec"];
    assert_eq!(spec["replicas"], 3);
    let pod = &spec["template"]["spec"];
    let labels = &spec["template"]["metadata"]["labels"];
    assert_eq!(
        &spec["selector"]["matchLabels"]["app.kubernetes.io/name"],
        &labels["app.kubernetes.io/name"]
    );
    let ctr = &pod["containers"][0];
    assert_eq!(ctr["args"][0], "gateway");

    let probe = |name: &str, path: &str| {
        let p = &ctr[name]["httpGet"];
        assert_eq!(p["port"], 8090, "{name} on the ops port");
        assert_eq!(p["path"], path, "{name} path");
    };
    probe("readinessProbe", "/readyz");
    probe("livenessProbe", "/healthz");
    probe("startupProbe", "/healthz");
    assert!(ctr["resources"]["requests"].is_object() && ctr["resources"]["limits"].is_object());
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["runAsUser"], 10001);
    assert_eq!(ctr["securityContext"]["readOnlyRootFilesystem"], true);
    assert!(pod["terminationGracePeriodSeconds"].as_u64().unwrap_or(0) >= 30);
    assert!(
        pod["topologySpreadConstraints"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
    );

    // Backup: a claim template mounted at the backup dir the ConfigMap enables.
    let claims = spec["volumeClaimTemplates"]
        .as_array()
        .expect("volumeClaimTemplates");
    let claim = s(&claims[0]["metadata"]["name"]);
    let mount = ctr["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == claim)
        .expect("the backup claim is mounted");
    let toml =
        s(&find(&objs, "ConfigMap", "outpost-gateway-config")["data"]["gateway.toml"]).to_owned();
    assert!(
        toml.contains("enabled = true"),
        "backup enabled in gateway.toml"
    );
    assert!(
        toml.contains(&format!("dir = \"{}\"", s(&mount["mountPath"]))),
        "backup.dir is the claim's mount path"
    );
    let cm_mount = ctr["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "config")
        .expect("config mounted");
    assert_eq!(
        ctr["args"][2],
        format!("{}/gateway.toml", s(&cm_mount["mountPath"])),
        "--config points at the ConfigMap file"
    );
    // The settings keys the ConfigMap uses exist.
    let known = gateway_env_names();
    let mut section = String::new();
    for line in toml.lines().map(str::trim) {
        if let Some(sec) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = sec.to_owned();
        } else if let Some((key, _)) = line.split_once(" = ")
            && !line.starts_with('#')
        {
            let var = format!("OUTPOST_{section}_{key}").to_ascii_uppercase();
            assert!(
                known.contains(&var),
                "ConfigMap gateway.toml: unknown key {section}.{key}"
            );
        }
    }

    // Token from the Secret.
    let token_env = ctr["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "OUTPOST_CONTROL_PLANE_TOKEN")
        .expect("token variable");
    let secret_ref = &token_env["valueFrom"]["secretKeyRef"];
    let secret = find(&objs, "Secret", s(&secret_ref["name"]));
    assert!(
        secret["stringData"][s(&secret_ref["key"])]
            .as_str()
            .is_some_and(|t| t.starts_with("GatewayKey "))
    );

    // Services: traffic 8080/8443, metrics 8090 (the governing headless Service).
    let ports_of = |svc: &Value| -> Vec<u64> {
        svc["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["port"].as_u64().unwrap())
            .collect()
    };
    let traffic = find(&objs, "Service", "outpost-gateway");
    assert_eq!(ports_of(traffic), [8080, 8443]);
    let ops = find(&objs, "Service", s(&spec["serviceName"]));
    assert_eq!(ops["spec"]["clusterIP"], "None");
    assert_eq!(ports_of(ops), [8090]);

    let pdb = find(&objs, "PodDisruptionBudget", "outpost-gateway");
    assert_eq!(
        &pdb["spec"]["selector"]["matchLabels"],
        &spec["selector"]["matchLabels"]
    );

    // Redis: a Deployment and the Service the ConfigMap points at.
    find(&objs, "Deployment", "outpost-redis");
    find(&objs, "Service", "outpost-redis");
    assert!(toml.contains("url = \"redis://outpost-redis:6379/0\""));
}

/// The control plane: a 2-replica Deployment on the PostgreSQL of `postgres.yaml`, its Service
/// on the ports the gateways' ConfigMap and the replicas listen on, secrets wired by name.
#[test]
fn kubernetes_control_plane_replicas_on_postgres() {
    let objs = k8s_objects();
    let deploy = find(&objs, "Deployment", "outpost-control-plane");
    let spec = &deploy["spec"];
    assert_eq!(spec["replicas"], 2, "two replicas");
    assert_eq!(spec["strategy"]["rollingUpdate"]["maxUnavailable"], 0);
    let selector = &spec["selector"]["matchLabels"];
    let labels = &spec["template"]["metadata"]["labels"];
    assert_eq!(
        &selector["app.kubernetes.io/name"],
        &labels["app.kubernetes.io/name"]
    );
    let pod = &spec["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let ctr = &pod["containers"][0];
    assert_eq!(ctr["args"][0], "control-plane");
    assert_eq!(ctr["securityContext"]["readOnlyRootFilesystem"], true);
    assert!(ctr["resources"]["requests"].is_object() && ctr["resources"]["limits"].is_object());

    // Every variable is a control-plane setting; the listeners are the named container ports.
    let known = control_plane_env_names();
    let env: Vec<&Value> = ctr["env"].as_array().expect("env").iter().collect();
    for e in &env {
        let name = s(&e["name"]);
        assert!(
            known.contains(name),
            "{name} is not a control-plane setting"
        );
    }
    let value = |name: &str| -> &Value {
        env.iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("{name} not set"))
    };
    let container_ports: BTreeMap<&str, u64> = ctr["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (s(&p["name"]), p["containerPort"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        container_ports,
        BTreeMap::from([("admin", 7070), ("gateway-api", 7071)])
    );
    assert_eq!(value("OUTPOST_ADMIN_LISTEN")["value"], "0.0.0.0:7070");
    assert_eq!(value("OUTPOST_GATEWAY_API_LISTEN")["value"], "0.0.0.0:7071");
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        let p = &ctr[probe]["httpGet"];
        assert_eq!(p["path"], "/healthz", "{probe}");
        let port = p["port"].as_u64().unwrap();
        assert!(container_ports.values().any(|&c| c == port), "{probe} port");
    }

    // Admin token and store URL from the Secret; the URL names the database of postgres.yaml.
    let secret_value = |var: &str| -> String {
        let r = &value(var)["valueFrom"]["secretKeyRef"];
        let secret = find(&objs, "Secret", s(&r["name"]));
        s(&secret["stringData"][s(&r["key"])]).to_owned()
    };
    assert!(!secret_value("OUTPOST_ADMIN_TOKEN").is_empty());
    let store_url = secret_value("OUTPOST_STORE_URL");
    let rest = store_url
        .strip_prefix("postgres://")
        .expect("store-url is a postgres:// URL");
    let (userinfo, rest) = rest.split_once('@').expect("user:password@");
    let (user, password) = userinfo.split_once(':').expect("user:password");
    let (hostport, database) = rest.split_once('/').expect("/database");
    let (host, port) = hostport.split_once(':').expect("host:port");
    let pg_svc = find(&objs, "Service", host);
    assert!(
        pg_svc["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["port"].as_u64().map(|p| p.to_string()).as_deref() == Some(port)),
        "store-url port {port} is a port of Service {host}"
    );
    let pg = find(&objs, "StatefulSet", "outpost-postgres");
    assert_eq!(
        &pg["spec"]["selector"]["matchLabels"],
        &pg_svc["spec"]["selector"]
    );
    let pg_ctr = &pg["spec"]["template"]["spec"]["containers"][0];
    let pg_env = |name: &str| -> &Value {
        pg_ctr["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("postgres: {name} not set"))
    };
    assert_eq!(pg_env("POSTGRES_USER")["value"], user);
    assert_eq!(pg_env("POSTGRES_DB")["value"], database);
    let pw_ref = &pg_env("POSTGRES_PASSWORD")["valueFrom"]["secretKeyRef"];
    assert_eq!(
        s(&find(&objs, "Secret", s(&pw_ref["name"]))["stringData"][s(&pw_ref["key"])]),
        password,
        "the store-url password is the PostgreSQL password"
    );
    let allowed = &find(&objs, "NetworkPolicy", "outpost-postgres")["spec"]["ingress"][0]["from"]
        [0]["podSelector"]["matchLabels"];
    assert_eq!(allowed, selector, "the control plane may reach PostgreSQL");

    // The Service: admin 7070 and gateway API 7071 onto the named container ports.
    let svc = find(&objs, "Service", "outpost-control-plane");
    assert_eq!(&svc["spec"]["selector"], selector);
    let svc_ports: BTreeMap<&str, (u64, &str)> = svc["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                s(&p["name"]),
                (p["port"].as_u64().unwrap(), s(&p["targetPort"])),
            )
        })
        .collect();
    assert_eq!(
        svc_ports,
        BTreeMap::from([
            ("admin", (7070, "admin")),
            ("gateway-api", (7071, "gateway-api"))
        ])
    );
    let pdb = find(&objs, "PodDisruptionBudget", "outpost-control-plane");
    assert_eq!(&pdb["spec"]["selector"]["matchLabels"], selector);

    // The gateways' control_plane.url is that Service's gateway API port.
    let toml =
        s(&find(&objs, "ConfigMap", "outpost-gateway-config")["data"]["gateway.toml"]).to_owned();
    let url = toml
        .lines()
        .map(str::trim)
        .skip_while(|l| *l != "[control_plane]")
        .find_map(|l| l.strip_prefix("url = "))
        .expect("[control_plane] url in the gateway ConfigMap");
    assert_eq!(url, "\"http://outpost-control-plane:7071\"");
}

// ============================================================================ external tools

/// `docker compose config` (or `docker-compose config`, v1) and `kubectl kustomize`, when
/// those clients are installed. Neither needs a Docker engine or a cluster; a missing client
/// skips its check.
#[test]
fn external_validators_when_available() {
    let root = root();
    let works = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let compose: Option<&[&str]> = if works("docker", &["compose", "version"]) {
        Some(&["docker", "compose"])
    } else if works("docker-compose", &["version"]) {
        Some(&["docker-compose"])
    } else {
        None
    };
    match compose {
        Some(cli) => {
            let out = Command::new(cli[0])
                .args(&cli[1..])
                .args(["-f", "compose/docker-compose.yml", "config", "--quiet"])
                .env("OUTPOST_POSTGRES_PASSWORD", "checkonly")
                .current_dir(&root)
                .output()
                .expect("docker compose config runs");
            assert!(
                out.status.success(),
                "{} config:\n{}",
                cli.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        None => eprintln!("skipped: neither `docker compose` nor `docker-compose` is available"),
    }
    match Command::new("kubectl")
        .args(["kustomize", "deploy/kubernetes"])
        .current_dir(&root)
        .output()
    {
        Ok(o) if o.status.success() => {
            let text = String::from_utf8_lossy(&o.stdout);
            assert!(text.contains("kind: StatefulSet") && text.contains("namespace: outpost"));
        }
        Ok(o) if String::from_utf8_lossy(&o.stderr).contains("unknown command") => {
            eprintln!("skipped: this kubectl has no kustomize")
        }
        Ok(o) => panic!(
            "kubectl kustomize deploy/kubernetes:\n{}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(_) => eprintln!("skipped: `kubectl` is not available"),
    }
}
