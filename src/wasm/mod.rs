//! The proxy-wasm glue: a thin adapter between Envoy's proxy-wasm ABI and the
//! host-neutral [`crate::worker::Worker`]. No decision logic here.

#[cfg(feature = "count-allocs")]
mod alloc_count;
mod http;
mod metrics;
mod root;
mod shared;
mod signatures;

use proxy_wasm::types::LogLevel;
use std::time::UNIX_EPOCH;

proxy_wasm::main! {{
    // Also installs the SDK's panic hook, which logs at critical level.
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| Box::new(root::Root::default()));
}}

/// The host's clock in Unix nanoseconds (0 if it cannot say).
fn now_ns() -> u64 {
    proxy_wasm::hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}
