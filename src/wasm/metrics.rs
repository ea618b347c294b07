//! Counters in Envoy's stats (`/stats/prometheus` shows them as
//! `edge_auth_*`). Every worker VM defines the same names, so Envoy
//! aggregates them into one counter per name.
//!
//! Denials per route are `edge_auth.route.<route>.denied.<code>` (and
//! `shadow_denied`), defined on first use; the `stats_tags` of the shipped
//! `envoy/envoy.yaml` turn them into `edge_auth_route_denied{route, code}`.

use crate::denial::Code;
use crate::fetched::Kind;
use crate::metrics::{Counted, Counters, MetricIds};
use crate::rate_limit::ChargeResult;
use crate::worker::{EngineEvent, Stats};
use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;
use std::cell::RefCell;
use std::collections::HashMap;

/// The per-route families; the route's label goes between it and the kind.
const ROUTE_FAMILY: &str = "edge_auth.route";

pub struct Metrics {
    ids: MetricIds<u32>,
    /// Per-route counters defined so far, by route label: found without
    /// formatting their names on every denial.
    per_route: RefCell<HashMap<String, RouteCounters>>,
}

/// One route's denial counters, by code: `[denied, shadow_denied]`.
type RouteCounters = [[Option<u32>; Code::ALL.len()]; 2];

/// Envoy's counters, reached through proxy-wasm host calls.
struct Host;

impl Counters<u32> for Host {
    fn add(&self, id: u32, by: u64) {
        // A stat that cannot be bumped must not fail the request.
        let _ = hostcalls::increment_metric(id, i64::try_from(by).unwrap_or(i64::MAX));
    }
}

impl Metrics {
    pub fn define() -> Option<Self> {
        let ids = MetricIds::define(
            |name| hostcalls::define_metric(MetricType::Counter, name).ok(),
            |name| hostcalls::define_metric(MetricType::Gauge, name).ok(),
        )?;
        Some(Self { ids, per_route: RefCell::default() })
    }

    /// A fetch of a key set or JWKS ended, well or not.
    pub fn refreshed(&self, kind: Kind, ok: bool) {
        Host.add(self.ids.refreshed(kind, ok), 1);
    }

    pub fn key_set_size(&self, keys: u64) {
        let _ = hostcalls::record_metric(self.ids.key_set_size(), keys);
    }

    pub fn key_set_generation(&self, generation: u64) {
        let _ = hostcalls::record_metric(self.ids.key_set_generation(), generation);
    }

    fn counted(&self) -> Counted<'_, u32, Host> {
        Counted { ids: &self.ids, counters: Host }
    }
}

impl Stats for Metrics {
    fn allowed(&self) {
        self.counted().allowed();
    }

    fn denied(&self, code: Code, shadow: bool, route: &str) {
        self.counted().denied(code, shadow, route);
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
            Host.add(id, 1);
        }
    }

    fn rate_limit(&self, result: &ChargeResult) {
        self.counted().rate_limit(result);
    }

    fn engine(&self, event: EngineEvent) {
        self.counted().engine(event);
    }
}
