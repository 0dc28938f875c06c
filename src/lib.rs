//! Outpost: distributed API management in one binary.
//!
//! # Layout
//! - [`cli`]: the `outpost` command line; parses arguments and hands off, nothing more.
//! - [`settings`]: TOML + `OUTPOST_*` environment loading shared by every process.
//! - [`control_plane`]: the revisioned store, the management API and dashboard, and the
//!   gateway-facing endpoint (config long-poll, heartbeats, telemetry).
//! - [`gateway`]: the self-hosted gateway's HTTP pipeline (routing, subscription keys, policies,
//!   forwarding) and its wiring of the actors from the `outpost-actors` crate.
//! - [`client`]: the operator-side commands that talk to the management API (`apply`,
//!   `export`, `gateway-token`).
//! - [`prometheus`]: the process's Prometheus recorder, which both components' `/metrics` render.
//! - [`demo`]: `outpost demo`, a whole system in one process for a first look.
//!
//! The shared model (resources, policies, validation, wire types) lives in `outpost-model`.

pub mod cli;
pub mod client;
pub mod control_plane;
pub mod demo;
pub mod gateway;
pub mod logging;
pub mod openapi_policies;
pub mod probe;
pub mod prometheus;
pub mod sample_backend;
pub mod server_thread;
pub mod settings;
pub mod signals;
