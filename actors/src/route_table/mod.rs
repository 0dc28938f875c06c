//! `RouteTable`: compiles the gateway's configuration into an immutable routing snapshot and
//! publishes it lock-free.
//!
//! Who talks to it: `ConfigSync` sends [`ApplySnapshot`] for every verified configuration; the
//! proxy never does. Request handlers read the published [`CompiledTable`] through a
//! [`TableHandle`] with one atomic load, so a reload never blocks or slows a request, and every
//! request sees one consistent configuration from start to end.
//!
//! A snapshot with any problem is refused whole (every problem listed) and the table being
//! served stays: there is no half-applied configuration.
//!
//! # Layout
//! - [`messages`]: what the actor accepts.
//! - [`state`]: the compiler, pure ([`compile`], [`validate_config`] for the control plane).
//! - [`table`]: the compiled table and its lookups (host → path → version → method).
//! - [`backend`]: a compiled backend resource, shared by the table and the steps.
//! - [`backend_url`]: a backend's parsed base URL (a pool member's too).
//! - [`pool`]: a backend's pool of members: balancing, passive health, breakers, and the member
//!   state kept across configurations.
//! - [`steps`]: compiled policy steps, one file per family; how to add a step kind.
//! - [`tls`]: backend TLS client configurations.
//! - [`server_tls`]: the HTTPS listener's certificates and client certificate rules, by hostname.
//! - [`client_certificate`]: a TLS client's certificate, parsed for requests and policies.
//! - [`observe`]: the per-request record for telemetry ([`RequestObserver`]).

pub mod backend;
pub mod backend_url;
pub mod client_certificate;
pub mod messages;
pub mod observe;
pub mod pool;
pub mod server_tls;
pub mod state;
pub mod steps;
pub mod table;
pub mod tls;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{Actor, AsyncContext, Context, Handler};
use arc_swap::ArcSwapOption;
use outpost_model::Problems;

pub use messages::{AppliedInfo, ApplySnapshot, GetApplied};
pub use observe::{CacheStatus, RequestObserver, RequestRecord};
pub use state::{CompileContext, compile, validate_config};
pub use table::{CompiledTable, Pipeline, RouteMatch, RouteOutcome, RouteRequest};

/// The published table: `None` until the first configuration is applied.
pub type TableHandle = Arc<ArcSwapOption<CompiledTable>>;

/// An empty handle, to share between the actor and the proxy.
pub fn new_table_handle() -> TableHandle {
    Arc::new(ArcSwapOption::empty())
}

/// The actor. Compiles on its own thread (the arbiter it is started in); start it in a
/// dedicated `Arbiter` if large configurations should not delay other actors.
pub struct RouteTable {
    handle: TableHandle,
    ctx: CompileContext,
    applied: Option<AppliedInfo>,
}

impl RouteTable {
    pub fn new(handle: TableHandle, ctx: CompileContext) -> Self {
        Self {
            handle,
            ctx,
            applied: None,
        }
    }
}

/// How long before a served certificate lapses the gateway starts warning about it (the
/// control plane's instance list shows the same dates).
pub const CERTIFICATE_WARNING: chrono::TimeDelta = chrono::TimeDelta::days(14);

/// Between two reminders about the same lapsing certificates: a warning logged once at apply
/// would scroll away long before the date.
const CERTIFICATE_REMINDER: Duration = Duration::from_secs(6 * 3600);

/// Logs a warning for each served certificate within [`CERTIFICATE_WARNING`] of its expiry.
fn warn_expiring(table: &CompiledTable) {
    let now = chrono::Utc::now();
    for e in table.certificates.expiring(now, CERTIFICATE_WARNING) {
        let left = e.not_after - now;
        if left <= chrono::TimeDelta::zero() {
            tracing::warn!(hostname = %e.hostname, not_after = %e.not_after,
                "the HTTPS certificate has expired: clients refuse it; publish a new one");
        } else {
            tracing::warn!(hostname = %e.hostname, not_after = %e.not_after,
                days_left = left.num_days(),
                "the HTTPS certificate expires soon: publish a new one");
        }
    }
}

impl Actor for RouteTable {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(CERTIFICATE_REMINDER, |act, _| {
            if let Some(table) = act.handle.load_full() {
                warn_expiring(&table);
            }
        });
    }
}

impl Handler<ApplySnapshot> for RouteTable {
    type Result = Result<AppliedInfo, Problems>;

    fn handle(&mut self, msg: ApplySnapshot, _: &mut Context<Self>) -> Self::Result {
        let snapshot = msg.0;
        if let Some(applied) = &self.applied
            && applied.hash == snapshot.hash
            && !snapshot.hash.is_empty()
        {
            let mut same = applied.clone();
            same.revision = snapshot.revision;
            same.unchanged = true;
            self.applied = Some(same.clone());
            return Ok(same);
        }
        let started = Instant::now();
        let table = match compile(&snapshot, &self.ctx) {
            Ok(t) => t,
            Err(problems) => {
                metrics::counter!("outpost_route_table_refused_total").increment(1);
                tracing::warn!(
                    revision = snapshot.revision,
                    problems = problems.len(),
                    "configuration refused, keeping the table being served\n{problems}"
                );
                return Err(problems);
            }
        };
        let info = AppliedInfo {
            revision: table.revision,
            hash: table.hash.clone(),
            apis: table.apis.len(),
            operations: table.operation_count(),
            subscriptions: table.subscription_count(),
            unchanged: false,
            compile_time: started.elapsed(),
        };
        warn_expiring(&table);
        self.handle.store(Some(Arc::new(table)));
        metrics::histogram!("outpost_route_table_compile_seconds")
            .record(info.compile_time.as_secs_f64());
        metrics::gauge!("outpost_route_table_revision").set(info.revision as f64);
        tracing::info!(
            revision = info.revision,
            apis = info.apis,
            operations = info.operations,
            compile_ms = info.compile_time.as_millis() as u64,
            "route table published"
        );
        self.applied = Some(info.clone());
        Ok(info)
    }
}

impl Handler<GetApplied> for RouteTable {
    type Result = Option<AppliedInfo>;

    fn handle(&mut self, _: GetApplied, _: &mut Context<Self>) -> Self::Result {
        self.applied.clone()
    }
}
