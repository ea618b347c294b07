//! Counters in Envoy's stats, named as the wasm build names them
//! (`edge_auth.*`, under the module's metrics namespace:
//! `dynamicmodulescustom.edge_auth.allowed` by default).

use super::ffi::{ConfigHandle, FilterHandle};
use crate::denial::Code;
use crate::fetched::Kind;
use crate::rate_limit::{Charge, ChargeResult};
use crate::worker::{EngineEvent, Stats};

pub struct Metrics {
    allowed: usize,
    denied: [usize; Code::ALL.len()],
    shadow_denied: [usize; Code::ALL.len()],
    cas_conflicts: usize,
    engine_calls: usize,
    engine_leased: usize,
    engine_failed: usize,
    lease_stranded: usize,
    table_full: usize,
    contended: usize,
    keyset_ok: usize,
    keyset_failed: usize,
    jwks_ok: usize,
    jwks_failed: usize,
    keyset_generation: usize,
    keyset_size: usize,
}

impl Metrics {
    pub fn define(config: &ConfigHandle) -> Option<Self> {
        let counter = |name: &str| config.define_counter(name);
        let per_code = |prefix: &str| -> Option<[usize; Code::ALL.len()]> {
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
            cas_conflicts: counter("edge_auth.rate_limit.cas_conflicts")?,
            engine_calls: counter("edge_auth.rate_limit.global.calls")?,
            engine_leased: counter("edge_auth.rate_limit.global.leased")?,
            engine_failed: counter("edge_auth.rate_limit.global.failed")?,
            lease_stranded: counter("edge_auth.rate_limit.global.stranded")?,
            table_full: counter("edge_auth.rate_limit.table_full")?,
            contended: counter("edge_auth.rate_limit.contended")?,
            keyset_ok: counter("edge_auth.keyset.refresh_ok")?,
            keyset_failed: counter("edge_auth.keyset.refresh_failed")?,
            jwks_ok: counter("edge_auth.jwks.refresh_ok")?,
            jwks_failed: counter("edge_auth.jwks.refresh_failed")?,
            keyset_generation: config.define_gauge("edge_auth.keyset.generation")?,
            keyset_size: config.define_gauge("edge_auth.keyset.size")?,
        })
    }

    /// A fetch of a key set or JWKS ended, well or not (main thread).
    pub fn refreshed(&self, config: &ConfigHandle, kind: Kind, ok: bool) {
        let id = match (kind, ok) {
            (Kind::Keys, true) => self.keyset_ok,
            (Kind::Keys, false) => self.keyset_failed,
            (Kind::Jwks(_), true) => self.jwks_ok,
            (Kind::Jwks(_), false) => self.jwks_failed,
        };
        config.increment_counter(id, 1);
    }

    pub fn key_set_size(&self, config: &ConfigHandle, keys: u64) {
        config.set_gauge(self.keyset_size, keys);
    }

    pub fn key_set_generation(&self, config: &ConfigHandle, generation: u64) {
        config.set_gauge(self.keyset_generation, generation);
    }
}

/// The metrics, bumped through one stream's filter.
pub struct FilterStats<'a> {
    pub metrics: &'a Metrics,
    pub envoy: &'a FilterHandle,
}

impl FilterStats<'_> {
    fn bump(&self, id: usize, by: u64) {
        self.envoy.increment_counter(id, by);
    }

    fn bump_code(&self, ids: &[usize; Code::ALL.len()], code: Code) {
        if let Some(&id) = Code::ALL.iter().position(|&c| c == code).and_then(|i| ids.get(i)) {
            self.bump(id, 1);
        }
    }
}

impl Stats for FilterStats<'_> {
    fn allowed(&self) {
        self.bump(self.metrics.allowed, 1);
    }

    /// Per-route counters are the wasm build's: the native ABI defines
    /// metrics at configuration only, and route names are known there, but
    /// the labels are not wired yet.
    fn denied(&self, code: Code, shadow: bool, _route: &str) {
        self.bump_code(if shadow { &self.metrics.shadow_denied } else { &self.metrics.denied }, code);
    }

    fn rate_limit(&self, result: &ChargeResult) {
        if result.conflicts > 0 {
            self.bump(self.metrics.cas_conflicts, u64::from(result.conflicts));
        }
        match result.charge {
            Charge::TableFull { .. } => self.bump(self.metrics.table_full, 1),
            Charge::Contended => self.bump(self.metrics.contended, 1),
            Charge::Admitted(_) | Charge::Limited { .. } => {}
        }
    }

    fn engine(&self, event: EngineEvent) {
        match event {
            EngineEvent::Asked => self.bump(self.metrics.engine_calls, 1),
            EngineEvent::Leased => self.bump(self.metrics.engine_leased, 1),
            EngineEvent::Failed => self.bump(self.metrics.engine_failed, 1),
            EngineEvent::Stranded(tokens) => self.bump(self.metrics.lease_stranded, tokens),
        }
    }
}
