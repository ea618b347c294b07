//! The native glue: Envoy's dynamic-module ABI (Envoy 1.40, ABI `v0.2.0`)
//! around the host-neutral [`crate::worker::Worker`], built into
//! `target/release/libedge_auth.so` on the host. No decision logic here.
//!
//! One filter configuration holds the policy document and its metrics; each
//! Envoy thread compiles its own [`crate::worker::Worker`] from it (the
//! worker is single-threaded by design: its caches are `RefCell`s), and
//! every thread shares one process-wide [`store::ProcessStore`], so a bucket
//! admits exactly N across workers as proxy-wasm shared data does. Key sets
//! and JWKS are fetched once per process, on the main thread, through the
//! configuration's HTTP callouts; the fleet-wide limiter is asked through
//! the filter's HTTP callout (gRPC framed by hand).

mod config;
mod ffi;
mod filter;
mod grpc;
mod logger;
mod metrics;
mod store;
mod workers;

/// The host's clock in Unix nanoseconds (0 if it cannot say).
fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}
