//! Counters in Envoy's stats (`/stats/prometheus` shows them with the
//! `envoy_wasmcustom_` prefix). Every worker VM defines the same names, so
//! Envoy aggregates them into one counter per name.

use crate::denial::Code;
use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;

pub struct Metrics {
    allowed: u32,
    denied: [u32; Code::ALL.len()],
    shadow_denied: [u32; Code::ALL.len()],
}

impl Metrics {
    pub fn define() -> Option<Self> {
        let counter = |name: &str| hostcalls::define_metric(MetricType::Counter, name).ok();
        let per_code = |prefix: &str| -> Option<[u32; Code::ALL.len()]> {
            let mut ids = [0; Code::ALL.len()];
            for (id, code) in ids.iter_mut().zip(Code::ALL) {
                *id = counter(&format!("{prefix}.{}", code.as_str()))?;
            }
            Some(ids)
        };
        Some(Self {
            allowed: counter("edge_auth.allowed")?,
            denied: per_code("edge_auth.denied")?,
            shadow_denied: per_code("edge_auth.shadow_denied")?,
        })
    }

    pub fn allowed(&self) {
        bump(self.allowed);
    }

    pub fn denied(&self, code: Code) {
        bump_code(&self.denied, code);
    }

    pub fn shadow_denied(&self, code: Code) {
        bump_code(&self.shadow_denied, code);
    }
}

fn bump_code(ids: &[u32; Code::ALL.len()], code: Code) {
    if let Some(&id) = Code::ALL.iter().position(|&c| c == code).and_then(|i| ids.get(i)) {
        bump(id);
    }
}

fn bump(id: u32) {
    // A stat that cannot be bumped must not fail the request.
    let _ = hostcalls::increment_metric(id, 1);
}
