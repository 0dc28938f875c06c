//! `json-to-xml` and `xml-to-json` through a real gateway in front of the sample backend: the
//! request body converted before the backend (its echo shows what arrived, with the new
//! `Content-Type` and length), the response converted after it (`/reflect` sends the body it
//! got back), `apply` and `consider-accept-header` deciding which bodies are touched, the
//! gateway's own error answers converted in `on-error`; malformed input refused with 400
//! (request) or 502 (response) saying why, bodies over `max-size` refused unread; bad settings
//! refused at publish.

mod support;
use support::*;

const CONFIG: &str = r#"
apiVersion: outpost/v1
backends:
  - {name: main, url: "BACKEND/api"}
  - {name: down, url: "CLOSED/api"}
apis:
  - name: convert
    path: convert
    backend: main
    subscription-required: false
    operations:
      - name: json-in
        method: POST
        url-template: "/json-in"
        policies:
          inbound:
            - json-to-xml: {apply: content-type-json, consider-accept-header: false, root-element: request}
      - name: xml-in
        method: POST
        url-template: "/xml-in"
        policies:
          inbound:
            - xml-to-json: {apply: always, consider-accept-header: false}
      - name: to-json
        method: POST
        url-template: "/to-json/reflect"
        policies:
          outbound:
            - xml-to-json: {apply: content-type-xml, always-array-child-elements: true}
      - name: to-xml
        method: POST
        url-template: "/to-xml/reflect"
        policies:
          outbound:
            - json-to-xml: {apply: always, consider-accept-header: false}
      - name: small
        method: POST
        url-template: "/small/reflect"
        policies:
          inbound:
            - json-to-xml: {apply: always, consider-accept-header: false, max-size: 64}
          outbound:
            - xml-to-json: {apply: always, consider-accept-header: false, max-size: 64}
  - name: failing
    path: failing
    backend: down
    subscription-required: false
    operations:
      - name: any
        method: GET
        url-template: "/x"
        policies:
          on-error:
            - json-to-xml: {apply: content-type-json, consider-accept-header: false, root-element: error}
"#;

async fn post(gw: &Gateway, path: &str, headers: &[(&str, &str)], body: &str) -> Answer {
    call(gw, "POST", path, headers, Some(body.to_owned().leak())).await
}

const JSON: (&str, &str) = ("Content-Type", "application/json");
const XML: (&str, &str) = ("Content-Type", "application/xml");

#[actix_web::test]
async fn a_json_request_reaches_the_backend_as_xml() {
    let gw = gateway(CONFIG).await;
    let body = r#"{"order": {"@id": "7", "item": ["a", "b&c"], "note": null}, "total": 12.5}"#;
    let a = post(&gw, "/convert/json-in", &[JSON], body).await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    let xml = "<request><order id=\"7\"><item>a</item><item>b&amp;c</item>\
        <note xsi:nil=\"true\" xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\"/></order>\
        <total>12.5</total></request>";
    assert_eq!(a.json()["body"], xml);
    assert_eq!(
        a.forwarded("content-type").as_deref(),
        Some("application/xml; charset=utf-8")
    );
    assert_eq!(
        a.forwarded("content-length"),
        Some(xml.len().to_string()),
        "sent with its new length"
    );
    // apply: content-type-json leaves other bodies alone.
    let a = post(
        &gw,
        "/convert/json-in",
        &[("Content-Type", "text/plain")],
        "{}",
    )
    .await;
    assert_eq!(a.json()["body"], "{}");
    assert_eq!(a.forwarded("content-type").as_deref(), Some("text/plain"));
    // So does a request without a body.
    let a = call(&gw, "POST", "/convert/json-in", &[JSON], None).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["bodyBytes"], 0);
}

#[actix_web::test]
async fn an_xml_request_reaches_the_backend_as_json() {
    let gw = gateway(CONFIG).await;
    let body = r#"<?xml version="1.0" encoding="utf-8"?>
        <order id="7" xmlns:x="urn:x"><item>a</item><x:item>b</x:item><item>c &lt; d</item><empty/></order>"#;
    // apply: always converts whatever the Content-Type says.
    let a = post(
        &gw,
        "/convert/xml-in",
        &[("Content-Type", "text/plain")],
        body,
    )
    .await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(
        a.json()["body"],
        r#"{"order":{"@id":"7","@xmlns:x":"urn:x","item":["a","c < d"],"x:item":"b","empty":null}}"#
    );
    assert_eq!(
        a.forwarded("content-type").as_deref(),
        Some("application/json")
    );
}

#[actix_web::test]
async fn malformed_requests_are_refused_with_400_saying_why() {
    let gw = gateway(CONFIG).await;
    let a = post(&gw, "/convert/json-in", &[JSON], r#"{"a": [1, 2"#).await;
    let message = a.error(400);
    assert!(
        message.contains("cannot be converted by json-to-xml: the body is not valid JSON"),
        "{message}"
    );
    let a = post(&gw, "/convert/json-in", &[JSON], r#"{"a": {"@b": {}}}"#).await;
    assert!(a.error(400).contains("attributes are scalars"));
    let cases = [
        ("<a><b></a>", "not well-formed XML"),
        ("<a>", "not well-formed XML"),
        ("<a/><b/>", "an element after the root element"),
        ("not xml", "text outside the root element"),
        (
            "<!DOCTYPE a [<!ENTITY e SYSTEM \"file:///etc/passwd\">]><a>&e;</a>",
            "DOCTYPE",
        ),
        ("<a>&e;</a>", "the entity '&e;' is not defined"),
    ];
    for (xml, why) in cases {
        let a = post(&gw, "/convert/xml-in", &[XML], xml).await;
        let message = a.error(400);
        assert!(
            message.contains("The request body cannot be converted by xml-to-json")
                && message.contains(why),
            "{xml}: {message}"
        );
    }
    // The worker is still serving.
    let a = post(&gw, "/convert/xml-in", &[XML], "<ok/>").await;
    assert_eq!(a.json()["body"], r#"{"ok":null}"#);
}

#[actix_web::test]
async fn a_response_is_converted_when_the_client_accepts_the_other_kind() {
    let gw = gateway(CONFIG).await;
    let xml = "<list><n>1</n></list>";
    // consider-accept-header (the default): converted only when JSON is asked for.
    let a = post(
        &gw,
        "/convert/to-json/reflect",
        &[XML, ("Accept", "application/json")],
        xml,
    )
    .await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.header("content-type"), Some("application/json"));
    // always-array-child-elements: a single child is an array too.
    assert_eq!(a.json(), serde_json::json!({"list": {"n": ["1"]}}));
    for accept in ["*/*", "application/xml", "application/json;q=0"] {
        let a = post(
            &gw,
            "/convert/to-json/reflect",
            &[XML, ("Accept", accept)],
            xml,
        )
        .await;
        assert_eq!(&a.body[..], xml.as_bytes(), "Accept: {accept}");
    }
    // apply: content-type-xml leaves a JSON answer alone.
    let a = post(
        &gw,
        "/convert/to-json/reflect",
        &[JSON, ("Accept", "application/json")],
        "[1]",
    )
    .await;
    assert_eq!(&a.body[..], b"[1]");

    let a = post(
        &gw,
        "/convert/to-xml/reflect",
        &[JSON],
        r#"{"a": [1, true]}"#,
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(
        a.header("content-type"),
        Some("application/xml; charset=utf-8")
    );
    assert_eq!(&a.body[..], b"<Document><a>1</a><a>true</a></Document>");
}

#[actix_web::test]
async fn a_malformed_response_is_a_502_saying_why() {
    let gw = gateway(CONFIG).await;
    let a = post(
        &gw,
        "/convert/to-json/reflect",
        &[XML, ("Accept", "application/json")],
        "<a><b></a>",
    )
    .await;
    let message = a.error(502);
    assert!(
        message.contains("The backend's response body cannot be converted by xml-to-json"),
        "{message}"
    );
    let a = post(&gw, "/convert/to-xml/reflect", &[JSON], "{").await;
    assert!(a.error(502).contains("not valid JSON"));
}

#[actix_web::test]
async fn bodies_over_max_size_are_refused() {
    let gw = gateway(CONFIG).await;
    let big = format!(r#"{{"a": "{}"}}"#, "x".repeat(100));
    let a = post(&gw, "/convert/small/reflect", &[JSON], &big).await;
    let message = a.error(413);
    assert!(
        message.contains("larger than the 64 bytes json-to-xml converts"),
        "{message}"
    );
    // Within the request's limit (34 bytes), but the answer (its XML, 73) is over the
    // response's.
    let a = post(
        &gw,
        "/convert/small/reflect",
        &[JSON],
        r#"{"abcdefghij": 1, "klmnopqrst": 2}"#,
    )
    .await;
    let message = a.error(502);
    assert!(
        message.contains("larger than the 64 bytes xml-to-json converts"),
        "{message}"
    );
    let a = post(&gw, "/convert/small/reflect", &[JSON], r#"{"a": 1}"#).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json(), serde_json::json!({"Document": {"a": "1"}}));
}

#[actix_web::test]
async fn the_gateways_own_errors_can_be_answered_in_xml() {
    let gw = gateway(CONFIG).await;
    let a = get(&gw, "/failing/x", &[]).await;
    assert_eq!(a.status, 502);
    assert_eq!(
        a.header("content-type"),
        Some("application/xml; charset=utf-8")
    );
    let text = String::from_utf8_lossy(&a.body);
    assert!(
        text.starts_with("<error>") && text.contains("<statusCode>502</statusCode>"),
        "{text}"
    );
}

fn compile_problems(policy: &str) -> String {
    let yaml = format!(
        "apiVersion: outpost/v1\nbackends:\n  - {{name: main, url: \"http://127.0.0.1:9/api\"}}\n\
         apis:\n  - name: a\n    path: a\n    backend: main\n    subscription-required: false\n    \
         operations:\n      - name: o\n        method: GET\n        url-template: /o\n        \
         policies:\n          outbound:\n            - {policy}\n"
    );
    match outpost_model::document::Document::from_yaml(&yaml) {
        Err(p) => p.to_string(),
        Ok(d) => {
            let snapshot = outpost_model::wire::GatewaySnapshot::from_view(
                1,
                outpost_model::view::gateway_view(&d.resources, None),
            );
            outpost_actors::route_table::compile(&snapshot, &Default::default())
                .err()
                .map(|p| p.to_string())
                .unwrap_or_default()
        }
    }
}

#[test]
fn bad_settings_are_refused_at_publish_with_their_location() {
    let cases = [
        (
            "json-to-xml: {apply: always, root-element: \"1st\"}",
            "json-to-xml.root-element: '1st' is not an XML element name",
        ),
        (
            "json-to-xml: {apply: always, max-size: 0}",
            "json-to-xml.max-size: 0 is out of range",
        ),
        ("json-to-xml: {apply: content-type-xml}", "content-type-xml"),
        ("xml-to-json: {consider-accept-header: false}", "apply"),
        ("xml-to-json: {apply: always, kind: direct}", "kind"),
    ];
    for (policy, want) in cases {
        let problems = compile_problems(policy);
        assert!(problems.contains(want), "{policy}: {problems}");
    }
    assert_eq!(
        compile_problems("xml-to-json: {apply: content-type-xml}"),
        ""
    );
}
