//! The gateway's actors (actix 0.13). Each owns one piece of state with a lifecycle; request
//! handlers never wait on their mailboxes, they read what the actors publish (`ArcSwap`
//! snapshots, sharded counters).
//!
//! # Layout
//! Every actor is a folder of the same shape: `messages.rs` (one struct per message),
//! `state.rs` (the logic, pure, tested without a `System`), `mod.rs` (the thin actor shell) and
//! `tests.rs`.
//!
//! - [`config_sync`]: long-polls the control plane by revision, verifies each update against its
//!   content hash, hands the snapshot to the route table, writes the backup, sends heartbeats.
//! - [`connectivity`]: the gateway's status board: control-plane and Redis reachability, the
//!   applied config, refusals; published for `/readyz`, `/metrics` and heartbeats.
//! - [`telemetry`]: aggregates request metrics off the hot path and uploads them in batches
//!   that survive outages (bounded memory, optional spool directory).
//! - [`link`]: the outbound HTTP link to the control plane shared by the actors above, and
//!   [`token`]: what the gateway can read from its own token (its expiry).
//! - [`expr`]: policy expressions (CEL), compiled with the route table, evaluated by the
//!   gateway's pipeline. Not an actor: a leaf the route table and the pipeline share.
//! - [`jwks`]: `validate-jwt` key sources (JWKS, OpenID discovery): one background task per
//!   source fetches and refreshes keys; requests read the last key set lock-free.
//! - [`es512`]: ES512 tokens for `validate-jwt` (P-521), which `jsonwebtoken` cannot verify.
//! - [`xml_json`]: the body conversions of `json-to-xml` and `xml-to-json`. Not an actor either.

pub mod cache;
pub mod config_sync;
pub mod connectivity;
pub mod es512;
pub mod expr;
pub mod jwks;
pub mod link;
pub mod route_table;
pub mod shared_state;
pub mod telemetry;
pub mod token;
pub mod word_hash;
pub mod xml_json;
