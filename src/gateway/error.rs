//! Every answer the gateway makes itself because something failed, and the one place backend
//! failures become HTTP statuses.
//!
//! Bodies are short JSON, like the reference product's: `{"statusCode": 401, "message": "…"}`.
//! Messages say what to fix, never just "not found" (an opaque 404 is a known complaint about the
//! reference product).

use std::borrow::Cow;

use actix_web::HttpResponse;
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderName, HeaderValue};
use outpost_actors::route_table::steps::CertificateRejection;

/// Who caused a failure: decides retries, on-error variables and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorSource {
    /// The request itself (no or bad key, unknown route, too large).
    Client,
    /// A policy refused the request (JWT, IP filter, concurrency, …).
    Policy,
    /// The backend could not be reached or did not answer in time.
    Backend,
    /// The gateway itself (no configuration yet, a policy produced something invalid).
    Gateway,
}

impl ErrorSource {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorSource::Client => "client",
            ErrorSource::Policy => "policy",
            ErrorSource::Backend => "backend",
            ErrorSource::Gateway => "gateway",
        }
    }
}

/// A failed request, as the client will see it.
#[derive(Debug, Clone)]
pub struct GatewayError {
    pub status: StatusCode,
    pub message: Cow<'static, str>,
    /// Stable machine-readable reason (`SubscriptionKeyNotFound`, `BackendTimeout`, …), exported
    /// to telemetry and to on-error policies as `{variable.error-reason}`.
    pub reason: &'static str,
    pub source: ErrorSource,
    /// `Allow` for 405.
    pub allow: Option<String>,
    /// One more header the answer carries (`Sec-WebSocket-Version` on a 426): lowercase name,
    /// value.
    pub header: Option<(&'static str, &'static str)>,
    /// A connection-level backend failure (refused, reset, timed out): what `retry` with
    /// `on-connection-error` retries.
    pub connection: bool,
    /// The backend never got the request (no connection could be made): safe to send to
    /// another pool member whatever the method.
    pub unsent: bool,
    /// Each problem found, when there can be several (`validate-headers`): the body's
    /// `errors`, as `{"name": …, "problem": …}`.
    /// Boxed: the error travels in every `Result` of the pipeline and is rarely this.
    pub errors: Option<Box<Vec<(String, String)>>>,
}

impl GatewayError {
    pub fn new(
        status: StatusCode,
        source: ErrorSource,
        reason: &'static str,
        message: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self {
            status,
            message: message.into(),
            reason,
            source,
            allow: None,
            header: None,
            connection: false,
            unsent: false,
            errors: None,
        }
    }

    pub fn missing_key(header: &str, query: &str) -> Self {
        let how = match (header.is_empty(), query.is_empty()) {
            (false, false) => format!("header '{header}' or query parameter '{query}'"),
            (false, true) => format!("header '{header}'"),
            _ => format!("query parameter '{query}'"),
        };
        Self::new(
            StatusCode::UNAUTHORIZED,
            ErrorSource::Client,
            "SubscriptionKeyNotFound",
            format!("Access denied due to missing subscription key. Send the key in the {how}."),
        )
    }

    pub fn invalid_key() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            ErrorSource::Client,
            "SubscriptionKeyInvalid",
            "Access denied due to invalid subscription key. Make sure to provide a valid key for an active subscription.",
        )
    }

    pub fn key_out_of_scope(api: &str) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            ErrorSource::Client,
            "SubscriptionKeyOutOfScope",
            format!(
                "Access denied: the subscription key is not valid for API '{api}'. Use a key of a subscription to this API or to a product that contains it."
            ),
        )
    }

    pub fn subscription_inactive(state: &str) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            ErrorSource::Client,
            "SubscriptionInactive",
            format!("Access denied: the subscription is {state}."),
        )
    }

    pub fn not_found(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            ErrorSource::Client,
            "OperationNotFound",
            message,
        )
    }

    pub fn method_not_allowed(method: &str, allow: String) -> Self {
        let mut e = Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            ErrorSource::Client,
            "MethodNotAllowed",
            format!("Method {method} is not allowed here; allowed: {allow}."),
        );
        e.allow = Some(allow);
        e
    }

    pub fn headers_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ErrorSource::Client,
            "RequestHeadersTooLarge",
            format!("Request headers are larger than the gateway's limit of {limit} bytes."),
        )
    }

    /// The HTTP/1 codec could not parse the request head (see `gateway::listener`).
    pub fn malformed_request() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            ErrorSource::Client,
            "MalformedRequest",
            "The request is not valid HTTP/1.1.",
        )
    }

    /// The HTTP/1 codec's own limits (see `gateway::listener`).
    pub fn head_too_large() -> Self {
        Self::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ErrorSource::Client,
            "RequestHeadersTooLarge",
            "Request headers are too many (the gateway reads at most 96 header fields) or too large.",
        )
    }

    pub fn uri_too_long(limit: usize) -> Self {
        Self::new(
            StatusCode::URI_TOO_LONG,
            ErrorSource::Client,
            "RequestUriTooLong",
            format!("The request target is longer than the gateway's limit of {limit} bytes."),
        )
    }

    /// A request path the gateway will not route or forward (see `gateway::path`).
    pub fn bad_path(e: super::path::PathError) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            ErrorSource::Client,
            "InvalidRequestPath",
            format!("Invalid request path: {e}."),
        )
    }

    /// The client's request body broke its framing (e.g. malformed chunked encoding).
    pub fn bad_body(e: &dyn std::fmt::Display) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            ErrorSource::Client,
            "RequestBodyUnreadable",
            format!("The request body could not be read: {e}."),
        )
    }

    pub fn body_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorSource::Client,
            "RequestBodyTooLarge",
            format!("Request body is larger than the gateway's limit of {limit} bytes."),
        )
    }

    /// An `Upgrade` the gateway does not proxy (only `websocket` is).
    /// A response body a policy had to read whole (`find-and-replace`) is larger than the
    /// body limit.
    pub fn response_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::BAD_GATEWAY,
            ErrorSource::Backend,
            "ResponseBodyTooLarge",
            format!(
                "The backend's response body is larger than the {limit} bytes a policy may read whole."
            ),
        )
    }

    /// The backend's response body broke off while a policy read it.
    pub fn response_body_broken(e: &dyn std::fmt::Display) -> Self {
        Self::new(
            StatusCode::BAD_GATEWAY,
            ErrorSource::Backend,
            "BackendResponseBroken",
            format!("The backend's response body broke off: {e}"),
        )
    }

    pub fn upgrade_not_supported(token: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            ErrorSource::Client,
            "UpgradeNotSupported",
            format!(
                "The gateway upgrades connections to WebSocket only (`Upgrade: websocket`); '{token}' is not supported."
            ),
        )
    }

    /// A WebSocket handshake that breaks RFC 6455 §4.1 (`why` says how).
    pub fn websocket_handshake_invalid(why: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            ErrorSource::Client,
            "WebSocketHandshakeInvalid",
            format!("Invalid WebSocket handshake: {why}."),
        )
    }

    /// A WebSocket version other than 13: 426 naming the one understood (RFC 6455 §4.4).
    pub fn websocket_version_unsupported() -> Self {
        let mut e = Self::new(
            StatusCode::UPGRADE_REQUIRED,
            ErrorSource::Client,
            "WebSocketVersionUnsupported",
            "The gateway speaks WebSocket version 13 only (Sec-WebSocket-Version: 13).",
        );
        e.header = Some(("sec-websocket-version", "13"));
        e
    }

    /// The backend answered a WebSocket handshake with 101 but not with a valid WebSocket
    /// handshake of its own (`what` says what is wrong).
    pub fn backend_upgrade_invalid(backend: &str, what: &str) -> Self {
        Self::new(
            StatusCode::BAD_GATEWAY,
            ErrorSource::Backend,
            "BackendInvalidResponse",
            format!(
                "The backend '{backend}' accepted the WebSocket upgrade with an invalid handshake ({what})."
            ),
        )
    }

    /// A rate limit refused the call; the caller adds `Retry-After` and the remaining count.
    pub fn rate_limited(wait_secs: u64) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorSource::Policy,
            "RateLimitExceeded",
            format!("Rate limit is exceeded. Try again in {wait_secs} seconds."),
        )
    }

    /// A quota is used up (`what`: "call volume" or "bandwidth") until it resets.
    pub fn quota_exceeded(what: &str, resets_in_secs: u64) -> Self {
        let s = resets_in_secs;
        Self::new(
            StatusCode::FORBIDDEN,
            ErrorSource::Policy,
            "QuotaExceeded",
            format!(
                "Out of {what} quota. Quota will be replenished in {:02}:{:02}:{:02}.",
                s / 3600,
                s / 60 % 60,
                s % 60
            ),
        )
    }

    /// A limit could not be checked (the shared counter store is unreachable and the policy's
    /// outage mode is `fail-closed`).
    pub fn limit_unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorSource::Policy,
            "LimitUnavailable",
            "The limit cannot be checked right now (shared counter store unreachable). Try again shortly.",
        )
    }

    /// `limit-concurrency` is at its maximum for this key.
    pub fn concurrency_exceeded() -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorSource::Policy,
            "ConcurrencyLimitExceeded",
            "Too many concurrent requests; retry later.",
        )
    }

    /// `validate-client-certificate` refused the connection's certificate: 401 when there is
    /// none (the client must authenticate), 403 when the one presented is not accepted.
    pub fn client_certificate(rejection: &CertificateRejection) -> Self {
        match rejection {
            CertificateRejection::Missing => Self::new(
                StatusCode::UNAUTHORIZED,
                ErrorSource::Policy,
                "ClientCertificateMissing",
                "Access denied: a client certificate is required. Connect over HTTPS with a \
                 certificate this API accepts.",
            ),
            other => Self::new(
                StatusCode::FORBIDDEN,
                ErrorSource::Policy,
                "ClientCertificateInvalid",
                format!("Access denied: {other}."),
            ),
        }
    }

    /// A request for a hostname that asks for client certificates, on a TLS connection made
    /// for another hostname (see `tls::check_host`).
    pub fn misdirected_request(host: &str) -> Self {
        Self::new(
            StatusCode::MISDIRECTED_REQUEST,
            ErrorSource::Client,
            "MisdirectedRequest",
            format!(
                "This connection was not made for host '{host}', which asks for client \
                 certificates: open a new connection with '{host}' as its TLS server name."
            ),
        )
    }

    /// A hostname that requires client certificates, asked over plain HTTP.
    pub fn client_certificate_needs_https(host: &str) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            ErrorSource::Client,
            "ClientCertificateRequired",
            format!("Host '{host}' requires HTTPS with a client certificate."),
        )
    }

    pub fn no_configuration() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorSource::Gateway,
            "NoConfiguration",
            "The gateway has not loaded a configuration yet.",
        )
    }

    pub fn internal(reason: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorSource::Gateway,
            reason,
            message,
        )
    }

    /// A `send-request` call that failed, without `ignore-error`: 504 when it timed out, else
    /// 502.
    pub fn call_failed(e: &CallError) -> Self {
        let (status, reason) = match e {
            CallError::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "SendRequestTimeout"),
            _ => (StatusCode::BAD_GATEWAY, "SendRequestFailed"),
        };
        Self::new(
            status,
            ErrorSource::Policy,
            reason,
            format!("A send-request policy's call failed: {e}."),
        )
    }

    /// A policy expression that failed or hit its evaluation limit (`what`: the policy).
    pub fn expression(what: &str, err: &outpost_actors::expr::EvalError) -> Self {
        let reason = match err {
            outpost_actors::expr::EvalError::Limit(_) => "PolicyExpressionLimit",
            _ => "PolicyExpressionFailed",
        };
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorSource::Policy,
            reason,
            format!("The expression of a {what} policy could not be evaluated: {err}."),
        )
    }

    /// `json-to-xml` / `xml-to-json` could not convert a body: 400 for the request's, 502 for
    /// the backend's response (`why` says what is wrong with it).
    pub fn conversion_failed(policy: &str, request: bool, why: &dyn std::fmt::Display) -> Self {
        let (status, source, reason, what) = if request {
            (
                StatusCode::BAD_REQUEST,
                ErrorSource::Client,
                "RequestBodyNotConvertible",
                "request",
            )
        } else {
            (
                StatusCode::BAD_GATEWAY,
                ErrorSource::Backend,
                "ResponseBodyNotConvertible",
                "backend's response",
            )
        };
        Self::new(
            status,
            source,
            reason,
            format!("The {what} body cannot be converted by {policy}: {why}."),
        )
    }

    /// A body larger than `json-to-xml` / `xml-to-json` converts: 413 for the request's, 502
    /// for the backend's response; refused, never buffered past `limit`.
    pub fn conversion_too_large(policy: &str, request: bool, limit: usize) -> Self {
        let (status, source, reason, what) = if request {
            (
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorSource::Client,
                "RequestBodyTooLarge",
                "request",
            )
        } else {
            (
                StatusCode::BAD_GATEWAY,
                ErrorSource::Backend,
                "ResponseBodyTooLarge",
                "backend's response",
            )
        };
        Self::new(
            status,
            source,
            reason,
            format!("The {what} body is larger than the {limit} bytes {policy} converts."),
        )
    }

    /// `validate-headers` refused the request: every failing header, by name, with why.
    pub fn headers_invalid(errors: Vec<(String, String)>) -> Self {
        let names: Vec<&str> = errors.iter().map(|(n, _)| n.as_str()).collect();
        let mut err = Self::new(
            StatusCode::BAD_REQUEST,
            ErrorSource::Policy,
            "HeadersInvalid",
            format!("The request's headers are not valid: {}.", names.join(", ")),
        );
        err.errors = Some(Box::new(errors));
        err
    }

    /// `validate-content` refused a body: 400 for the request's, 502 for the response's (the
    /// client cannot fix the backend), every problem listed (`name`: the JSON pointer of the
    /// place in the body, `/` for the whole).
    pub fn content_invalid(request: bool, problems: Vec<(String, String)>) -> Self {
        let (status, source, reason, what) = if request {
            (
                StatusCode::BAD_REQUEST,
                ErrorSource::Policy,
                "RequestContentInvalid",
                "request",
            )
        } else {
            (
                StatusCode::BAD_GATEWAY,
                ErrorSource::Backend,
                "ResponseContentInvalid",
                "backend's response",
            )
        };
        let errors: Vec<(String, String)> = problems
            .into_iter()
            .map(|(at, p)| (if at.is_empty() { "/".to_owned() } else { at }, p))
            .collect();
        let mut err = Self::new(
            status,
            source,
            reason,
            format!(
                "The {what} body does not match its schema: {} problem(s), listed in errors.",
                errors.len()
            ),
        );
        err.errors = Some(Box::new(errors));
        err
    }

    /// `validate-parameters` refused the request: every failing parameter, by `query.NAME` or
    /// `path.NAME`, with why.
    pub fn parameters_invalid(errors: Vec<(String, String)>) -> Self {
        let names: Vec<&str> = errors.iter().map(|(n, _)| n.as_str()).collect();
        let mut err = Self::new(
            StatusCode::BAD_REQUEST,
            ErrorSource::Policy,
            "ParametersInvalid",
            format!(
                "The request's parameters are not valid: {}.",
                names.join(", ")
            ),
        );
        err.errors = Some(Box::new(errors));
        err
    }

    /// A policy refused the request with the status and message it is configured with.
    pub fn policy(
        status: u16,
        reason: &'static str,
        message: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self::new(
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            ErrorSource::Policy,
            reason,
            message,
        )
    }

    /// The rescue: a failed backend call (either HTTP version, or a WebSocket handshake)
    /// becomes 504 when it ran out of time and 502 when the connection failed (refused, reset,
    /// unresolvable, closed) or the answer was garbled.
    pub fn from_upstream(e: &UpstreamError, backend: &str) -> Self {
        let (status, reason) = match e {
            UpstreamError::Timeout => (StatusCode::GATEWAY_TIMEOUT, "BackendTimeout"),
            UpstreamError::ConnectTimeout => (StatusCode::GATEWAY_TIMEOUT, "BackendConnectTimeout"),
            UpstreamError::Connect(_)
            | UpstreamError::Closed(_)
            | UpstreamError::Disconnected
            | UpstreamError::Reset(_) => (StatusCode::BAD_GATEWAY, "BackendConnectionFailure"),
            UpstreamError::Protocol(_) | UpstreamError::Invalid(_) => {
                (StatusCode::BAD_GATEWAY, "BackendInvalidResponse")
            }
        };
        let mut err = Self::new(
            status,
            ErrorSource::Backend,
            reason,
            format!("The backend '{backend}' {e}."),
        );
        err.connection = true;
        err.unsent = matches!(e, UpstreamError::ConnectTimeout | UpstreamError::Connect(_));
        err
    }

    /// `{"statusCode": …, "message": …}`, and `errors` when there are several.
    pub fn json_body(&self) -> String {
        let mut body = serde_json::json!({
            "statusCode": self.status.as_u16(),
            "message": self.message,
        });
        if let Some(errors) = &self.errors {
            body["errors"] = errors
                .iter()
                .map(|(name, problem)| serde_json::json!({"name": name, "problem": problem}))
                .collect();
        }
        body.to_string()
    }

    /// The client-facing answer.
    pub fn response(&self) -> HttpResponse {
        let body = self.json_body();
        let mut res = HttpResponse::build(self.status);
        res.insert_header((
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        ));
        if let Some(allow) = &self.allow
            && let Ok(v) = HeaderValue::from_str(allow)
        {
            res.insert_header((header::ALLOW, v));
        }
        if let Some((name, value)) = self.header {
            res.insert_header((
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            ));
        }
        res.body(body)
    }
}

/// The gRPC status a gRPC client gets for an HTTP status the gateway answered with: the
/// refusals keep their meaning (`UNAUTHENTICATED` for a missing key, `DEADLINE_EXCEEDED` for a
/// backend timeout, …); the rest follow gRPC's own HTTP mapping.
pub fn grpc_code(status: StatusCode) -> u16 {
    match status.as_u16() {
        400 => 13,            // INTERNAL
        401 => 16,            // UNAUTHENTICATED
        403 => 7,             // PERMISSION_DENIED
        404 | 405 => 12,      // UNIMPLEMENTED
        413 | 429 | 431 => 8, // RESOURCE_EXHAUSTED
        414 => 3,             // INVALID_ARGUMENT
        502 | 503 => 14,      // UNAVAILABLE
        504 => 4,             // DEADLINE_EXCEEDED
        500 => 13,            // INTERNAL
        _ => 2,               // UNKNOWN
    }
}

/// A refusal as a gRPC client reads it: HTTP 200 with `grpc-status` and `grpc-message` in the
/// headers and no body (gRPC's "Trailers-Only" answer), whatever HTTP the client speaks.
/// `message` is percent-encoded as gRPC requires.
pub fn grpc_refusal(status: StatusCode, message: &str) -> HttpResponse {
    let mut res = HttpResponse::build(StatusCode::OK);
    res.insert_header((
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    ));
    res.insert_header((
        header::HeaderName::from_static("grpc-status"),
        HeaderValue::from(grpc_code(status)),
    ));
    if let Ok(v) = HeaderValue::from_str(&grpc_percent_encode(message)) {
        res.insert_header((header::HeaderName::from_static("grpc-message"), v));
    }
    res.finish()
}

/// gRPC's encoding of `grpc-message`: printable ASCII other than `%` as is, the rest as `%XX`.
fn grpc_percent_encode(message: &str) -> Cow<'_, str> {
    let plain = |b: u8| (0x20..=0x7e).contains(&b) && b != b'%';
    if message.bytes().all(plain) {
        return Cow::Borrowed(message);
    }
    let mut out = String::with_capacity(message.len() + 8);
    for b in message.bytes() {
        if plain(b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    Cow::Owned(out)
}

impl std::fmt::Display for GatewayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.reason,
            self.message
        )
    }
}

impl std::error::Error for GatewayError {}

/// Why an exchange with a backend failed, over HTTP/1.1 (`super::upstream_h1`) or HTTP/2
/// (`super::upstream_h2`). The texts end the sentence "The backend 'NAME' …".
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    #[error("could not be connected to in time")]
    ConnectTimeout,
    #[error("could not be connected to ({0})")]
    Connect(String),
    #[error("did not answer in time")]
    Timeout,
    #[error("closed the connection ({0})")]
    Closed(String),
    /// The connection ended cleanly where a response head should have started (often an idle
    /// keep-alive connection the backend had just closed).
    #[error("closed the connection before sending a response")]
    Disconnected,
    /// An HTTP/1.1 answer that is not one.
    #[error("sent an invalid response ({0})")]
    Invalid(String),
    #[error("refused the request stream ({0})")]
    Reset(h2::Reason),
    #[error("sent an invalid HTTP/2 response ({0})")]
    Protocol(String),
}

/// Why a `send-request` call got no answer. The texts end the sentence "A send-request
/// policy's call failed: …".
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    #[error("the URL {0}")]
    InvalidUrl(String),
    #[error("header '{0}' got a value that is not a valid header value")]
    InvalidHeader(String),
    #[error("no answer within {0} s")]
    Timeout(u64),
    #[error("the service at {authority} {error}")]
    Upstream {
        authority: String,
        error: UpstreamError,
    },
    #[error("the answer's body is larger than the {0} bytes a call may read")]
    TooLarge(usize),
    #[error("the answer's body broke off ({0})")]
    Broken(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_clients_get_their_status_codes_and_an_encoded_message() {
        for (http, grpc) in [
            (401, 16),
            (403, 7),
            (429, 8),
            (502, 14),
            (503, 14),
            (504, 4),
        ] {
            assert_eq!(
                grpc_code(StatusCode::from_u16(http).unwrap()),
                grpc,
                "{http}"
            );
        }
        let res = grpc_refusal(StatusCode::UNAUTHORIZED, "No key: 100% wrong, café");
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers().get("grpc-status").unwrap(), "16");
        assert_eq!(
            res.headers().get("grpc-message").unwrap(),
            "No key: 100%25 wrong, caf%C3%A9"
        );
        assert_eq!(
            res.headers().get("content-type").unwrap(),
            "application/grpc"
        );
    }

    #[test]
    fn http2_backend_failures_get_the_statuses_of_http1_ones() {
        let cases = [
            (UpstreamError::Timeout, 504, "BackendTimeout"),
            (UpstreamError::ConnectTimeout, 504, "BackendConnectTimeout"),
            (
                UpstreamError::Connect("TLS: invalid peer certificate".into()),
                502,
                "BackendConnectionFailure",
            ),
            (
                UpstreamError::Closed("GOAWAY".into()),
                502,
                "BackendConnectionFailure",
            ),
            (
                UpstreamError::Reset(h2::Reason::INTERNAL_ERROR),
                502,
                "BackendConnectionFailure",
            ),
            (
                UpstreamError::Protocol("bad frame".into()),
                502,
                "BackendInvalidResponse",
            ),
        ];
        for (failure, status, reason) in cases {
            let e = GatewayError::from_upstream(&failure, "orders");
            assert_eq!((e.status.as_u16(), e.reason), (status, reason), "{failure}");
            assert_eq!(e.source, ErrorSource::Backend);
            assert!(e.connection, "retry on-connection-error must see {failure}");
            assert!(
                e.message.starts_with("The backend 'orders' "),
                "{}",
                e.message
            );
        }
    }

    #[test]
    fn a_closed_backend_connection_is_said_plainly() {
        let e = GatewayError::from_upstream(&UpstreamError::Disconnected, "orders");
        assert_eq!(e.status, StatusCode::BAD_GATEWAY);
        assert_eq!(e.reason, "BackendConnectionFailure");
        assert!(e.connection);
        assert_eq!(
            e.message,
            "The backend 'orders' closed the connection before sending a response."
        );

        let refused = GatewayError::from_upstream(
            &UpstreamError::Connect(
                std::io::Error::from(std::io::ErrorKind::ConnectionRefused).to_string(),
            ),
            "orders",
        );
        assert!(
            refused
                .message
                .starts_with("The backend 'orders' could not be connected to ("),
            "{}",
            refused.message
        );

        let garbled = GatewayError::from_upstream(
            &UpstreamError::Invalid("invalid status code".into()),
            "orders",
        );
        assert_eq!(
            (garbled.status.as_u16(), garbled.reason),
            (502, "BackendInvalidResponse")
        );
    }
}
