//! edge-auth: an Envoy HTTP filter that authenticates API traffic.
//!
//! Everything but the host glue (`wasm` for proxy-wasm, `dynamic` for
//! Envoy's native dynamic modules) is pure Rust and
//! testable on the host. A host builds a [`worker::Worker`] from the
//! [`policy::Policy`] and hands it each request; the worker runs the decision
//! table ([`decision::decide`]) and says what to do ([`effects::Effects`]).
//!
//! Module layers, each importing only from those above it: `config` (the
//! document), `store`, `text`, `path`, `account`, `denial`, `credential`, `headers`;
//! then `rate_limit`, `remote`, `route`, `api_key`, `jwt`, `session`,
//! `webhook`; `policy`;
//! `fetched`; `decision`; `effects`; `worker`; the host glue.

pub mod account;
pub mod api_key;
pub mod config;
pub mod credential;
pub mod decision;
pub mod denial;
pub mod effects;
pub mod fetched;
#[cfg(not(target_arch = "wasm32"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod headers;
pub mod jwt;
pub mod metrics;
pub mod path;
pub mod policy;
pub mod rate_limit;
pub mod remote;
pub mod route;
pub mod session;
pub mod store;
#[cfg(not(target_arch = "wasm32"))]
#[doc(hidden)]
pub mod testing;
pub mod text;
pub mod webhook;
pub mod worker;

#[cfg(target_arch = "wasm32")]
mod wasm;

#[cfg(not(target_arch = "wasm32"))]
mod dynamic;

/// The crate version, logged when the VM starts.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
