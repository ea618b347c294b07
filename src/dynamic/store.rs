//! Process memory as the shared store: one map for every Envoy worker
//! thread, with proxy-wasm shared data's compare-and-swap semantics, so the
//! rate limiter and fetched documents behave exactly as in the wasm build.
//! Sharded by key so workers touching different callers rarely meet on a
//! lock; a compare-and-swap holds its shard's lock for the whole check and
//! write, which makes it atomic across threads.

use crate::store::{Cas, Conflict, MemoryStore, SharedStore, StoreHasher};
use std::hash::{Hash, Hasher};
use std::sync::LazyLock;

const SHARDS: usize = 64;
/// Seeds the shard's hash apart from the shards' own maps' (which hash with
/// the default [`StoreHasher`]): one hash for both would leave each map's keys
/// agreeing in the bits that chose the shard.
const SHARD_SEED: u64 = 0x9e37_79b9_7f4a_7c15;

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

    fn shard(&self, key: &str) -> Option<&MemoryStore> {
        let mut hasher = StoreHasher::seeded(SHARD_SEED);
        key.hash(&mut hasher);
        let index = usize::try_from(hasher.finish() % SHARDS as u64).unwrap_or(0);
        self.shards.get(index)
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
    fn the_rate_limiters_slots_spread_over_the_shards() {
        let store = ProcessStore::new();
        let mut counts = [0u32; SHARDS];
        for slot in 0..65_536 {
            let shard = store.shard(&format!("edge_auth/rl/{slot}")).unwrap();
            let index = store.shards.iter().position(|s| std::ptr::eq(s, shard)).unwrap();
            counts[index] += 1;
        }
        assert!(counts.iter().all(|&n| (900..=1_150).contains(&n)), "{counts:?}");
    }

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
