//! The host's shared key-value store (proxy-wasm shared data, or process
//! memory in the native module): values every worker of one Envoy reads and
//! updates with compare-and-swap. Rate limits and fetched documents live here.

/// How a write is conditioned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cas {
    /// Whatever the key holds (for a value only one writer owns).
    Any,
    /// Only if the key does not exist yet.
    Absent,
    /// Only if the key still has this CAS value.
    Match(u32),
}

/// A write lost its compare-and-swap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conflict;

/// Shared data: keys are never deleted, so callers bound their key space.
pub trait SharedStore {
    /// The value and its CAS number, or `None` if the key was never written.
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)>;
    fn set(&self, key: &str, value: &[u8], cas: Cas) -> Result<(), Conflict>;
}

/// What a compare-and-swap loop ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retried<T> {
    /// `None` when every attempt lost its compare-and-swap.
    pub value: Option<T>,
    /// Compare-and-swap conflicts met on the way.
    pub conflicts: u32,
}

/// Runs `attempt` until it does not lose a compare-and-swap, at most
/// `attempts` times. Bounded, so a contended store makes callers give up
/// (and fail closed) rather than spin.
pub fn retry<T>(attempts: u32, mut attempt: impl FnMut() -> Result<T, Conflict>) -> Retried<T> {
    let mut conflicts = 0;
    for _ in 0..attempts {
        match attempt() {
            Ok(value) => return Retried { value: Some(value), conflicts },
            Err(Conflict) => conflicts += 1,
        }
    }
    Retried { value: None, conflicts }
}

/// Read-modify-write of one key: `change` sees the current value (`None` if
/// the key was never written) and returns the value to write, or `None` to
/// leave the key alone. Returns the value written.
pub fn update(
    store: &dyn SharedStore,
    key: &str,
    attempts: u32,
    mut change: impl FnMut(Option<&[u8]>) -> Option<Vec<u8>>,
) -> Option<Vec<u8>> {
    let written = retry(attempts, || {
        let current = store.get(key);
        let cas = current.as_ref().map_or(Cas::Absent, |(_, cas)| Cas::Match(*cas));
        let Some(next) = change(current.as_ref().map(|(value, _)| value.as_slice())) else {
            return Ok(None);
        };
        store.set(key, &next, cas).map(|()| Some(next))
    });
    written.value.flatten()
}

/// Hashes store keys, a few machine words each, in a few multiplications
/// where SipHash takes dozens of rounds.
///
/// Unkeyed, so not for keys an attacker chooses; the store's keys are the
/// module's own: the rate limiter's and leases' fixed sets of slots (which
/// slot a caller uses comes from a keyed hash, and every slot may be in use
/// at once anyway) and names derived from the configuration. The key index
/// hashes with it too: its keys start HMACs under the pepper. Words are
/// combined as FxHash does, and the result goes through MurmurHash3's
/// finaliser so that every input bit reaches the low bits a hash table
/// indexes by (a test checks the rate limiter's slots spread).
#[derive(Debug, Clone, Copy, Default)]
pub struct StoreHasher(u64);

impl StoreHasher {
    /// A hasher whose hashes are independent of the default one's (e.g. to
    /// pick a shard of maps that hash with the default).
    pub const fn seeded(seed: u64) -> Self {
        Self(seed)
    }

    fn add(&mut self, word: u64) {
        const K: u64 = 0x517c_c1b7_2722_0a95;
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(K);
    }
}

impl std::hash::Hasher for StoreHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for word in &mut words {
            self.add(word.try_into().map_or(0, u64::from_le_bytes));
        }
        // The last bytes as a little-endian word, in registers: copying them
        // to a buffer and loading it stalls the load.
        let last = words.remainder().iter().rev().fold(0, |word, &byte| word << 8 | u64::from(byte));
        // The length tells apart inputs that differ only in trailing zeros.
        self.add(last ^ (bytes.len() as u64).rotate_right(8));
    }

    fn write_u8(&mut self, byte: u8) {
        self.add(u64::from(byte));
    }

    fn finish(&self) -> u64 {
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

type Map = std::collections::HashMap<String, (Vec<u8>, u32), std::hash::BuildHasherDefault<StoreHasher>>;

/// An in-process [`SharedStore`] with proxy-wasm-cpp-host's semantics: any
/// write to a missing key creates it; an existing key needs a matching CAS.
/// The lock is held across the check and the write, so a compare-and-swap
/// is atomic across threads (the native build's store is shards of these).
#[derive(Default)]
pub struct MemoryStore {
    data: std::sync::Mutex<Map>,
    next_cas: std::sync::atomic::AtomicU32,
}

impl MemoryStore {
    pub fn len(&self) -> usize {
        self.data.lock().map_or(0, |d| d.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl SharedStore for MemoryStore {
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.data.lock().ok()?.get(key).cloned()
    }

    fn set(&self, key: &str, value: &[u8], cas: Cas) -> Result<(), Conflict> {
        let mut data = self.data.lock().map_err(|_| Conflict)?;
        // Never 0: a CAS of 0 reads as "no CAS" to proxy-wasm callers.
        let next = self.next_cas.fetch_add(1, std::sync::atomic::Ordering::Relaxed).wrapping_add(1).max(1);
        match (data.get_mut(key), cas) {
            (Some(_), Cas::Absent) => Err(Conflict),
            (Some(slot), Cas::Match(expected)) if slot.1 != expected => Err(Conflict),
            (Some((stored, cas)), Cas::Any | Cas::Match(_)) => {
                // In place: a rewrite of the same size (a rate-limit slot's
                // usual one) reuses the allocation.
                stored.clear();
                stored.extend_from_slice(value);
                *cas = next;
                Ok(())
            }
            (None, _) => {
                data.insert(key.to_owned(), (value.to_vec(), next));
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_retries_lost_races_and_can_decline() {
        let store = MemoryStore::default();
        let add = |current: Option<&[u8]>| Some(vec![current.map_or(0, |v| v[0]) + 1]);
        assert_eq!(update(&store, "n", 4, add), Some(vec![1]));
        assert_eq!(update(&store, "n", 4, add), Some(vec![2]));
        assert_eq!(update(&store, "n", 4, |_| None), None);
        assert_eq!(store.get("n").map(|(v, _)| v), Some(vec![2]));
        // A rival writes between every read and write: the loop gives up.
        let mut calls = 0;
        let lost = update(&store, "n", 3, |current| {
            calls += 1;
            store.set("n", &[9], Cas::Any).unwrap();
            Some(current.unwrap().to_vec())
        });
        assert_eq!((lost, calls), (None, 3));
    }

    #[test]
    fn key_hashes_spread_the_rate_limiters_slots() {
        use std::collections::HashSet;
        use std::hash::BuildHasher;
        let keys: Vec<String> = (0..65_536).map(|slot| format!("edge_auth/rl/{slot}")).collect();
        let build = std::hash::BuildHasherDefault::<StoreHasher>::default();
        let hashes: Vec<u64> = keys.iter().map(|key| build.hash_one(key.as_str())).collect();
        // As many distinct low 16 bits (a full table's index) and top 7 bits
        // (its tags) as random hashes would give (about 41,400 distinct, 512
        // a tag), within a few percent.
        let low: HashSet<u64> = hashes.iter().map(|h| h & 0xffff).collect();
        assert!(low.len() > 40_000, "{} distinct", low.len());
        let mut tags = [0u32; 128];
        for h in &hashes {
            tags[(h >> 57) as usize] += 1;
        }
        assert!(tags.iter().all(|&n| (400..=640).contains(&n)), "{tags:?}");
        // Keys that differ only in trailing zeros or in length differ.
        let hash = |bytes: &[u8]| {
            let mut hasher = StoreHasher::default();
            std::hash::Hasher::write(&mut hasher, bytes);
            std::hash::Hasher::finish(&hasher)
        };
        assert_ne!(hash(b"ab"), hash(b"ab\0"));
        assert_ne!(hash(b""), hash(b"\0\0\0\0\0\0\0\0"));
    }

    #[test]
    fn retry_counts_conflicts() {
        let mut left = 2;
        let r = retry(5, || {
            if left == 0 {
                return Ok(());
            }
            left -= 1;
            Err(Conflict)
        });
        assert_eq!(r, Retried { value: Some(()), conflicts: 2 });
        assert_eq!(retry(2, || Err::<(), _>(Conflict)), Retried { value: None, conflicts: 2 });
    }
}
