//! Stand-ins for host tests, benchmarks and fuzzing; never in the module.

use crate::config::Environment;
use crate::store::{Cas, Conflict, MemoryStore, SharedStore};
use std::cell::Cell;

/// An environment in which every variable holds the same value (a pepper,
/// a session key, or `""` for "set but empty").
pub struct EveryVar(pub &'static str);

impl Environment for EveryVar {
    fn var(&self, _: &str) -> Option<String> {
        Some(self.0.to_owned())
    }
}

/// An environment with exactly these variables.
pub struct OnlyVars(pub &'static [(&'static str, &'static str)]);

impl Environment for OnlyVars {
    fn var(&self, name: &str) -> Option<String> {
        self.0.iter().find(|(n, _)| *n == name).map(|(_, value)| (*value).to_owned())
    }
}

/// A [`MemoryStore`] that counts reads: each is a `get_shared_data` host
/// call in the module, the cost that matters there.
#[derive(Default)]
pub struct CountingStore {
    inner: MemoryStore,
    reads: Cell<u64>,
}

impl CountingStore {
    /// Reads since the last call.
    pub fn take_reads(&self) -> u64 {
        self.reads.replace(0)
    }
}

impl SharedStore for CountingStore {
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.reads.set(self.reads.get() + 1);
        self.inner.get(key)
    }

    fn set(&self, key: &str, value: &[u8], cas: Cas) -> Result<(), Conflict> {
        self.inner.set(key, value, cas)
    }
}
