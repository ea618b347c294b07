//! Counters in Envoy's stats (`/stats/prometheus` shows them as
//! `edge_auth_*`). Every worker VM defines the same names, so Envoy
//! aggregates them into one counter per name.
//!
//! Denials per route are `edge_auth.route.<route>.denied.<code>` (and
//! `shadow_denied`), defined on first use; the `stats_tags` of the shipped
//! `envoy/envoy.yaml` turn them into `edge_auth_route_denied{route, code}`.

use crate::denial::Code;
use crate::fetched::Kind;
use crate::rate_limit::{Charge, ChargeResult};
use crate::worker::{EngineEvent, Stats};
use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;
use std::cell::RefCell;
use std::collections::HashMap;

/// The per-route families; the route's label goes between it and the kind.
const ROUTE_FAMILY: &str = "edge_auth.route";

pub struct Metrics {
    allowed: u32,
    denied: [u32; Code::ALL.len()],
    shadow_denied: [u32; Code::ALL.len()],
    cas_conflicts: u32,
    engine_calls: u32,
    engine_leased: u32,
    engine_failed: u32,
    lease_stranded: u32,
    table_full: u32,
    contended: u32,
    keyset_ok: u32,
    keyset_failed: u32,
    jwks_ok: u32,
    jwks_failed: u32,
    keyset_generation: u32,
    keyset_size: u32,
    /// Per-route counters defined so far, by route label: found without
    /// formatting their names on every denial.
    per_route: RefCell<HashMap<String, RouteCounters>>,
}

/// One route's denial counters, by code: `[denied, shadow_denied]`.
type RouteCounters = [[Option<u32>; Code::ALL.len()]; 2];

impl Metrics {
    pub fn define() -> Option<Self> {
        let counter = |name: &str| hostcalls::define_metric(MetricType::Counter, name).ok();
        let gauge = |name: &str| hostcalls::define_metric(MetricType::Gauge, name).ok();
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
            keyset_generation: gauge("edge_auth.keyset.generation")?,
            keyset_size: gauge("edge_auth.keyset.size")?,
            per_route: RefCell::default(),
        })
    }

    /// A fetch of a key set or JWKS ended, well or not.
    pub fn refreshed(&self, kind: Kind, ok: bool) {
        bump(match (kind, ok) {
            (Kind::Keys, true) => self.keyset_ok,
            (Kind::Keys, false) => self.keyset_failed,
            (Kind::Jwks(_), true) => self.jwks_ok,
            (Kind::Jwks(_), false) => self.jwks_failed,
        });
    }

    pub fn key_set_size(&self, keys: u64) {
        let _ = hostcalls::record_metric(self.keyset_size, keys);
    }

    pub fn key_set_generation(&self, generation: u64) {
        let _ = hostcalls::record_metric(self.keyset_generation, generation);
    }
}

impl Stats for Metrics {
    fn allowed(&self) {
        bump(self.allowed);
    }

    fn denied(&self, code: Code, shadow: bool, route: &str) {
        bump_code(if shadow { &self.shadow_denied } else { &self.denied }, code);
        let Some(index) = Code::ALL.iter().position(|&c| c == code) else { return };
        let mut defined = self.per_route.borrow_mut();
        let counters = match defined.get_mut(route) {
            Some(counters) => counters,
            None => defined.entry(route.to_owned()).or_default(),
        };
        let Some(slot) = counters.get_mut(usize::from(shadow)).and_then(|ids| ids.get_mut(index)) else { return };
        if slot.is_none() {
            let kind = if shadow { "shadow_denied" } else { "denied" };
            let name = format!("{ROUTE_FAMILY}.{route}.{kind}.{}", code.as_str());
            *slot = hostcalls::define_metric(MetricType::Counter, &name).ok();
        }
        if let Some(id) = *slot {
            bump(id);
        }
    }

    fn rate_limit(&self, result: &ChargeResult) {
        if result.conflicts > 0 {
            let _ = hostcalls::increment_metric(self.cas_conflicts, i64::from(result.conflicts));
        }
        match result.charge {
            Charge::TableFull { .. } => bump(self.table_full),
            Charge::Contended => bump(self.contended),
            Charge::Admitted(_) | Charge::Limited { .. } => {}
        }
    }

    fn engine(&self, event: EngineEvent) {
        match event {
            EngineEvent::Asked => bump(self.engine_calls),
            EngineEvent::Leased => bump(self.engine_leased),
            EngineEvent::Failed => bump(self.engine_failed),
            EngineEvent::Stranded(tokens) => {
                let _ = hostcalls::increment_metric(self.lease_stranded, i64::try_from(tokens).unwrap_or(i64::MAX));
            }
        }
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
