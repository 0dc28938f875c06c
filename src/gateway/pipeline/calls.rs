//! `send-request`: calls another service with the gateway's own pooled HTTP/1.1 client
//! ([`crate::gateway::upstream_h1`], the one requests are forwarded with: same per-worker
//! connection pool, no client built per call) and keeps its answer in the exchange
//! (`context.responses[NAME]`, `{variable.NAME}`).
//!
//! The call is awaited like a backend call: the worker serves other requests meanwhile. The
//! step's `timeout` covers everything (connecting, sending, the answer's head and its body),
//! and the answer's body is read whole up to `[limits] max_body_bytes`.

use actix_web::http::Method;
use actix_web::http::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, HeaderValue};
use bytes::Bytes;
use outpost_actors::route_table::steps::{CallTarget, CallUrl, SendRequestStep};
use outpost_model::policy::SendRequestMode;
use tokio::time::Instant;

use crate::gateway::error::{CallError, GatewayError};
use crate::gateway::exchange::{CallAnswer, Exchange, Flow, Phase, RequestBody, Runtime};
use crate::gateway::hop_by_hop::strip_hop_by_hop;
use crate::gateway::upstream_h1::{self, Outgoing, SendError};

pub(super) async fn send_request(
    s: &SendRequestStep,
    phase: Phase,
    ex: &mut Exchange,
    rt: &Runtime,
) -> Result<Flow, GatewayError> {
    let answer = match call(s, phase, ex, rt).await? {
        Ok(answer) => answer,
        Err(e) if s.ignore_error => {
            tracing::debug!(api = %ex.api.name, error = %e, "send-request failed (ignored)");
            CallAnswer {
                error: e.to_string(),
                ..CallAnswer::default()
            }
        }
        Err(e) => return Err(GatewayError::call_failed(&e)),
    };
    ex.variables.insert(
        s.variable.clone(),
        String::from_utf8_lossy(&answer.body).into_owned(),
    );
    ex.calls.insert(s.variable.clone(), answer);
    Ok(Flow::Continue)
}

/// Builds and sends the call. The outer error is the policy's own (a failed expression, a
/// client body over the limit in `copy` mode); the inner one is the call's, which
/// `ignore-error` keeps.
async fn call(
    s: &SendRequestStep,
    phase: Phase,
    ex: &mut Exchange,
    rt: &Runtime,
) -> Result<Result<CallAnswer, CallError>, GatewayError> {
    let rendered;
    let target = match &s.url {
        CallUrl::Fixed(t) => t,
        CallUrl::Template(t) => {
            rendered = CallTarget::parse(&ex.render(t));
            match &rendered {
                Ok(t) => t,
                Err(e) => return Ok(Err(CallError::InvalidUrl(e.clone()))),
            }
        }
        CallUrl::Expression(e) => {
            let url = e
                .eval_text(super::expr::vars(e, ex))
                .map_err(|err| GatewayError::expression("send-request", &err))?;
            rendered = CallTarget::parse(&url);
            match &rendered {
                Ok(t) => t,
                Err(e) => return Ok(Err(CallError::InvalidUrl(e.clone()))),
            }
        }
    };
    let (mut method, mut headers, mut body) = match s.mode {
        SendRequestMode::New => (Method::GET, HeaderMap::new(), None),
        SendRequestMode::Copy => {
            let mut headers = ex.request_headers.clone();
            strip_hop_by_hop(&mut headers);
            // The body goes with its own length.
            headers.remove(CONTENT_LENGTH);
            let body = match phase {
                // Read whole so that the backend still gets it after the call.
                Phase::Inbound | Phase::Backend => {
                    let taken = std::mem::replace(&mut ex.body, RequestBody::Taken);
                    let read = taken.read_whole(rt.max_body_bytes).await?;
                    ex.body = match &read {
                        Some(b) => RequestBody::Buffered(b.clone()),
                        None => RequestBody::None,
                    };
                    read
                }
                // Sent to the backend already.
                Phase::Outbound | Phase::OnError => None,
            };
            (ex.method.clone(), headers, body)
        }
    };
    if let Some(m) = &s.method {
        method = m.clone();
    }
    for h in &s.headers {
        let value = match &h.value {
            Some(t) => match HeaderValue::from_str(&super::expr::render(t, ex, "send-request")?) {
                Ok(v) => Some(v),
                Err(_) => return Ok(Err(CallError::InvalidHeader(h.name.to_string()))),
            },
            None => None,
        };
        super::headers::apply(h, value, &mut headers);
    }
    if let Some(t) = &s.body {
        body = Some(Bytes::from(super::expr::render(t, ex, "send-request")?));
    }
    Ok(send(s, target, &method, &headers, body, rt.max_body_bytes).await)
}

async fn send(
    s: &SendRequestStep,
    target: &CallTarget,
    method: &Method,
    headers: &HeaderMap,
    body: Option<Bytes>,
    max: usize,
) -> Result<CallAnswer, CallError> {
    let deadline = Instant::now() + s.timeout;
    let timeout = CallError::Timeout(s.timeout.as_secs());
    let req = upstream_h1::Request {
        method,
        url: &target.base,
        path: &target.path,
        query: &target.query,
        headers,
        tls: &s.tls,
        timeout: s.timeout,
        // One label for every call: URLs may be computed per request, labels must stay few.
        backend: "send-request",
    };
    let mut outgoing = match body {
        Some(b) => Outgoing::Bytes(b),
        None => Outgoing::None,
    };
    let mut counted = 0;
    let res = match upstream_h1::send(&req, &mut outgoing, &mut counted).await {
        Ok(res) => res,
        Err(SendError::Upstream(crate::gateway::error::UpstreamError::Timeout)) => {
            return Err(timeout);
        }
        Err(SendError::Upstream(error)) => {
            return Err(CallError::Upstream {
                authority: target.base.authority.clone(),
                error,
            });
        }
        Err(SendError::InvalidTarget) => {
            return Err(CallError::InvalidUrl(
                "is not a valid request target".into(),
            ));
        }
        // The body is held whole: neither can happen; said rather than assumed.
        Err(e @ (SendError::BodyTooLarge | SendError::BodyUnreadable(_))) => {
            return Err(CallError::Broken(e.to_string()));
        }
    };
    let read =
        tokio::time::timeout_at(deadline, actix_web::body::to_bytes_limited(res.body, max)).await;
    let body = match read {
        Err(_) => return Err(timeout),
        Ok(Err(_)) => return Err(CallError::TooLarge(max)),
        Ok(Ok(Err(e))) => return Err(CallError::Broken(e.to_string())),
        Ok(Ok(Ok(b))) => b,
    };
    let json = res
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.to_ascii_lowercase().contains("json"))
        .then(|| serde_json::from_slice(&body).ok())
        .flatten();
    Ok(CallAnswer {
        status: res.status.as_u16(),
        headers: res.headers,
        body,
        json,
        error: String::new(),
    })
}
