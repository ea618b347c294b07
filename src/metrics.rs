//! The counters and gauges both hosts define, by the names Envoy's stats
//! show (`edge_auth.*`), and which counter each event of the engine bumps.
//! A host only registers the names (its own id type) and adds to an id.

use crate::denial::Code;
use crate::fetched::Kind;
use crate::rate_limit::{Charge, ChargeResult};
use crate::worker::{EngineEvent, Stats};

/// Adds to a host's counter.
pub trait Counters<Id> {
    fn add(&self, id: Id, by: u64);
}

/// The ids a host gave every metric.
pub struct MetricIds<Id> {
    allowed: Id,
    denied: [Id; Code::ALL.len()],
    shadow_denied: [Id; Code::ALL.len()],
    cas_conflicts: Id,
    engine_calls: Id,
    engine_leased: Id,
    engine_failed: Id,
    lease_stranded: Id,
    table_full: Id,
    contended: Id,
    keyset_ok: Id,
    keyset_failed: Id,
    jwks_ok: Id,
    jwks_failed: Id,
    keyset_generation: Id,
    keyset_size: Id,
}

impl<Id: Copy + Default> MetricIds<Id> {
    /// Registers every metric through the host's `counter` and `gauge`;
    /// `None` if the host refused one.
    pub fn define(counter: impl Fn(&str) -> Option<Id>, gauge: impl Fn(&str) -> Option<Id>) -> Option<Self> {
        let per_code = |prefix: &str| -> Option<[Id; Code::ALL.len()]> {
            let mut ids = [Id::default(); Code::ALL.len()];
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
        })
    }

    /// The counter of a fetch of a key set or JWKS that ended well or not.
    pub fn refreshed(&self, kind: Kind, ok: bool) -> Id {
        match (kind, ok) {
            (Kind::Keys, true) => self.keyset_ok,
            (Kind::Keys, false) => self.keyset_failed,
            (Kind::Jwks(_), true) => self.jwks_ok,
            (Kind::Jwks(_), false) => self.jwks_failed,
        }
    }

    /// The gauge of the fetched key set's size.
    pub fn key_set_size(&self) -> Id {
        self.keyset_size
    }

    /// The gauge of the fetched key set's generation.
    pub fn key_set_generation(&self) -> Id {
        self.keyset_generation
    }
}

/// The engine's events, counted through a host's counters.
pub struct Counted<'a, Id, C> {
    pub ids: &'a MetricIds<Id>,
    pub counters: C,
}

impl<Id: Copy, C: Counters<Id>> Stats for Counted<'_, Id, C> {
    fn allowed(&self) {
        self.counters.add(self.ids.allowed, 1);
    }

    /// Per code only: per-route counters are the host's (wasm defines them
    /// on first use; the native ABI defines metrics at configuration only).
    fn denied(&self, code: Code, shadow: bool, _route: &str) {
        let ids = if shadow { &self.ids.shadow_denied } else { &self.ids.denied };
        if let Some(&id) = Code::ALL.iter().position(|&c| c == code).and_then(|i| ids.get(i)) {
            self.counters.add(id, 1);
        }
    }

    fn rate_limit(&self, result: &ChargeResult) {
        if result.conflicts > 0 {
            self.counters.add(self.ids.cas_conflicts, u64::from(result.conflicts));
        }
        match result.charge {
            Charge::TableFull { .. } => self.counters.add(self.ids.table_full, 1),
            Charge::Contended => self.counters.add(self.ids.contended, 1),
            Charge::Admitted(_) | Charge::Limited { .. } => {}
        }
    }

    fn engine(&self, event: EngineEvent) {
        let (id, by) = match event {
            EngineEvent::Asked => (self.ids.engine_calls, 1),
            EngineEvent::Leased => (self.ids.engine_leased, 1),
            EngineEvent::Failed => (self.ids.engine_failed, 1),
            EngineEvent::Stranded(tokens) => (self.ids.lease_stranded, tokens),
        };
        self.counters.add(id, by);
    }
}
