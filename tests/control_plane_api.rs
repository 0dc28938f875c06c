//! The management API over real HTTP, against `control_plane::start` on 127.0.0.1:0: CRUD and
//! validation for every kind, authentication, 404/409/412, concurrent writers, pagination,
//! revisions across a restart, body limits, secrets, the OpenAPI document and the dashboard.

use std::collections::BTreeSet;
use std::sync::{Arc, Barrier};

use outpost::control_plane::routes::{self, REVISION_HEADER};
use outpost::control_plane::settings::ControlPlaneSettings;
use outpost::control_plane::{RunningControlPlane, start};
use outpost_model::resources::SECRET_MASK;
use outpost_model::{Kind, Resource, ResourceKey};
use reqwest::StatusCode;
use reqwest::blocking::{Client, RequestBuilder, Response};
use serde_json::{Value, json};

const TOKEN: &str = "test-admin-token-0123456789";

struct Cp {
    running: RunningControlPlane,
    http: Client,
}

fn settings(data_dir: &str) -> ControlPlaneSettings {
    let mut s = ControlPlaneSettings::default();
    s.admin.listen = "127.0.0.1:0".into();
    s.gateway_api.listen = "127.0.0.1:0".into();
    s.store.data_dir = data_dir.into();
    s.admin.token = TOKEN.into();
    s
}

fn cp() -> Cp {
    cp_with(settings(":memory:"))
}

fn cp_with(s: ControlPlaneSettings) -> Cp {
    Cp {
        running: start(s).expect("control plane starts"),
        http: Client::new(),
    }
}

impl Cp {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.running.admin_url())
    }

    fn anon(&self, method: reqwest::Method, path: &str) -> RequestBuilder {
        self.http.request(method, self.url(path))
    }

    fn req(&self, method: reqwest::Method, path: &str) -> RequestBuilder {
        self.anon(method, path).bearer_auth(TOKEN)
    }

    fn get(&self, path: &str) -> Response {
        self.req(reqwest::Method::GET, path).send().unwrap()
    }

    fn put(&self, path: &str, body: Value) -> Response {
        self.req(reqwest::Method::PUT, path)
            .json(&body)
            .send()
            .unwrap()
    }

    fn post(&self, path: &str, body: Value) -> Response {
        self.req(reqwest::Method::POST, path)
            .json(&body)
            .send()
            .unwrap()
    }

    fn delete(&self, path: &str) -> Response {
        self.req(reqwest::Method::DELETE, path).send().unwrap()
    }

    fn revision(&self) -> u64 {
        self.get("/api/v1/revision").json::<Value>().unwrap()["revision"]
            .as_u64()
            .unwrap()
    }
}

/// Status, headers and JSON body of an answer, with the body in the panic message on mismatch.
fn expect(res: Response, status: StatusCode) -> (reqwest::header::HeaderMap, Value) {
    let got = res.status();
    let headers = res.headers().clone();
    let text = res.text().unwrap();
    assert_eq!(got, status, "body: {text}");
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    (headers, body)
}

fn header_u64(h: &reqwest::header::HeaderMap, name: &str) -> u64 {
    h.get(name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .unwrap()
        .trim_matches('"')
        .parse()
        .unwrap()
}

fn problems(body: &Value) -> Vec<String> {
    body["problems"]
        .as_array()
        .unwrap_or_else(|| panic!("no problems in {body}"))
        .iter()
        .map(|p| {
            format!(
                "{}: {}",
                p["path"].as_str().unwrap(),
                p["message"].as_str().unwrap()
            )
        })
        .collect()
}

/// A valid body of each kind, in dependency order.
fn samples() -> Vec<(Kind, &'static str, Value)> {
    vec![
        (
            Kind::NamedValue,
            "backend-host",
            json!({"name": "backend-host", "value": "127.0.0.1:9000"}),
        ),
        (
            Kind::Backend,
            "orders",
            json!({"name": "orders", "url": "http://{{backend-host}}/v1"}),
        ),
        (
            Kind::Api,
            "orders",
            json!({"name": "orders", "path": "orders", "backend": "orders",
                "operations": [{"name": "get-order", "method": "GET", "url-template": "/orders/{id}"}],
                "policies": {"inbound": ["base", {"set-header": {"name": "X-A", "value": "1"}}]}}),
        ),
        (
            Kind::Product,
            "gold",
            json!({"name": "gold", "apis": ["orders"]}),
        ),
        (
            Kind::Subscription,
            "alice",
            json!({"name": "alice", "scope": {"product": "gold"}}),
        ),
        (
            Kind::Gateway,
            "site-a",
            json!({"name": "site-a", "location": "eu", "apis": ["orders"]}),
        ),
    ]
}

/// A change to each sample that is still valid.
fn modified(kind: Kind, mut body: Value) -> Value {
    match kind {
        Kind::NamedValue => body["value"] = json!("127.0.0.1:9001"),
        Kind::Backend => body["request-timeout-ms"] = json!(1234),
        Kind::Api => body["display-name"] = json!("Orders"),
        Kind::Product => body["display-name"] = json!("Gold"),
        Kind::Subscription => body["state"] = json!("suspended"),
        Kind::Gateway => body["location"] = json!("us"),
        Kind::GlobalPolicy => unreachable!(),
    }
    body
}

#[test]
fn crud_for_every_kind() {
    let cp = cp();
    let mut last_rev = cp.revision();
    assert_eq!(last_rev, 0);
    for (kind, name, body) in samples() {
        let plural = kind.plural();
        // Create.
        let (h, created) = expect(
            cp.post(&format!("/api/v1/{plural}"), body.clone()),
            StatusCode::CREATED,
        );
        let rev = header_u64(&h, REVISION_HEADER);
        assert_eq!(rev, last_rev + 1, "{kind}");
        assert_eq!(created["revision"], json!(rev));
        assert_eq!(created["changed"], json!(true));
        assert_eq!(created["resource"]["name"], json!(name));
        assert_eq!(header_u64(&h, "etag"), rev);
        assert_eq!(
            h.get("location").unwrap().to_str().unwrap(),
            format!("/api/v1/{plural}/{name}")
        );
        // Read.
        let (h, got) = expect(cp.get(&format!("/api/v1/{plural}/{name}")), StatusCode::OK);
        assert_eq!(header_u64(&h, "etag"), rev);
        assert_eq!(got, created["resource"], "{kind}");
        // Empty values are pruned from answers.
        assert!(got.get("display-name").is_none(), "{got}");
        // List.
        let (_, list) = expect(cp.get(&format!("/api/v1/{plural}")), StatusCode::OK);
        assert_eq!(list["items"].as_array().unwrap().len(), 1);
        assert_eq!(list["next"], Value::Null);
        assert_eq!(list["revision"], json!(rev));
        // Replace with If-Match; the body may leave the name out.
        let mut changed = modified(kind, got.clone());
        changed.as_object_mut().unwrap().remove("name");
        let res = cp
            .req(reqwest::Method::PUT, &format!("/api/v1/{plural}/{name}"))
            .header("If-Match", format!("\"{rev}\""))
            .json(&changed)
            .send()
            .unwrap();
        let (h, updated) = expect(res, StatusCode::OK);
        assert_eq!(header_u64(&h, REVISION_HEADER), rev + 1);
        assert_eq!(header_u64(&h, "etag"), rev + 1);
        assert_eq!(updated["changed"], json!(true));
        // The same body again changes nothing and keeps the revision.
        let (h, same) = expect(
            cp.put(&format!("/api/v1/{plural}/{name}"), changed.clone()),
            StatusCode::OK,
        );
        assert_eq!(same["changed"], json!(false));
        assert_eq!(header_u64(&h, REVISION_HEADER), rev + 1);
        assert_eq!(header_u64(&h, "etag"), rev + 1);
        last_rev = rev + 1;
    }
    // Subscription keys were generated and are kept across updates that leave them out.
    let (_, sub) = expect(cp.get("/api/v1/subscriptions/alice"), StatusCode::OK);
    assert_eq!(sub["primary-key"].as_str().unwrap().len(), 64);
    assert_eq!(sub["state"], json!("suspended"));
    // PUT creates too (201).
    let (h, _) = expect(
        cp.put(
            "/api/v1/named-values/extra",
            json!({"value": "x", "secret": false}),
        ),
        StatusCode::CREATED,
    );
    assert_eq!(header_u64(&h, REVISION_HEADER), last_rev + 1);
    last_rev += 1;
    expect(cp.delete("/api/v1/named-values/extra"), StatusCode::OK);
    last_rev += 1;
    // Delete in reverse dependency order.
    for (kind, name, _) in samples().into_iter().rev() {
        let (h, body) = expect(
            cp.delete(&format!("/api/v1/{}/{name}", kind.plural())),
            StatusCode::OK,
        );
        last_rev += 1;
        assert_eq!(header_u64(&h, REVISION_HEADER), last_rev);
        assert_eq!(body["revision"], json!(last_rev));
        assert_eq!(body["deleted"], json!(format!("{}/{name}", kind.plural())));
        expect(
            cp.get(&format!("/api/v1/{}/{name}", kind.plural())),
            StatusCode::NOT_FOUND,
        );
    }
    assert_eq!(cp.revision(), last_rev);
    assert!(cp.running.store().state().resources.is_empty());
}

#[test]
fn bad_bodies_get_400_with_every_problem() {
    let cp = cp();
    for (kind, _, body) in samples().into_iter().take(2) {
        expect(
            cp.post(&format!("/api/v1/{}", kind.plural()), body),
            StatusCode::CREATED,
        );
    }
    let cases: Vec<(Kind, Value, Vec<&str>)> = vec![
        (
            Kind::NamedValue,
            json!({"name": "Bad Name", "value": "x"}),
            vec!["name: 'Bad Name' is not a valid name"],
        ),
        (
            Kind::Backend,
            json!({"name": "b", "url": "ftp://x", "connect-timeout-ms": 0, "request-timeout-ms": 0}),
            vec!["url", "connect-timeout-ms", "request-timeout-ms"],
        ),
        (
            Kind::Backend,
            json!({"name": "b", "url": "http://x", "protocol": "http3"}),
            vec!["protocol: unknown variant `http3`, expected one of `auto`, `http1`, `h2`"],
        ),
        (
            Kind::Api,
            json!({"name": "a", "path": "/a/", "backend": "orders", "operations": [
                {"name": "x", "method": "FETCH", "url-template": "nope"},
                {"name": "x", "method": "GET", "url-template": "/{a}{b}"}]}),
            vec![
                "path",
                "operations[0].method",
                "operations[0].url-template",
                "operations[1].name",
                "operations[1].url-template",
            ],
        ),
        (
            Kind::Api,
            json!({"name": "a", "backend": "orders", "policies": {"inbound": [
                {"no-such-policy": {}}, {"rate-limit": {"calls": "many"}}], "sideways": []}}),
            vec![
                "policies.inbound[0]",
                "policies.inbound[1]",
                "policies.sideways",
            ],
        ),
        (
            Kind::Product,
            // Names no API can have (a valid name of a missing API is a 409, see
            // the_server_answers_as_the_openapi_document_says).
            json!({"name": "p", "apis": ["Missing 1", "missing/2"]}),
            vec!["apis[0]", "apis[1]"],
        ),
        (
            Kind::Subscription,
            json!({"name": "s", "scope": {"api": "missing"}, "primary-key": "short", "secondary-key": "short"}),
            vec!["primary-key", "secondary-key"],
        ),
        (
            Kind::Gateway,
            json!({"name": "g", "apis": ["orders", "orders"], "hostnames": [{"hostname": "Not Valid"}]}),
            vec!["apis[1]", "hostnames[0].hostname"],
        ),
    ];
    let rev = cp.revision();
    for (kind, body, wanted) in cases {
        let (_, err) = expect(
            cp.post(&format!("/api/v1/{}", kind.plural()), body.clone()),
            StatusCode::BAD_REQUEST,
        );
        assert_eq!(err["error"], json!("bad-request"));
        let got = problems(&err);
        assert!(got.len() >= wanted.len(), "{kind}: {got:?}");
        for w in wanted {
            assert!(
                got.iter().any(|p| p.contains(w)),
                "{kind}: '{w}' not in {got:?}"
            );
        }
    }
    // The global policy.
    let (_, err) = expect(
        cp.put(
            "/api/v1/policies/global",
            json!({"policies": {"inbound": [{"rate-limit": {"calls": 0, "renewal-period": 60}}, {"bogus": 1}]}}),
        ),
        StatusCode::BAD_REQUEST,
    );
    assert!(!problems(&err).is_empty(), "{err}");
    // Unknown fields are refused, and the name must match the path.
    let (_, err) = expect(
        cp.post(
            "/api/v1/named-values",
            json!({"name": "n", "value": "v", "colour": "red"}),
        ),
        StatusCode::BAD_REQUEST,
    );
    assert!(problems(&err)[0].contains("colour"), "{err}");
    let (_, err) = expect(
        cp.put(
            "/api/v1/named-values/one",
            json!({"name": "two", "value": "v"}),
        ),
        StatusCode::BAD_REQUEST,
    );
    assert!(problems(&err)[0].contains("does not match"), "{err}");
    let (_, err) = expect(
        cp.post("/api/v1/named-values", json!({"value": "v"})),
        StatusCode::BAD_REQUEST,
    );
    assert!(problems(&err)[0].starts_with("name"), "{err}");
    assert_eq!(cp.revision(), rev, "nothing was written");
}

#[test]
fn authentication() {
    let cp = cp();
    for path in [
        "/api/v1/apis",
        "/api/v1/revision",
        "/api/v1/export",
        "/api/v1/bogus",
    ] {
        let res = cp.anon(reqwest::Method::GET, path).send().unwrap();
        assert_eq!(
            res.headers()
                .get("www-authenticate")
                .unwrap()
                .to_str()
                .unwrap(),
            "Bearer"
        );
        let (_, body) = expect(res, StatusCode::UNAUTHORIZED);
        assert_eq!(body["error"], json!("unauthorized"));
        assert!(
            body["message"].as_str().unwrap().contains("Authorization"),
            "{body}"
        );
    }
    let (_, body) = expect(
        cp.anon(reqwest::Method::GET, "/api/v1/apis")
            .bearer_auth("wrong-token")
            .send()
            .unwrap(),
        StatusCode::UNAUTHORIZED,
    );
    assert_eq!(body["message"], json!("invalid admin token"));
    expect(
        cp.anon(reqwest::Method::GET, "/api/v1/apis")
            .basic_auth("admin", Some(TOKEN))
            .send()
            .unwrap(),
        StatusCode::UNAUTHORIZED,
    );
    // The gateway admin routes sit behind the same check.
    expect(
        cp.anon(reqwest::Method::GET, "/api/v1/gateways/site-a/keys")
            .send()
            .unwrap(),
        StatusCode::UNAUTHORIZED,
    );
    // Unauthenticated: the OpenAPI document and the dashboard.
    expect(
        cp.anon(reqwest::Method::GET, "/api/v1/openapi.json")
            .send()
            .unwrap(),
        StatusCode::OK,
    );
    let res = cp.anon(reqwest::Method::GET, "/").send().unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(
        res.headers()
            .get("content-type")
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = res.text().unwrap();
    assert!(html.contains("sessionStorage") && html.contains("/api/v1"));
    // The token works.
    expect(cp.get("/api/v1/apis"), StatusCode::OK);
}

#[test]
fn not_found_conflict_and_preconditions() {
    let cp = cp();
    for (kind, _, body) in samples() {
        expect(
            cp.post(&format!("/api/v1/{}", kind.plural()), body),
            StatusCode::CREATED,
        );
    }
    expect(cp.get("/api/v1/apis/nope"), StatusCode::NOT_FOUND);
    expect(cp.delete("/api/v1/apis/nope"), StatusCode::NOT_FOUND);
    let (_, body) = expect(cp.get("/api/v1/no-such-kind"), StatusCode::NOT_FOUND);
    assert!(
        body["message"].as_str().unwrap().starts_with("no route"),
        "{body}"
    );
    // Create only.
    let (_, body) = expect(
        cp.post("/api/v1/backends", samples()[1].2.clone()),
        StatusCode::CONFLICT,
    );
    assert_eq!(body["error"], json!("conflict"));
    let res = cp
        .req(reqwest::Method::PUT, "/api/v1/backends/orders")
        .header("If-None-Match", "*")
        .json(&samples()[1].2)
        .send()
        .unwrap();
    expect(res, StatusCode::CONFLICT);
    let res = cp
        .req(reqwest::Method::PUT, "/api/v1/backends/new-one")
        .header("If-None-Match", "*")
        .json(&json!({"url": "http://x"}))
        .send()
        .unwrap();
    expect(res, StatusCode::CREATED);
    // Referenced resources cannot be deleted; the answer says by whom.
    let (_, body) = expect(cp.delete("/api/v1/backends/orders"), StatusCode::CONFLICT);
    assert!(
        body["message"].as_str().unwrap().contains("apis/orders"),
        "{body}"
    );
    expect(cp.delete("/api/v1/apis/orders"), StatusCode::CONFLICT);
    // Stale ETags.
    let (h, api) = expect(cp.get("/api/v1/apis/orders"), StatusCode::OK);
    let etag = h.get("etag").unwrap().to_str().unwrap().to_owned();
    let res = cp
        .req(reqwest::Method::GET, "/api/v1/apis/orders")
        .header("If-None-Match", &etag)
        .send()
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_MODIFIED);
    let res = cp
        .req(reqwest::Method::PUT, "/api/v1/apis/orders")
        .header("If-Match", &etag)
        .json(&modified(Kind::Api, api.clone()))
        .send()
        .unwrap();
    expect(res, StatusCode::OK);
    for method in [reqwest::Method::PUT, reqwest::Method::DELETE] {
        let res = cp
            .req(method.clone(), "/api/v1/apis/orders")
            .header("If-Match", &etag)
            .json(&api)
            .send()
            .unwrap();
        let (_, body) = expect(res, StatusCode::PRECONDITION_FAILED);
        assert_eq!(body["error"], json!("precondition-failed"), "{method}");
    }
    // If-Match on a missing resource is 404; a malformed If-Match is 400.
    let res = cp
        .req(reqwest::Method::PUT, "/api/v1/apis/missing")
        .header("If-Match", "\"3\"")
        .json(&api)
        .send()
        .unwrap();
    expect(res, StatusCode::BAD_REQUEST); // name in body differs from the path
    let mut other = api.clone();
    other["name"] = json!("missing");
    other["path"] = json!("other");
    let res = cp
        .req(reqwest::Method::PUT, "/api/v1/apis/missing")
        .header("If-Match", "\"3\"")
        .json(&other)
        .send()
        .unwrap();
    expect(res, StatusCode::NOT_FOUND);
    let res = cp
        .req(reqwest::Method::DELETE, "/api/v1/apis/orders")
        .header("If-Match", "yesterday")
        .send()
        .unwrap();
    expect(res, StatusCode::BAD_REQUEST);
}

#[test]
fn concurrent_updates_with_the_same_etag_one_wins() {
    let cp = Arc::new(cp());
    expect(
        cp.post(
            "/api/v1/named-values",
            json!({"name": "counter", "value": "0"}),
        ),
        StatusCode::CREATED,
    );
    for round in 0..5 {
        let (h, _) = expect(cp.get("/api/v1/named-values/counter"), StatusCode::OK);
        let etag = h.get("etag").unwrap().to_str().unwrap().to_owned();
        let barrier = Arc::new(Barrier::new(4));
        let threads: Vec<_> = (0..4)
            .map(|i| {
                let cp = cp.clone();
                let etag = etag.clone();
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    cp.req(reqwest::Method::PUT, "/api/v1/named-values/counter")
                        .header("If-Match", etag)
                        .json(&json!({"value": format!("{round}-{i}")}))
                        .send()
                        .unwrap()
                        .status()
                })
            })
            .collect();
        let statuses: Vec<StatusCode> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let ok = statuses.iter().filter(|s| **s == StatusCode::OK).count();
        let stale = statuses
            .iter()
            .filter(|s| **s == StatusCode::PRECONDITION_FAILED)
            .count();
        assert_eq!((ok, stale), (1, 3), "round {round}: {statuses:?}");
    }
    assert_eq!(cp.revision(), 6);
}

#[test]
fn pagination() {
    let cp = cp();
    for i in 0..25 {
        expect(
            cp.put(
                &format!("/api/v1/named-values/nv-{i:02}"),
                json!({"value": i.to_string()}),
            ),
            StatusCode::CREATED,
        );
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/v1/named-values?limit=10&cursor={c}"),
            None => "/api/v1/named-values?limit=10".into(),
        };
        let (_, page) = expect(cp.get(&path), StatusCode::OK);
        pages += 1;
        for item in page["items"].as_array().unwrap() {
            seen.push(item["name"].as_str().unwrap().to_owned());
        }
        match page["next"].as_str() {
            Some(n) => {
                assert_eq!(page["items"].as_array().unwrap().len(), 10);
                cursor = Some(n.to_owned());
            }
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let expected: Vec<String> = (0..25).map(|i| format!("nv-{i:02}")).collect();
    assert_eq!(seen, expected, "every item once, sorted by name");
    // Default page size holds them all; above the documented maximum is refused, as the
    // OpenAPI document says.
    let (_, all) = expect(cp.get("/api/v1/named-values"), StatusCode::OK);
    assert_eq!(all["items"].as_array().unwrap().len(), 25);
    let (_, all) = expect(
        cp.get(&format!("/api/v1/named-values?limit={}", routes::MAX_PAGE)),
        StatusCode::OK,
    );
    assert_eq!(all["items"].as_array().unwrap().len(), 25);
    let (_, err) = expect(
        cp.get(&format!(
            "/api/v1/named-values?limit={}",
            routes::MAX_PAGE + 1
        )),
        StatusCode::BAD_REQUEST,
    );
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("between 1 and 1000"),
        "{err}"
    );
    expect(
        cp.get("/api/v1/named-values?limit=0"),
        StatusCode::BAD_REQUEST,
    );
    expect(
        cp.get("/api/v1/named-values?limit=ten"),
        StatusCode::BAD_REQUEST,
    );
    expect(
        cp.get("/api/v1/named-values?bogus=1"),
        StatusCode::BAD_REQUEST,
    );
}

#[test]
fn revision_continues_across_a_restart_and_the_generated_token_is_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let data_dir = dir.display().to_string();
    let mut s = settings(&data_dir);
    s.admin.token = String::new();
    let first = start(s.clone()).unwrap();
    let token = first.admin_token().to_owned();
    assert_eq!(token.len(), 64);
    let token_file = dir.join("admin-token");
    assert_eq!(std::fs::read_to_string(&token_file).unwrap().trim(), token);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&token_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let http = Client::new();
    for i in 0..3 {
        let res = http
            .put(format!("{}/api/v1/named-values/v{i}", first.admin_url()))
            .bearer_auth(&token)
            .json(&json!({"value": "x"}))
            .send()
            .unwrap();
        assert_eq!(res.status(), StatusCode::CREATED);
    }
    assert_eq!(first.store().revision(), 3);
    first.stop();

    let second = start(s).unwrap();
    assert_eq!(second.admin_token(), token, "the generated token is reused");
    let get = |path: &str| -> Value {
        http.get(format!("{}{path}", second.admin_url()))
            .bearer_auth(&token)
            .send()
            .unwrap()
            .json()
            .unwrap()
    };
    assert_eq!(get("/api/v1/revision")["revision"], json!(3));
    assert_eq!(
        get("/api/v1/named-values")["items"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    let res = http
        .delete(format!("{}/api/v1/named-values/v0", second.admin_url()))
        .bearer_auth(&token)
        .send()
        .unwrap();
    assert_eq!(header_u64(res.headers(), REVISION_HEADER), 4);
    second.stop();
}

#[test]
fn body_limits_content_types_and_malformed_json() {
    let cp = cp();
    let big = format!("{{\"value\": \"{}\"}}", "x".repeat(2 << 20));
    let res = cp
        .req(reqwest::Method::PUT, "/api/v1/named-values/big")
        .header("content-type", "application/json")
        .body(big)
        .send()
        .unwrap();
    let (_, body) = expect(res, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(body["error"], json!("payload-too-large"));
    let res = cp
        .req(reqwest::Method::PUT, "/api/v1/named-values/n")
        .header("content-type", "text/plain")
        .body("{\"value\": \"x\"}")
        .send()
        .unwrap();
    let (_, body) = expect(res, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(body["error"], json!("unsupported-media-type"));
    let res = cp
        .req(reqwest::Method::PUT, "/api/v1/named-values/n")
        .body("{\"value\": \"x\"}")
        .send()
        .unwrap();
    expect(res, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let res = cp
        .req(reqwest::Method::PUT, "/api/v1/named-values/n")
        .header("content-type", "application/json; charset=utf-8")
        .body("{\"value\": \"x\",}")
        .send()
        .unwrap();
    let (_, body) = expect(res, StatusCode::BAD_REQUEST);
    let msg = body["message"].as_str().unwrap();
    assert!(
        msg.starts_with("malformed JSON") && msg.contains("line 1"),
        "{msg}"
    );
    let res = cp
        .req(reqwest::Method::POST, "/api/v1/apply")
        .header("content-type", "application/octet-stream")
        .body("apiVersion: outpost/v1")
        .send()
        .unwrap();
    expect(res, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(cp.revision(), 0);
}

#[test]
fn secrets_are_never_returned() {
    let cp = cp();
    let secret = "s3cr3t-value-do-not-show";
    let (_, created) = expect(
        cp.post(
            "/api/v1/named-values",
            json!({"name": "api-key", "value": secret, "secret": true}),
        ),
        StatusCode::CREATED,
    );
    assert_eq!(created["resource"]["value"], json!(SECRET_MASK));
    let (_, got) = expect(cp.get("/api/v1/named-values/api-key"), StatusCode::OK);
    assert_eq!(got["value"], json!(SECRET_MASK));
    let list = cp.get("/api/v1/named-values").text().unwrap();
    assert!(
        !list.contains(secret) && list.contains(SECRET_MASK),
        "{list}"
    );
    let export = cp.get("/api/v1/export").text().unwrap();
    assert!(!export.contains(secret), "{export}");
    assert!(export.contains(SECRET_MASK), "{export}");
    let export_json = cp.get("/api/v1/export?format=json").text().unwrap();
    assert!(!export_json.contains(secret), "{export_json}");
    // Sending the mask back keeps the stored value.
    let (_, updated) = expect(cp.put("/api/v1/named-values/api-key", got), StatusCode::OK);
    assert_eq!(updated["changed"], json!(false));
    let stored = cp
        .running
        .store()
        .state()
        .get(&ResourceKey::new(Kind::NamedValue, "api-key"))
        .map(|s| s.resource.clone());
    match stored {
        Some(Resource::NamedValue(nv)) => assert_eq!(nv.value, secret),
        other => panic!("{other:?}"),
    }
    // A mask with nothing stored behind it is refused, not stored literally (409: the body is
    // valid, what is stored is not what it needs).
    let (_, err) = expect(
        cp.put(
            "/api/v1/named-values/fresh",
            json!({"value": SECRET_MASK, "secret": true}),
        ),
        StatusCode::CONFLICT,
    );
    assert!(problems(&err)[0].contains("mask"), "{err}");
    // Problems that quote a value after substitution do not show the secret.
    expect(
        cp.post(
            "/api/v1/named-values",
            json!({"name": "host", "value": "bad host with spaces", "secret": true}),
        ),
        StatusCode::CREATED,
    );
    let res = cp.post(
        "/api/v1/backends",
        json!({"name": "b", "url": "http://{{host}}/x"}),
    );
    let text = res.text().unwrap();
    assert!(text.contains("problems"), "{text}");
    assert!(!text.contains("bad host with spaces"), "{text}");
}

#[test]
fn subscription_keys_can_be_regenerated() {
    let cp = cp();
    for (kind, _, body) in samples().into_iter().take(5) {
        expect(
            cp.post(&format!("/api/v1/{}", kind.plural()), body),
            StatusCode::CREATED,
        );
    }
    let (_, before) = expect(cp.get("/api/v1/subscriptions/alice"), StatusCode::OK);
    let rev = cp.revision();
    let (h, after) = expect(
        cp.post(
            "/api/v1/subscriptions/alice/regenerate-key?key=primary",
            Value::Null,
        ),
        StatusCode::OK,
    );
    assert_eq!(header_u64(&h, REVISION_HEADER), rev + 1);
    assert_eq!(after["revision"], json!(rev + 1));
    let after = &after["resource"];
    assert_ne!(after["primary-key"], before["primary-key"]);
    assert_eq!(after["secondary-key"], before["secondary-key"]);
    assert_eq!(after["primary-key"].as_str().unwrap().len(), 64);
    let (_, again) = expect(
        cp.post(
            "/api/v1/subscriptions/alice/regenerate-key?key=secondary",
            Value::Null,
        ),
        StatusCode::OK,
    );
    assert_ne!(again["resource"]["secondary-key"], before["secondary-key"]);
    expect(
        cp.post(
            "/api/v1/subscriptions/alice/regenerate-key?key=tertiary",
            Value::Null,
        ),
        StatusCode::BAD_REQUEST,
    );
    expect(
        cp.post(
            "/api/v1/subscriptions/nobody/regenerate-key?key=primary",
            Value::Null,
        ),
        StatusCode::NOT_FOUND,
    );
    let res = cp
        .req(
            reqwest::Method::POST,
            "/api/v1/subscriptions/alice/regenerate-key?key=primary",
        )
        .header("If-Match", format!("\"{rev}\""))
        .send()
        .unwrap();
    expect(res, StatusCode::PRECONDITION_FAILED);
}

#[test]
fn global_policy() {
    let cp = cp();
    let (h, body) = expect(cp.get("/api/v1/policies/global"), StatusCode::OK);
    assert_eq!(h.get("etag").unwrap(), "\"0\"");
    assert_eq!(body, json!({"name": "global"}));
    let doc =
        json!({"policies": {"inbound": [{"set-header": {"name": "X-Global", "value": "1"}}]}});
    let res = cp
        .req(reqwest::Method::PUT, "/api/v1/policies/global")
        .header("If-Match", "\"0\"")
        .json(&doc)
        .send()
        .unwrap();
    let (h, written) = expect(res, StatusCode::CREATED);
    assert_eq!(header_u64(&h, "etag"), 1);
    assert_eq!(
        written["resource"]["policies"]["inbound"][0]["set-header"]["name"],
        json!("X-Global")
    );
    let res = cp
        .req(reqwest::Method::PUT, "/api/v1/policies/global")
        .header("If-Match", "\"0\"")
        .json(&doc)
        .send()
        .unwrap();
    expect(res, StatusCode::PRECONDITION_FAILED);
    let (_, body) = expect(cp.get("/api/v1/policies/global"), StatusCode::OK);
    assert_eq!(body["name"], json!("global"));
    expect(
        cp.put(
            "/api/v1/policies/global",
            json!({"name": "other", "policies": {}}),
        ),
        StatusCode::BAD_REQUEST,
    );
}

#[test]
fn openapi_document_lists_every_route_and_only_those() {
    let cp = cp();
    let res = cp
        .anon(reqwest::Method::GET, "/api/v1/openapi.json")
        .send()
        .unwrap();
    let (_, doc) = expect(res, StatusCode::OK);
    assert_eq!(doc["openapi"], json!("3.1.0"));
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .map(move |m| (m.to_ascii_uppercase(), path.clone()))
        })
        .collect();
    // The router is built from `routes::routes()`; the gateway admin routes are listed in
    // `routes::gateway_admin_routes()`.
    let served: BTreeSet<(String, String)> = routes::routes()
        .into_iter()
        .map(|r| (r.method.to_string(), r.path))
        .chain(
            routes::gateway_admin_routes()
                .into_iter()
                .map(|r| (r.method.to_string(), r.path)),
        )
        .collect();
    assert_eq!(documented, served);
    // Every documented route is really served: the router's fallback answers
    // "no route for ..."; any other answer (even an error) comes from a handler.
    for (method, path) in &documented {
        let concrete = path.replace("{name}", "zz-missing");
        let res = cp.req(method.parse().unwrap(), &concrete).send().unwrap();
        let status = res.status();
        let text = res.text().unwrap();
        assert!(
            !text.contains("no route for") && status != StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}: {status} {text}"
        );
    }
    // ...and the probe does tell a missing route apart.
    let text = cp.get("/api/v1/apis/x/y/z").text().unwrap();
    assert!(text.contains("no route for"), "{text}");
    // Every operation documents the error body.
    assert!(doc["components"]["schemas"]["Error"]["properties"]["problems"].is_object());
}

#[test]
fn gateway_listener_is_separate() {
    let cp = cp();
    let gw = cp.running.gateway_url();
    let http = Client::new();
    // Gateway routes need a gateway token, not the admin token.
    let res = http
        .get(format!("{gw}/gateway/v1/config"))
        .bearer_auth(TOKEN)
        .send()
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    // The management API is not on the gateway listener.
    let res = http
        .get(format!("{gw}/api/v1/apis"))
        .bearer_auth(TOKEN)
        .send()
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    // A token minted through the admin API is accepted there.
    for (kind, _, body) in samples() {
        expect(
            cp.post(&format!("/api/v1/{}", kind.plural()), body),
            StatusCode::CREATED,
        );
    }
    let (_, token) = expect(
        cp.post(
            "/api/v1/gateways/site-a/token",
            json!({"key": "primary", "lifetime-secs": 3600}),
        ),
        StatusCode::OK,
    );
    let value = token["value"].as_str().unwrap();
    assert!(value.starts_with("GatewayKey site-a&"), "{value}");
    let res = http
        .get(format!("{gw}/gateway/v1/config?after=0&wait=1"))
        .header("Authorization", value)
        .header("Accept", "application/json")
        .send()
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

#[test]
fn the_gateway_compiler_checks_every_change_before_commit() {
    let cp = cp();
    // The model accepts anything that looks like PEM; the gateway's compiler parses it. It
    // compiles the configuration as a whole, so its problems are answered like the other
    // problems of the whole configuration: 409.
    let (_, err) = expect(
        cp.post(
            "/api/v1/backends",
            json!({"name": "b", "url": "https://x", "tls": {
                "ca-pem": "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n"}}),
        ),
        StatusCode::CONFLICT,
    );
    let got = problems(&err);
    assert!(got.iter().any(|p| p.contains("ca-pem")), "{got:?}");
    assert_eq!(cp.revision(), 0);
}

#[test]
fn liveness_answers_without_a_token_on_both_listeners() {
    let cp = cp();
    let res = cp.anon(reqwest::Method::GET, "/healthz").send().unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let gw = format!("{}/healthz", cp.running.gateway_url());
    assert_eq!(
        Client::new().get(gw).send().unwrap().status(),
        StatusCode::OK
    );
}

// === the data directory ===

#[cfg(unix)]
fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// A real `outpost control-plane` process, started under `umask 022` (the usual default, which
/// leaves new files readable by everyone), killed when dropped.
#[cfg(unix)]
struct CpProcess {
    child: std::process::Child,
    admin_url: String,
    log: std::path::PathBuf,
}

#[cfg(unix)]
impl CpProcess {
    fn spawn(data_dir: &std::path::Path, log: std::path::PathBuf) -> CpProcess {
        use outpost_integration::free_port;
        let admin = format!("127.0.0.1:{}", free_port());
        let child = std::process::Command::new("sh")
            .arg("-c")
            .arg("umask 022 && exec \"$0\" control-plane")
            .arg(env!("CARGO_BIN_EXE_outpost"))
            .env("OUTPOST_ADMIN_LISTEN", &admin)
            .env(
                "OUTPOST_GATEWAY_API_LISTEN",
                format!("127.0.0.1:{}", free_port()),
            )
            .env("OUTPOST_STORE_DATA_DIR", data_dir)
            .env_remove("OUTPOST_ADMIN_TOKEN")
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(log.with_extension("err")).unwrap())
            .spawn()
            .unwrap();
        CpProcess {
            child,
            admin_url: format!("http://{admin}"),
            log,
        }
    }

    fn output(&self) -> String {
        let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default();
        format!(
            "{}{}",
            read(&self.log),
            read(&self.log.with_extension("err"))
        )
    }

    /// Waits until the admin listener answers, or fails with the process's output.
    fn wait_ready(&mut self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("control plane exited ({status}):\n{}", self.output());
            }
            if Client::new()
                .get(format!("{}/healthz", self.admin_url))
                .send()
                .is_ok_and(|r| r.status().is_success())
            {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "control plane did not start:\n{}",
                self.output()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Waits for the process to exit by itself and returns its status and output.
    fn wait_exit(&mut self) -> (std::process::ExitStatus, String) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, self.output());
            }
            assert!(
                std::time::Instant::now() < deadline,
                "still running:\n{}",
                self.output()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

#[cfg(unix)]
impl Drop for CpProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The data directory holds gateway keys, secrets and the admin token: whatever the umask, the
/// directory is 0700 and the database (with SQLite's WAL and SHM), the generated admin token
/// and the lock are 0600; a second control plane on the same directory is refused while the
/// first runs.
#[cfg(unix)]
#[test]
fn data_files_are_private_under_umask_022_and_the_directory_has_one_user() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mut first = CpProcess::spawn(&dir, tmp.path().join("first.log"));
    first.wait_ready();
    let token = std::fs::read_to_string(dir.join("admin-token")).unwrap();
    for i in 0..3 {
        let res = Client::new()
            .put(format!("{}/api/v1/named-values/v{i}", first.admin_url))
            .bearer_auth(token.trim())
            .json(&json!({"value": "s3cret", "secret": true}))
            .send()
            .unwrap();
        assert_eq!(res.status(), StatusCode::CREATED);
    }
    assert!(
        std::fs::metadata(dir.join("outpost.db-wal")).unwrap().len() > 0,
        "the writes went to the WAL"
    );
    assert_eq!(mode(&dir), 0o700, "{}", dir.display());
    for file in [
        "outpost.db",
        "outpost.db-wal",
        "outpost.db-shm",
        "admin-token",
        "lock",
    ] {
        assert_eq!(mode(&dir.join(file)), 0o600, "{file}");
    }

    let mut second = CpProcess::spawn(&dir, tmp.path().join("second.log"));
    let (status, output) = second.wait_exit();
    assert!(!status.success(), "{output}");
    let expected = format!(
        "data directory {} is in use by another control plane (pid {})",
        dir.display(),
        first.child.id()
    );
    assert!(output.contains(&expected), "{output}");
    // The refused start touched nothing: the first still serves.
    first.wait_ready();
}

#[cfg(unix)]
#[test]
fn a_data_directory_open_to_others_is_refused_with_the_fix() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let err = start(settings(&dir.display().to_string()))
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains(&dir.display().to_string()) && err.contains("chmod 700"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        0,
        "nothing is written"
    );
    assert_eq!(
        mode(&dir),
        0o755,
        "the operator decides, not the control plane"
    );

    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    start(settings(&dir.display().to_string()))
        .expect("starts once private")
        .stop();
}

#[test]
fn a_second_control_plane_in_one_process_is_refused_until_the_first_stops() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data").display().to_string();
    let first = start(settings(&dir)).unwrap();
    let err = start(settings(&dir)).err().expect("refused").to_string();
    assert!(
        err.contains(&format!(
            "{dir} is in use by another control plane (pid {})",
            std::process::id()
        )),
        "{err}"
    );
    first.stop();
    start(settings(&dir))
        .expect("starts once the first stopped")
        .stop();
}

/// What schemathesis (.ci/schemathesis.sh) found the OpenAPI document and the server disagreeing
/// on, each answered as the document now says.
#[test]
fn the_server_answers_as_the_openapi_document_says() {
    let cp = cp();
    // A method the path is not served with: 405 with the methods it is served with.
    for (path, allow) in [
        ("/api/v1/revision", "GET"),
        ("/api/v1/backends", "GET, POST"),
        ("/api/v1/backends/b", "DELETE, GET, PUT"),
        ("/api/v1/gateways/g/token", "POST"),
    ] {
        let res = cp.req(reqwest::Method::TRACE, path).send().unwrap();
        let (headers, body) = expect(res, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(headers["allow"], allow, "{path}");
        // The gateway admin routes are actix resources, whose own 405 has no body.
        if !path.contains("/token") {
            assert_eq!(body["error"], "method-not-allowed", "{path}: {body}");
        }
    }
    // An unknown path is still 404.
    expect(
        cp.req(reqwest::Method::TRACE, "/api/v1/nothing")
            .send()
            .unwrap(),
        StatusCode::NOT_FOUND,
    );

    // If-Match: empty or not an ETag is 400 (the document's pattern); with If-None-Match: *
    // the two can never both hold: 412.
    let nv = json!({"value": "v"});
    for bad in ["", "\"\"", "\"x\"", "+1", "\"12"] {
        let res = cp
            .req(reqwest::Method::PUT, "/api/v1/named-values/nv")
            .header("If-Match", bad)
            .json(&nv)
            .send()
            .unwrap();
        expect(res, StatusCode::BAD_REQUEST);
    }
    let res = cp
        .req(reqwest::Method::PUT, "/api/v1/named-values/nv")
        .header("If-Match", "*")
        .header("If-None-Match", "*")
        .json(&nv)
        .send()
        .unwrap();
    expect(res, StatusCode::PRECONDITION_FAILED);
    // ...but a body with problems of its own is 400 first.
    let res = cp
        .req(reqwest::Method::PUT, "/api/v1/gateways/g")
        .header("If-Match", "*")
        .header("If-None-Match", "*")
        .json(&json!({"apis": [""]}))
        .send()
        .unwrap();
    let (_, body) = expect(res, StatusCode::BAD_REQUEST);
    assert!(problems(&body)[0].contains("apis[0]"), "{body}");

    // The body's name must be the path's; unknown fields are refused.
    let (_, body) = expect(
        cp.put(
            "/api/v1/named-values/nv",
            json!({"name": "other", "value": "v"}),
        ),
        StatusCode::BAD_REQUEST,
    );
    assert!(problems(&body)[0].starts_with("name:"), "{body}");
    let (_, body) = expect(
        cp.post(
            "/api/v1/gateways/g/keys/regenerate",
            json!({"key": "primary", "bogus": 1}),
        ),
        StatusCode::BAD_REQUEST,
    );
    assert!(
        body["message"].as_str().unwrap().contains("bogus"),
        "{body}"
    );
    expect(
        cp.post(
            "/api/v1/backends",
            json!({"name": "b", "url": "http://b", "bogus": 1}),
        ),
        StatusCode::BAD_REQUEST,
    );
    // Whole numbers written as floats are integers.
    expect(
        cp.post(
            "/api/v1/backends",
            json!({"name": "b", "url": "http://[::1]:8080", "request-timeout-ms": 2000.0}),
        ),
        StatusCode::CREATED,
    );
    expect(
        cp.post(
            "/api/v1/backends",
            json!({"name": "b6", "url": "http://[0]"}),
        ),
        StatusCode::BAD_REQUEST,
    );

    // A valid reference to nothing stored is a conflict with the stored configuration (409,
    // every problem listed); an invalid name is the request's own problem (400).
    let (_, body) = expect(
        cp.post("/api/v1/apis", json!({"name": "a", "backend": "missing"})),
        StatusCode::CONFLICT,
    );
    assert!(problems(&body)[0].contains("missing"), "{body}");
    let (_, body) = expect(
        cp.post(
            "/api/v1/apis",
            json!({"name": "a", "backend": "Not A Name"}),
        ),
        StatusCode::BAD_REQUEST,
    );
    assert!(problems(&body)[0].contains("backend"), "{body}");
    // The mask with no secret stored behind it: 409 too (valid, but nothing to keep).
    expect(
        cp.put(
            "/api/v1/named-values/s",
            json!({"value": SECRET_MASK, "secret": true}),
        ),
        StatusCode::CONFLICT,
    );

    // /apply: a YAML document that is not a map is refused with the problem listed.
    for text in ["- a\n- b\n", "just text\n", "42\n"] {
        let res = cp
            .req(reqwest::Method::POST, "/api/v1/apply")
            .header("Content-Type", "application/yaml")
            .body(text)
            .send()
            .unwrap();
        let (_, body) = expect(res, StatusCode::BAD_REQUEST);
        assert!(!problems(&body).is_empty(), "{text:?}: {body}");
    }
}
