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

/// Benchmark rounds: the median of this many is reported.
const ROUNDS: usize = 15;

/// Median nanoseconds per call of `f` over 15 rounds of `iters` calls,
/// printed under `name` (for the benches).
pub fn measure(name: &str, iters: u32, mut f: impl FnMut()) -> f64 {
    let mut samples: Vec<f64> = (0..ROUNDS)
        .map(|_| {
            let start = std::time::Instant::now();
            for _ in 0..iters {
                f();
            }
            start.elapsed().as_nanos() as f64 / f64::from(iters)
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    let median = samples.get(ROUNDS / 2).copied().unwrap_or(f64::NAN);
    println!("{name:<52} {median:>10.0} ns");
    median
}
