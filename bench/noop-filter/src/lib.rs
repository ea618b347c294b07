//! A filter that does nothing: every request continues untouched. Configured
//! with `effects`, it instead does only what edge-auth must do to every
//! admitted API-key request, and nothing of the deciding: read the request
//! header map, read and compare-and-swap one shared-data entry (the caller's
//! buckets), add six request headers (the identity) and set three response
//! headers (`x-ratelimit-*`). The cost of that over the empty filter is what
//! the proxy-wasm host charges for the contract's effects alone.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| Box::new(Root { effects: false }));
}}

struct Root {
    effects: bool,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let configuration = self.get_plugin_configuration().unwrap_or_default();
        self.effects = String::from_utf8_lossy(&configuration).contains("effects");
        true
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(if self.effects { Box::new(EffectsOnly) } else { Box::new(PassThrough) })
    }
}

struct PassThrough;

impl Context for PassThrough {}

impl HttpContext for PassThrough {}

struct EffectsOnly;

impl Context for EffectsOnly {}

const IDENTITY: [(&str, &str); 6] = [
    ("x-org-id", "org_bench"),
    ("x-account-id", "acme"),
    ("x-key-id", "key_00007"),
    ("x-auth-subject", "key_00007"),
    ("x-auth-method", "api_key"),
    ("x-auth-scopes", "agents:read"),
];

impl HttpContext for EffectsOnly {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        let headers = self.get_http_request_headers_bytes();
        let (bucket, cas) = self.get_shared_data("noop/bucket");
        let next = bucket.map_or(0u64, |b| b.len() as u64).wrapping_add(headers.len() as u64);
        let _ = self.set_shared_data("noop/bucket", Some(&next.to_le_bytes()), cas);
        for (name, value) in IDENTITY {
            self.add_http_request_header(name, value);
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        self.set_http_response_header("x-ratelimit-limit", Some("1000000000000"));
        self.set_http_response_header("x-ratelimit-remaining", Some("999999999999"));
        self.set_http_response_header("x-ratelimit-reset", Some("1"));
        Action::Continue
    }
}
