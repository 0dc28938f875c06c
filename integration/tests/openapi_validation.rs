//! `outpost import-openapi --validate` end to end, with real processes: an OpenAPI 3.0 document
//! with components and `$ref`s (parameters, schemas, a recursive schema, `readOnly` and
//! `nullable` properties) is imported by the binary, applied to a control plane, and served by
//! a gateway in front of a backend. Requests the document allows reach the backend; the others
//! are answered 400 with every problem listed, and do not.

use outpost_integration::*;
use serde_json::{Value, json};

const KEY: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

const SPEC: &str = r##"
openapi: 3.0.3
info: {title: Pet store, version: "1"}
servers: [{url: "https://pets.example.com/v1"}]
paths:
  /pets:
    get:
      operationId: listPets
      parameters:
        - $ref: "#/components/parameters/Limit"
        - {name: status, in: query, schema: {type: string, enum: [available, sold]}}
        - name: X-Tenant
          in: header
          required: true
          schema: {type: string, pattern: "^[a-z]{3,8}$"}
    post:
      operationId: createPet
      requestBody:
        required: true
        content:
          application/json:
            schema: {$ref: "#/components/schemas/NewPet"}
          application/xml:
            schema: {$ref: "#/components/schemas/NewPet"}
  /pets/{petId}:
    parameters:
      - {name: petId, in: path, required: true, schema: {type: integer, minimum: 1}}
    get:
      operationId: showPet
components:
  parameters:
    Limit:
      name: limit
      in: query
      schema: {type: integer, minimum: 1, maximum: 100}
  schemas:
    NewPet:
      type: object
      required: [id, name, category]
      properties:
        id: {type: integer, readOnly: true}
        name: {type: string, minLength: 1}
        tag: {type: string, nullable: true}
        category: {$ref: "#/components/schemas/Category"}
        children: {type: array, items: {$ref: "#/components/schemas/NewPet"}}
    Category:
      type: object
      required: [name]
      properties:
        name: {type: string, enum: [dog, cat]}
"##;

async fn call(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = client()
        .request(method.parse().unwrap(), url)
        .header("Ocp-Apim-Subscription-Key", KEY);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {}", http::describe_error(&e)));
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// The names of the problems a 400 lists.
fn problems(body: &Value) -> Vec<String> {
    body["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("no errors in {body:#}"))
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_imported_document_validates_parameters_headers_and_bodies() {
    let backend = TestBackend::start();
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("pets.yaml");
    std::fs::write(&spec, SPEC).unwrap();
    let out_file = dir.path().join("imported.yaml");
    let out = outpost_command()
        .arg("import-openapi")
        .arg(&spec)
        .args([
            "--name",
            "pets",
            "--backend-url",
            &backend.url(),
            "--validate",
            "-o",
        ])
        .arg(&out_file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // What is not checked is said (the XML body), nothing else.
    assert_eq!(stderr.matches("warning:").count(), 1, "{stderr}");
    assert!(
        stderr.contains("'application/xml' are not checked"),
        "{stderr}"
    );
    let imported = std::fs::read_to_string(&out_file).unwrap();
    for want in [
        "validate-parameters",
        "validate-headers",
        "validate-content",
        "$defs",
    ] {
        assert!(imported.contains(want), "{want} in\n{imported}");
    }

    // The imported file, with a gateway serving it and a subscription to call it with.
    let cp = ControlPlane::start().await;
    cp.apply(&format!(
        "{imported}\nsubscriptions:\n  - {{name: alice, scope: all-apis, primary-key: \"{KEY}\"}}\n\
         gateways:\n  - {{name: site-a, apis: [pets]}}\n"
    ))
    .await;
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
    let tenant = [("X-Tenant", "acme")];
    let list = gw.url("/pets/pets?limit=10&status=sold");
    eventually(secs(20), ms(100), async || {
        match call("GET", &list, &tenant, None).await {
            (200, _) => Ok(()),
            (s, b) => Err(format!("{s}: {b}")),
        }
    })
    .await
    .unwrap();

    // Query parameters (one from components/parameters) and the header parameter.
    let (status, body) = call(
        "GET",
        &gw.url("/pets/pets?limit=500&status=lost"),
        &tenant,
        None,
    )
    .await;
    assert_eq!(status, 400, "{body:#}");
    assert_eq!(problems(&body), ["query.limit", "query.status"], "{body:#}");
    let (status, body) = call("GET", &list, &[], None).await;
    assert_eq!(status, 400, "{body:#}");
    assert_eq!(problems(&body), ["x-tenant"], "{body:#}");
    let (status, _) = call("GET", &list, &[("X-Tenant", "ACME!")], None).await;
    assert_eq!(status, 400);

    // The path parameter, declared on the path item.
    assert_eq!(call("GET", &gw.url("/pets/pets/7"), &[], None).await.0, 200);
    for bad in ["0", "seven"] {
        let (status, body) = call("GET", &gw.url(&format!("/pets/pets/{bad}")), &[], None).await;
        assert_eq!(status, 400, "{bad}: {body:#}");
        assert_eq!(problems(&body), ["path.petId"], "{body:#}");
    }

    // The body: the component schema with its references; `id` is read-only, so not required
    // of a client; `tag` is nullable.
    let pets = gw.url("/pets/pets");
    let good = json!({"name": "rex", "tag": null, "category": {"name": "dog"},
                      "children": [{"name": "pup", "category": {"name": "dog"}}]});
    let (status, body) = call("POST", &pets, &[], Some(good)).await;
    assert_eq!(status, 200, "{body:#}");
    assert_eq!(body["method"], "POST", "{body:#}");
    let before = backend.total_hits();
    let bad = json!({"name": "", "category": {"name": "bird"}, "children": [{"name": "pup"}]});
    let (status, body) = call("POST", &pets, &[], Some(bad)).await;
    assert_eq!(status, 400, "{body:#}");
    let mut listed = problems(&body);
    listed.sort();
    assert_eq!(
        listed,
        ["/category/name", "/children/0", "/name"],
        "{body:#}"
    );
    assert_eq!(
        backend.total_hits(),
        before,
        "refused requests do not reach the backend"
    );
}
