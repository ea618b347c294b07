//! edge-auth: an Envoy proxy-wasm filter that authenticates API traffic.
//!
//! Everything but [`filter`] is pure Rust, testable on the host: the filter
//! reads headers, asks [`decision::decide`], and applies [`action::act`].

pub mod account;
pub mod action;
pub mod api_key;
pub mod config;
pub mod credential;
pub mod decision;
pub mod denial;
pub mod fetched;
#[cfg(not(target_arch = "wasm32"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod jwt;
pub mod path;
pub mod rate_limit;
pub mod route;
pub mod source;
pub mod store;

#[cfg(target_arch = "wasm32")]
mod filter;

/// The crate version, logged when the VM starts.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
