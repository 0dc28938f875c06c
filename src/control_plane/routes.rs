//! The table of every admin route: what the router registers ([`routes`]), what the gateway
//! side serves on the admin listener ([`gateway_admin_routes`]), and the constants their answers
//! share. A leaf on purpose: the router (`admin_api`), the OpenAPI document (`openapi`) and the
//! tests read the same table, so a route cannot be served undocumented or documented unserved.

use actix_web::http::Method;
use outpost_model::Kind;
use outpost_model::resources::GLOBAL_POLICY_NAME;

/// Prefix of every management route.
pub const PREFIX: &str = "/api/v1";
/// Header carrying the global revision on every answer.
pub const REVISION_HEADER: &str = "X-Outpost-Revision";
pub const DEFAULT_PAGE: usize = 100;
pub const MAX_PAGE: usize = 1000;

/// What a route does; each variant is served by exactly one handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    OpenApi,
    Revision,
    Export,
    Apply,
    List(Kind),
    Create(Kind),
    Get(Kind),
    Put(Kind),
    Delete(Kind),
    RegenerateKey,
    GetGlobalPolicy,
    PutGlobalPolicy,
}

impl Op {
    /// Served without the admin token.
    pub fn is_public(self) -> bool {
        matches!(self, Op::OpenApi)
    }
}

/// One route: method, full path (OpenAPI and actix share the `{name}` syntax) and operation.
#[derive(Debug, Clone)]
pub struct Route {
    pub method: Method,
    pub path: String,
    pub op: Op,
}

/// The kinds with per-name CRUD routes (the global policy has its own two routes).
pub fn crud_kinds() -> impl Iterator<Item = Kind> {
    Kind::ALL.into_iter().filter(|k| *k != Kind::GlobalPolicy)
}

/// Every route `admin_api` serves.
pub fn routes() -> Vec<Route> {
    let r = |method: Method, path: String, op: Op| Route { method, path, op };
    let mut out = vec![
        r(Method::GET, format!("{PREFIX}/openapi.json"), Op::OpenApi),
        r(Method::GET, format!("{PREFIX}/revision"), Op::Revision),
        r(Method::GET, format!("{PREFIX}/export"), Op::Export),
        r(Method::POST, format!("{PREFIX}/apply"), Op::Apply),
    ];
    for kind in crud_kinds() {
        let list = format!("{PREFIX}/{}", kind.plural());
        let one = format!("{list}/{{name}}");
        out.push(r(Method::GET, list.clone(), Op::List(kind)));
        out.push(r(Method::POST, list, Op::Create(kind)));
        out.push(r(Method::GET, one.clone(), Op::Get(kind)));
        out.push(r(Method::PUT, one.clone(), Op::Put(kind)));
        out.push(r(Method::DELETE, one, Op::Delete(kind)));
    }
    out.push(r(
        Method::POST,
        format!("{PREFIX}/subscriptions/{{name}}/regenerate-key"),
        Op::RegenerateKey,
    ));
    let global = format!("{PREFIX}/policies/{GLOBAL_POLICY_NAME}");
    out.push(r(Method::GET, global.clone(), Op::GetGlobalPolicy));
    out.push(r(Method::PUT, global, Op::PutGlobalPolicy));
    out
}

/// What a gateway admin route does (served by `gateway_api::configure_admin`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatewayAdminOp {
    MintGatewayToken,
    GetGatewayKeys,
    RegenerateGatewayKey,
    GetSigningKeys,
    RotateSigningKey,
    ListGatewayInstances,
    ListInstances,
    GetTelemetrySummary,
    GetAnalytics,
}

/// One gateway admin route: method, full path and operation.
#[derive(Debug, Clone)]
pub struct GatewayAdminRoute {
    pub method: Method,
    pub path: String,
    pub op: GatewayAdminOp,
}

/// The admin routes of `gateway_api::configure_admin` (tokens, keys, instances, telemetry).
pub fn gateway_admin_routes() -> Vec<GatewayAdminRoute> {
    let route = |method: Method, path: &str, op: GatewayAdminOp| GatewayAdminRoute {
        method,
        path: format!("{PREFIX}{path}"),
        op,
    };
    vec![
        route(
            Method::POST,
            "/gateways/{name}/token",
            GatewayAdminOp::MintGatewayToken,
        ),
        route(
            Method::GET,
            "/gateways/{name}/keys",
            GatewayAdminOp::GetGatewayKeys,
        ),
        route(
            Method::POST,
            "/gateways/{name}/keys/regenerate",
            GatewayAdminOp::RegenerateGatewayKey,
        ),
        route(Method::GET, "/signing-keys", GatewayAdminOp::GetSigningKeys),
        route(
            Method::POST,
            "/signing-keys/rotate",
            GatewayAdminOp::RotateSigningKey,
        ),
        route(
            Method::GET,
            "/gateways/{name}/instances",
            GatewayAdminOp::ListGatewayInstances,
        ),
        route(Method::GET, "/instances", GatewayAdminOp::ListInstances),
        route(
            Method::GET,
            "/telemetry",
            GatewayAdminOp::GetTelemetrySummary,
        ),
        route(Method::GET, "/analytics", GatewayAdminOp::GetAnalytics),
    ]
}
