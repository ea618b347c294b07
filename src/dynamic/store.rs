//! Process memory as the shared store: one map for every Envoy worker
//! thread, with proxy-wasm shared data's compare-and-swap semantics, so the
//! rate limiter and fetched documents behave exactly as in the wasm build.
//! Sharded by key so workers touching different callers rarely meet on a
//! lock; a compare-and-swap holds its shard's lock for the whole check and
//! write, which makes it atomic across threads.

use crate::store::{Cas, Conflict, MemoryStore, SharedStore};
use std::sync::LazyLock;

const SHARDS: usize = 64;

/// Shards of the host-neutral in-memory store: each holds its own lock, so
/// a compare-and-swap is atomic across threads.
pub struct ProcessStore {
    shards: Vec<MemoryStore>,
}

/// The one store of this Envoy process.
pub static STORE: LazyLock<ProcessStore> = LazyLock::new(ProcessStore::new);

impl ProcessStore {
    fn new() -> Self {
        Self { shards: (0..SHARDS).map(|_| MemoryStore::default()).collect() }
    }

    /// FNV-1a: a shard only spreads lock traffic, so a keyed hash (and
    /// its cost on every store access) buys nothing.
    fn shard(&self, key: &str) -> Option<&MemoryStore> {
        let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
        self.shards.get(usize::try_from(hash % SHARDS as u64).unwrap_or(0))
    }
}

impl SharedStore for ProcessStore {
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.shard(key)?.get(key)
    }

    /// A poisoned shard refuses writes, so callers fail closed.
    fn set(&self, key: &str, value: &[u8], cas: Cas) -> Result<(), Conflict> {
        self.shard(key).ok_or(Conflict)?.set(key, value, cas)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;
    use crate::policy::Policy;
    use crate::rate_limit::{self, CallerId, Charge, Placement};
    use crate::testing::EveryVar;
    use std::sync::Arc;

    #[test]
    fn compare_and_swap_semantics() {
        let store = ProcessStore::new();
        assert_eq!(store.get("k"), None);
        store.set("k", b"1", Cas::Absent).unwrap();
        let (value, cas) = store.get("k").unwrap();
        assert_eq!(value, b"1");
        assert_eq!(store.set("k", b"2", Cas::Absent), Err(Conflict));
        assert_eq!(store.set("k", b"2", Cas::Match(cas.wrapping_add(1))), Err(Conflict));
        store.set("k", b"2", Cas::Match(cas)).unwrap();
        assert_eq!(store.set("k", b"3", Cas::Match(cas)), Err(Conflict));
        store.set("k", b"4", Cas::Any).unwrap();
        assert_eq!(store.get("k").unwrap().0, b"4");
    }

    /// Eight threads, each with its own compiled policy (as Envoy's workers
    /// have), race for one caller's bucket of 100: exactly 100 win, whatever
    /// the interleaving. A charge that gives up on contention is tried again,
    /// as a client would.
    #[test]
    fn a_bucket_admits_exactly_n_across_threads() {
        const POLICY: &[u8] = br#"{"api_keys": {"keys": []},
            "rate_limits": {"plans": {"p": [{"name": "b", "requests": 100, "per_s": 86400}]}, "default_plan": "p"}}"#;
        let store = Arc::new(ProcessStore::new());
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let store = Arc::clone(&store);
                std::thread::spawn(move || {
                    let policy = Policy::from_json(POLICY, &EveryVar("pepper")).unwrap();
                    let plan = policy.plans.get(policy.plans.id("p").unwrap()).unwrap();
                    let placement = Placement::shared(store.as_ref()).unwrap();
                    let mut admitted = 0;
                    for _ in 0..50 {
                        loop {
                            let caller = CallerId::new(&placement, b"caller");
                            match rate_limit::charge(store.as_ref(), plan, caller, 1_000).charge {
                                Charge::Admitted(_) => admitted += 1,
                                Charge::Contended => continue,
                                _ => {}
                            }
                            break;
                        }
                    }
                    admitted
                })
            })
            .collect();
        let admitted: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(admitted, 100);
    }
}
