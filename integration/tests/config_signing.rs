//! Signed, gateway-bound configuration with real processes (issue 9, item 4): a control plane,
//! gateways with backup directories, and a backend on loopback.
//!
//! The backup cases edit files the way someone with access to a backup volume could: the
//! backup is decoded, changed, its content hash and checksum recomputed, and written back
//! intact — only the control plane's signature can tell.

use std::path::Path;

use outpost_actors::config_sync::backup;
use outpost_actors::config_sync::trust;
use outpost_integration::*;
use outpost_model::Resource;
use outpost_model::wire::GatewaySnapshot;
use serde_json::{Value, json};

fn fleet_yaml(backend: &TestBackend, env: &str) -> String {
    format!(
        r#"
apiVersion: outpost/v1
named-values:
  - {{name: env, value: {env}}}
backends:
  - {{name: echo, url: "{backend}"}}
apis:
  - name: echo
    path: echo
    backend: echo
    subscription-required: false
    operations:
      - {{name: list-items, method: GET, url-template: "/items"}}
    policies:
      inbound:
        - base
        - set-header: {{name: X-Env, value: "{{{{env}}}}"}}
gateways:
  - {{name: site-a, apis: [echo]}}
  - {{name: site-b, apis: [echo]}}
"#,
        backend = backend.url()
    )
}

struct Fleet {
    backend: TestBackend,
    cp: ControlPlane,
}

async fn fleet() -> Fleet {
    let backend = TestBackend::start();
    let cp = ControlPlane::start().await;
    cp.apply(&fleet_yaml(&backend, "one")).await;
    Fleet { backend, cp }
}

impl Fleet {
    /// A token for `gateway` and the signing key the token answer shows.
    async fn token_and_key(&self, gateway: &str) -> (String, String) {
        let (status, body) = self
            .cp
            .call(
                "POST",
                &format!("/api/v1/gateways/{gateway}/token"),
                Some(json!({"key": "primary", "lifetime-secs": 86_400})),
            )
            .await;
        assert_eq!(status, 200, "{body:#}");
        let key = body["config-signing-keys"][0]
            .as_str()
            .expect("the token answer shows the config signing key")
            .to_owned();
        (body["value"].as_str().unwrap().to_owned(), key)
    }

    async fn options(&self, gateway: &str, backup: &Path) -> GatewayOptions {
        let (token, _) = self.token_and_key(gateway).await;
        GatewayOptions {
            control_plane_url: Some(self.cp.gateway_url()),
            token: Some(token),
            backup_dir: Some(backup.to_owned()),
            ..Default::default()
        }
    }
}

async fn env_served(gw: &Gateway) -> (u16, String) {
    match client().get(gw.url("/echo/items")).send().await {
        Ok(res) => {
            let status = res.status().as_u16();
            let body: Value = res.json().await.unwrap_or(Value::Null);
            let env = body["headers"]["x-env"].as_str().unwrap_or_default();
            (status, env.to_owned())
        }
        Err(e) => (0, http::describe_error(&e)),
    }
}

async fn wait_env(gw: &Gateway, expected: &str) {
    eventually(secs(20), ms(100), async || match env_served(gw).await {
        (200, env) if env == expected => Ok(()),
        other => Err(format!("{other:?}")),
    })
    .await
    .unwrap();
}

async fn wait_backup(dir: &Path, revision: u64) -> backup::Backup {
    eventually(secs(20), ms(100), async || match backup::read(dir) {
        Ok(Some(b)) if b.snapshot.revision >= revision => Ok(b),
        other => Err(format!("{other:?}")),
    })
    .await
    .unwrap()
}

/// Starts a gateway that is expected to refuse to start; returns its output.
async fn refused_start(name: &str, options: GatewayOptions) -> String {
    let mut gw = Gateway::spawn(name, options);
    let (status, output) = gw.wait_exit(secs(30)).await;
    let status = status.expect("the gateway exits on its own");
    assert!(!status.success(), "non-zero exit:\n{output}");
    output
}

#[tokio::test(flavor = "multi_thread")]
async fn an_edited_backup_is_refused_even_with_recomputed_hashes() {
    let mut f = fleet().await;
    let dir = tempfile::tempdir().unwrap();
    let options = f.options("site-a", dir.path()).await;
    let mut gw = Gateway::start("site-a", options.clone()).await;
    wait_env(&gw, "one").await;
    let genuine = wait_backup(dir.path(), f.cp.revision().await).await;
    gw.process.kill();
    f.cp.kill();

    // Send the traffic (and whatever secrets its policies add) somewhere else.
    let mut resources = genuine.snapshot.resources.clone();
    let mut edited_urls = 0;
    for r in resources.values_mut() {
        if let Resource::Backend(b) = r {
            b.url = "http://127.0.0.1:9/attacker".into();
            edited_urls += 1;
        }
    }
    assert_eq!(edited_urls, 1);
    let mut snapshot = GatewaySnapshot::from_view(genuine.snapshot.revision, resources);
    assert_ne!(
        snapshot.hash, genuine.snapshot.hash,
        "content hash recomputed"
    );
    snapshot.signature = genuine.snapshot.signature.clone();
    snapshot.endorsements = genuine.snapshot.endorsements.clone();
    backup::write(
        dir.path(),
        &backup::Backup {
            gateway: "site-a".into(),
            snapshot,
        },
    )
    .unwrap();
    assert!(
        backup::read(dir.path()).unwrap().is_some(),
        "checksum and content hash are consistent: only the signature can tell"
    );

    let output = refused_start("site-a-2", options).await;
    assert!(
        output.contains("backup")
            && output.contains("refused")
            && output.contains("signature does not verify"),
        "the refusal names the backup and the reason:\n{output}"
    );
    assert_eq!(f.backend.hits("/attacker"), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn another_gateways_backup_is_refused() {
    let mut f = fleet().await;
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let revision = f.cp.revision().await;

    let mut b = Gateway::start("site-b", f.options("site-b", b_dir.path()).await).await;
    wait_backup(b_dir.path(), revision).await;
    b.process.kill();

    // Site A trusts the key given out of band (from the token answer), not a pin.
    let (token, key) = f.token_and_key("site-a").await;
    let a_options = GatewayOptions {
        control_plane_url: Some(f.cp.gateway_url()),
        token: Some(token),
        backup_dir: Some(a_dir.path().to_owned()),
        extra_env: vec![("OUTPOST_CONTROL_PLANE_CONFIG_SIGNING_KEYS".into(), key)],
        ..Default::default()
    };
    let mut a = Gateway::start("site-a", a_options.clone()).await;
    wait_env(&a, "one").await;
    wait_backup(a_dir.path(), revision).await;
    assert!(
        trust::read_pins(a_dir.path()).unwrap().is_empty(),
        "configured keys are not pinned"
    );
    a.process.kill();
    f.cp.kill();

    // Site B's genuine, correctly signed backup in site A's backup directory.
    std::fs::copy(backup::path_in(b_dir.path()), backup::path_in(a_dir.path())).unwrap();
    let output = refused_start("site-a-2", a_options).await;
    assert!(
        output.contains("backup is for gateway 'site-b', this gateway is 'site-a'"),
        "{output}"
    );

    // With the control plane back, the foreign backup is replaced by site A's own.
    f.cp.restart().await;
    let a_options = f.options("site-a", a_dir.path()).await;
    let a = Gateway::start("site-a-3", a_options).await;
    wait_env(&a, "one").await;
    eventually(secs(20), ms(100), async || {
        match backup::read(a_dir.path()) {
            Ok(Some(b)) if b.gateway == "site-a" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn gateways_follow_a_key_rotation_and_a_wrong_key_is_refused() {
    let mut f = fleet().await;
    let (pinned_dir, listed_dir, wrong_dir) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let (_, old_key) = f.token_and_key("site-a").await;

    // One gateway pins on first contact, one lists the key explicitly.
    let mut pinned = Gateway::start("pinned", f.options("site-a", pinned_dir.path()).await).await;
    let mut listed_options = f.options("site-b", listed_dir.path()).await;
    listed_options.extra_env = vec![(
        "OUTPOST_CONTROL_PLANE_CONFIG_SIGNING_KEYS".into(),
        old_key.clone(),
    )];
    let listed = Gateway::start("listed", listed_options).await;
    wait_env(&pinned, "one").await;
    wait_env(&listed, "one").await;
    let pins = trust::read_pins(pinned_dir.path()).unwrap();
    assert_eq!(
        pins.iter().map(ToString::to_string).collect::<Vec<_>>(),
        vec![old_key.clone()]
    );

    let (status, rotated) = f.cp.call("POST", "/api/v1/signing-keys/rotate", None).await;
    assert_eq!(status, 200, "{rotated:#}");
    let new_key = rotated["active"].as_str().unwrap().to_owned();
    assert_ne!(new_key, old_key);
    f.cp.apply(&fleet_yaml(&f.backend, "two")).await;
    let revision = f.cp.revision().await;

    // Both follow: the new key is endorsed by the old one they trust.
    wait_env(&pinned, "two").await;
    wait_env(&listed, "two").await;
    let on_disk = wait_backup(pinned_dir.path(), revision).await;
    assert_eq!(on_disk.snapshot.signature.key, new_key);
    let pins: Vec<String> = trust::read_pins(pinned_dir.path())
        .unwrap()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        pins,
        vec![old_key.clone(), new_key.clone()],
        "the pin moved"
    );

    // The pinned gateway restarts from its backup, signed by the new key, while the control
    // plane is away.
    f.cp.kill();
    pinned.restart().await;
    assert_eq!(env_served(&pinned).await, (200, "two".to_owned()));
    let (_, ready) = pinned.readyz().await;
    assert_eq!(ready["config"]["source"], "backup", "{ready:#}");

    // A gateway given a key the control plane does not hold refuses its configuration.
    f.cp.restart().await;
    let mut wrong = f.options("site-a", wrong_dir.path()).await;
    let not_ours = outpost_model::signing::SigningKey::from_seed([9; 32]).public();
    wrong.extra_env = vec![(
        "OUTPOST_CONTROL_PLANE_CONFIG_SIGNING_KEYS".into(),
        not_ours.to_string(),
    )];
    let output = refused_start("wrong-key", wrong).await;
    assert!(
        output.contains("signature refused") && output.contains("does not trust"),
        "{output}"
    );
    assert!(
        backup::read(wrong_dir.path()).unwrap().is_none(),
        "nothing untrusted is backed up"
    );
}
