//! Counters in Envoy's stats, named as the wasm build names them
//! (`edge_auth.*`, under the module's metrics namespace:
//! `dynamicmodulescustom.edge_auth.allowed` by default). The names, and
//! which event bumps which, are the engine's ([`crate::metrics`]).

use super::ffi::{ConfigHandle, FilterHandle};
use crate::fetched::Kind;
use crate::metrics::{Counted, Counters, MetricIds};

pub struct Metrics(MetricIds<usize>);

/// The engine's events, counted through one stream's filter.
pub type FilterStats<'a> = Counted<'a, usize, &'a FilterHandle>;

impl Metrics {
    pub fn define(config: &ConfigHandle) -> Option<Self> {
        MetricIds::define(|name| config.define_counter(name), |name| config.define_gauge(name)).map(Self)
    }

    /// A fetch of a key set or JWKS ended, well or not (main thread).
    pub fn refreshed(&self, config: &ConfigHandle, kind: Kind, ok: bool) {
        config.increment_counter(self.0.refreshed(kind, ok), 1);
    }

    pub fn key_set_size(&self, config: &ConfigHandle, keys: u64) {
        config.set_gauge(self.0.key_set_size(), keys);
    }

    pub fn key_set_generation(&self, config: &ConfigHandle, generation: u64) {
        config.set_gauge(self.0.key_set_generation(), generation);
    }

    pub fn stats<'a>(&'a self, envoy: &'a FilterHandle) -> FilterStats<'a> {
        Counted { ids: &self.0, counters: envoy }
    }
}

impl Counters<usize> for &FilterHandle {
    fn add(&self, id: usize, by: u64) {
        self.increment_counter(id, by);
    }
}
