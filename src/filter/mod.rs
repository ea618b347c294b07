//! The proxy-wasm glue: read headers, decide, apply. No decision logic here.

mod http;
mod metrics;
mod root;
mod shared;
mod signatures;

use proxy_wasm::types::LogLevel;

proxy_wasm::main! {{
    // Also installs the SDK's panic hook, which logs at critical level.
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| Box::new(root::Root::default()));
}}
