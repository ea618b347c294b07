//! Where a caller's buckets live, keyed by a secret of the Envoy process.
//!
//! Slots are chosen by HMAC-SHA256 of the caller's key under a random secret
//! that every worker of one process shares (stored once in shared data), so
//! someone who knows key ids cannot pick callers that land on a victim's slots.

use super::table::{BUCKETS, CHOICES, MAX_ATTEMPTS};
use crate::store::{retry, Cas, SharedStore};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;

/// Shared-data key of the placement secret (never a slot key).
const SECRET_KEY: &str = "edge_auth/rl/secret";
const SECRET_LEN: usize = 32;

/// The process's placement secret, ready to hash caller keys.
#[derive(Clone)]
pub struct Placement {
    mac: Hmac<Sha256>,
}

impl fmt::Debug for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Placement(secret)")
    }
}

impl Placement {
    /// The secret every worker of this process uses: read from `store`, or
    /// created there from the OS's randomness by the first worker to ask
    /// (a compare-and-swap on an absent key, so concurrent workers agree).
    /// `None` if no randomness is available or the store stays contended:
    /// the caller must then refuse to rate-limit (fail closed).
    pub fn shared(store: &dyn SharedStore) -> Option<Self> {
        let secret = retry(MAX_ATTEMPTS, || {
            let cas = match store.get(SECRET_KEY) {
                Some((bytes, cas)) => match <[u8; SECRET_LEN]>::try_from(bytes.as_slice()) {
                    Ok(secret) => return Ok(Some(secret)),
                    // Not written by this version: replace it.
                    Err(_) => Cas::Match(cas),
                },
                None => Cas::Absent,
            };
            let mut fresh = [0; SECRET_LEN];
            if getrandom::fill(&mut fresh).is_err() {
                return Ok(None);
            }
            store.set(SECRET_KEY, &fresh, cas).map(|()| Some(fresh))
        });
        Self::from_secret(&secret.value.flatten()?)
    }

    fn from_secret(secret: &[u8]) -> Option<Self> {
        Hmac::new_from_slice(secret).ok().map(|mac| Self { mac })
    }
}

/// Where a caller may live: [`CHOICES`] independent buckets of slots, and a
/// fingerprint naming it there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallerId {
    pub(super) buckets: [u64; CHOICES],
    pub(super) fingerprint: u64,
}

impl CallerId {
    /// `key` distinguishes callers, e.g. `k:<key id>` or `j:<iss>\0<sub>`.
    pub fn new(placement: &Placement, key: &[u8]) -> Self {
        let mut mac = placement.mac.clone();
        mac.update(key);
        let digest = mac.finalize().into_bytes();
        let mut words = digest.chunks_exact(8).map(|c| c.try_into().map_or(0, u64::from_le_bytes));
        let fingerprint = words.next().unwrap_or(0);
        let first = words.next().unwrap_or(0) % BUCKETS;
        // The second choice differs from the first, so every caller has two.
        let second = (first + 1 + words.next().unwrap_or(0) % (BUCKETS - 1)) % BUCKETS;
        Self { buckets: [first, second], fingerprint }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;
    use std::sync::{Arc, Barrier};

    #[test]
    fn every_worker_of_a_process_shares_one_secret() {
        let store = MemoryStore::default();
        let a = Placement::shared(&store).unwrap();
        let b = Placement::shared(&store).unwrap();
        assert_eq!(CallerId::new(&a, b"k:victim"), CallerId::new(&b, b"k:victim"));
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn concurrent_workers_creating_the_secret_agree() {
        let store = Arc::new(MemoryStore::default());
        let barrier = Arc::new(Barrier::new(4));
        let ids: Vec<CallerId> = (0..4)
            .map(|_| {
                let (store, barrier) = (Arc::clone(&store), Arc::clone(&barrier));
                std::thread::spawn(move || {
                    barrier.wait();
                    CallerId::new(&Placement::shared(store.as_ref()).unwrap(), b"k:victim")
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        assert!(ids.iter().all(|id| *id == ids[0]));
    }

    #[test]
    fn another_process_places_callers_elsewhere() {
        // An attacker who knows the key ids but not the secret cannot tell
        // where a caller lives: each process draws its own.
        let placements: Vec<Placement> = (0..8).map(|_| Placement::shared(&MemoryStore::default()).unwrap()).collect();
        let victim: Vec<CallerId> = placements.iter().map(|p| CallerId::new(p, b"k:victim")).collect();
        for (i, a) in victim.iter().enumerate() {
            for b in victim.iter().skip(i + 1) {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn a_malformed_secret_is_replaced_and_choices_differ() {
        let store = MemoryStore::default();
        store.set(SECRET_KEY, b"short", Cas::Absent).unwrap();
        let placement = Placement::shared(&store).unwrap();
        assert_eq!(store.get(SECRET_KEY).unwrap().0.len(), SECRET_LEN);
        for i in 0..1_000u32 {
            let id = CallerId::new(&placement, &i.to_le_bytes());
            assert_ne!(id.buckets[0], id.buckets[1]);
            assert!(id.buckets.iter().all(|&b| b < BUCKETS));
        }
    }
}
