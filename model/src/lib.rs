//! Outpost's shared model: the resources operators define, the policy documents attached to
//! them, their validation, and the gateway-facing wire types (snapshots, deltas, heartbeats).
//!
//! # Layout
//! - [`resources`]: APIs, products, subscriptions, backends, named values, gateways, the global
//!   policy; one [`Resource`] enum so the store, the change log and the sync protocol handle every
//!   kind the same way.
//! - [`policy`]: the policy document (`inbound` / `backend` / `outbound` / `on-error`) and every
//!   policy the gateway implements, typed.
//! - [`validate`]: checks a resource alone and a whole configuration together, collecting every
//!   problem instead of stopping at the first.
//! - [`view`]: what one gateway may see (its assigned APIs and what they need), content hashes,
//!   and deltas between two views.
//! - [`wire`]: the gateway ↔ control plane protocol types and their bincode/JSON encoding.
//! - [`signing`]: the control plane's Ed25519 signatures over each gateway's configuration.
//! - [`type_errors`]: every type error of a JSON value, where serde stops at the first.
//! - [`template`]: `{{named-value}}` references and `{request.*}` key templates.
//!
//! # Encoding rule
//! Every type that crosses the gateway link is encoded with bincode 2 through serde. bincode is
//! not self-describing, so these types must not use `skip_serializing_if`, `flatten`, `untagged`
//! or internally tagged enums, and must not hold `serde_json::Value`. Human-facing output (YAML
//! export, JSON API) prunes empty values after serialisation instead (see [`prune`]).

pub mod document;
pub mod policy;
pub mod prune;
pub mod resources;
pub mod signing;
pub mod source_map;
pub mod template;
pub mod type_errors;
pub mod validate;
pub mod view;
pub mod wire;

pub use policy::{Policy, PolicyDocument};
pub use resources::{
    Api, Backend, Gateway, GlobalPolicy, Kind, NamedValue, Operation, Product, Resource,
    ResourceKey, Scope, Subscription, SubscriptionState,
};
pub use validate::{Problem, Problems};
