//! Callers' buckets in proxy-wasm shared data, shared by every Envoy worker.
//!
//! Shared data cannot be deleted, so the key space is fixed: [`SLOTS`] keys.
//! A caller hashes to a slot and probes [`PROBES`] consecutive ones. A slot
//! whose buckets are all full again carries no information, so another
//! caller may take it over; a caller that finds neither its own slot nor a
//! free or idle one is refused (fail closed). Every write is a
//! compare-and-swap, retried at most [`MAX_ATTEMPTS`] times; a caller that
//! cannot win in that many is refused too, never waved through.

use super::gcra::{Gcra, Tat, Verdict};
use super::plan::Plan;
use crate::store::{retry, Cas, Conflict, SharedStore};
use sha2::{Digest, Sha256};

/// Distinct callers whose buckets are not yet full again that one Envoy
/// process tracks at most (≈ 100 bytes of shared data each once used).
pub const SLOTS: u64 = 65_536;
/// Consecutive slots a caller may occupy.
pub const PROBES: u64 = 8;
/// Compare-and-swap attempts before a request is refused.
pub const MAX_ATTEMPTS: u32 = 16;

const KEY_PREFIX: &str = "edge_auth/rl/";
const VERSION: u8 = 2;

/// What a caller's most constrained bucket looks like (for `x-ratelimit-*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub limit: u64,
    pub remaining: u64,
    /// Whole seconds until that bucket is full again.
    pub reset_s: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charge {
    Admitted(Quota),
    /// A bucket is empty; `retry_after_s` until every bucket has a token.
    Limited {
        quota: Quota,
        retry_after_s: u64,
    },
    /// More active callers than the table holds.
    TableFull,
    /// Lost the compare-and-swap [`MAX_ATTEMPTS`] times.
    Contended,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChargeResult {
    pub charge: Charge,
    /// Compare-and-swap conflicts met on the way.
    pub conflicts: u32,
}

/// A caller's stored state: who, under which plan, until when it matters.
struct Entry {
    caller: u64,
    plan: u64,
    /// Unix nanoseconds from which every bucket is full again.
    idle_at_ns: u64,
    /// The clock the last charge used: the buckets' time never runs back.
    clock_ns: u64,
    tats: Vec<Tat>,
}

impl Entry {
    const HEADER: usize = 1 + 8 + 8 + 8 + 8;

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::HEADER + 16 * self.tats.len());
        out.push(VERSION);
        out.extend_from_slice(&self.caller.to_le_bytes());
        out.extend_from_slice(&self.plan.to_le_bytes());
        out.extend_from_slice(&self.idle_at_ns.to_le_bytes());
        out.extend_from_slice(&self.clock_ns.to_le_bytes());
        for tat in &self.tats {
            out.extend_from_slice(&tat.to_le_bytes());
        }
        out
    }

    /// `None` for anything not written by this version: such a slot is free.
    fn decode(bytes: &[u8]) -> Option<Self> {
        let (&version, rest) = bytes.split_first()?;
        if version != VERSION {
            return None;
        }
        let (caller, rest) = take_u64(rest)?;
        let (plan, rest) = take_u64(rest)?;
        let (idle_at_ns, rest) = take_u64(rest)?;
        let (clock_ns, rest) = take_u64(rest)?;
        let chunks = rest.chunks_exact(16);
        if !chunks.remainder().is_empty() {
            return None;
        }
        let tats = chunks.map(|c| c.try_into().map(u128::from_le_bytes)).collect::<Result<_, _>>().ok()?;
        Some(Self { caller, plan, idle_at_ns, clock_ns, tats })
    }
}

fn take_u64(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let (head, rest) = bytes.split_first_chunk::<8>()?;
    Some((u64::from_le_bytes(*head), rest))
}

/// Where a caller lives: its first slot and a fingerprint naming it there.
#[derive(Debug, Clone, Copy)]
pub struct CallerId {
    slot: u64,
    fingerprint: u64,
}

impl CallerId {
    /// `key` distinguishes callers, e.g. `k:<key id>` or `j:<iss>\0<sub>`.
    pub fn new(key: &[u8]) -> Self {
        let digest = Sha256::digest(key);
        let (slot, rest) = take_u64(&digest).unwrap_or((0, &[]));
        let (fingerprint, _) = take_u64(rest).unwrap_or((0, &[]));
        Self { slot: slot % SLOTS, fingerprint }
    }
}

fn slot_key(slot: u64) -> String {
    format!("{KEY_PREFIX}{}", slot % SLOTS)
}

/// Takes one token from every bucket of `plan` for `caller`, all or nothing.
pub fn charge(store: &dyn SharedStore, plan: &Plan, caller: CallerId, now_ns: u64) -> ChargeResult {
    let gcras: Vec<Gcra> = plan.buckets.iter().map(Gcra::new).collect();
    let attempt = || -> Result<Charge, Conflict> {
        let Some(Slot { key, cas, tats, clock_ns }) = find_slot(store, plan, caller, &gcras, now_ns) else {
            return Ok(Charge::TableFull);
        };
        // Charges take effect in compare-and-swap order, not in the order the
        // workers read the clock: one that read it before the last writer did
        // is charged at the writer's time, so each admitted request leaves
        // exactly one token fewer.
        let now_ns = now_ns.max(clock_ns);
        let verdicts: Vec<Verdict> = gcras.iter().zip(&tats).map(|(g, &tat)| g.check(tat, now_ns)).collect();
        if let Some(retry_in_ns) = verdicts
            .iter()
            .filter_map(|v| match v {
                Verdict::Refuse { retry_in_ns } => Some(*retry_in_ns),
                Verdict::Admit { .. } => None,
            })
            .max()
        {
            // A refusal takes no token, so nothing is written.
            let quota = most_constrained(&gcras, &tats, now_ns);
            return Ok(Charge::Limited { quota, retry_after_s: ceil_seconds(retry_in_ns) });
        }
        let mut quota: Option<Quota> = None;
        let mut next = Vec::with_capacity(verdicts.len());
        let mut idle_at_ns = now_ns;
        for (g, verdict) in gcras.iter().zip(&verdicts) {
            if let Verdict::Admit { tat, remaining, full_in_ns } = *verdict {
                next.push(tat);
                idle_at_ns = idle_at_ns.max(now_ns.saturating_add(u64::try_from(full_in_ns).unwrap_or(u64::MAX)));
                let candidate = Quota { limit: g.capacity(), remaining, reset_s: ceil_seconds(full_in_ns) };
                if quota.is_none_or(|q| candidate.remaining < q.remaining) {
                    quota = Some(candidate);
                }
            }
        }
        let entry =
            Entry { caller: caller.fingerprint, plan: plan.fingerprint, idle_at_ns, clock_ns: now_ns, tats: next };
        store.set(&key, &entry.encode(), cas)?;
        Ok(Charge::Admitted(quota.unwrap_or(Quota { limit: 0, remaining: 0, reset_s: 0 })))
    };
    let retried = retry(MAX_ATTEMPTS, attempt);
    ChargeResult { charge: retried.value.unwrap_or(Charge::Contended), conflicts: retried.conflicts }
}

/// Where a charge writes, with the CAS condition, and the buckets it finds.
struct Slot {
    key: String,
    cas: Cas,
    tats: Vec<Tat>,
    /// The clock of the last charge (0 for fresh buckets).
    clock_ns: u64,
}

/// The caller's slot (its state, or a free or idle slot to claim with fresh
/// buckets).
fn find_slot(store: &dyn SharedStore, plan: &Plan, caller: CallerId, gcras: &[Gcra], now_ns: u64) -> Option<Slot> {
    let fresh = |(key, cas)| Slot { key, cas, tats: vec![0; gcras.len()], clock_ns: 0 };
    let mut claim: Option<(String, Cas)> = None;
    for probe in 0..PROBES {
        let key = slot_key(caller.slot + probe);
        let Some((bytes, cas)) = store.get(&key) else {
            // Slots are never removed, so the caller cannot live past a slot
            // that was never written.
            return Some(fresh(claim.unwrap_or((key, Cas::Absent))));
        };
        match Entry::decode(&bytes) {
            Some(entry) if entry.caller == caller.fingerprint => {
                let cas = Cas::Match(cas);
                let usable = entry.plan == plan.fingerprint && entry.tats.len() == gcras.len();
                return Some(if usable {
                    Slot { key, cas, tats: entry.tats, clock_ns: entry.clock_ns }
                } else {
                    fresh((key, cas))
                });
            }
            Some(entry) if entry.idle_at_ns > now_ns => {}
            _ => {
                claim.get_or_insert((key, Cas::Match(cas)));
            }
        }
    }
    claim.map(fresh)
}

/// The bucket with the fewest tokens left, without taking one.
fn most_constrained(gcras: &[Gcra], tats: &[Tat], now_ns: u64) -> Quota {
    gcras
        .iter()
        .zip(tats)
        .map(|(g, &tat)| {
            let (remaining, full_in_ns) = g.peek(tat, now_ns);
            Quota { limit: g.capacity(), remaining, reset_s: ceil_seconds(full_in_ns) }
        })
        .min_by_key(|q| q.remaining)
        .unwrap_or(Quota { limit: 0, remaining: 0, reset_s: 0 })
}

fn ceil_seconds(ns: u128) -> u64 {
    u64::try_from(ns.div_ceil(1_000_000_000)).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BucketDoc;
    use crate::rate_limit::Plans;
    use crate::store::MemoryStore;
    use std::collections::BTreeMap;
    use std::sync::Arc;

    const T0: u64 = 1_800_000_000 * 1_000_000_000;
    const SECOND: u64 = 1_000_000_000;

    fn plans(buckets: &[(u64, u64)]) -> Plans {
        let docs = buckets
            .iter()
            .enumerate()
            .map(|(i, &(requests, per_s))| BucketDoc { name: format!("b{i}"), requests, per_s })
            .collect();
        Plans::compile(&BTreeMap::from([("p".to_owned(), docs)])).unwrap()
    }

    fn plan(p: &Plans) -> &Plan {
        p.get(p.id("p").unwrap()).unwrap()
    }

    fn admitted(store: &dyn SharedStore, plan: &Plan, caller: &str, n: usize, now: u64) -> usize {
        (0..n)
            .filter(|_| {
                matches!(charge(store, plan, CallerId::new(caller.as_bytes()), now).charge, Charge::Admitted(_))
            })
            .count()
    }

    #[test]
    fn all_buckets_are_charged_all_or_nothing() {
        let p = plans(&[(5, 10), (7, 60)]);
        let store = MemoryStore::default();
        assert_eq!(admitted(&store, plan(&p), "k:a", 20, T0), 5);
        // After 10 s the burst bucket is full, but the minute bucket has its 2
        // untouched tokens plus 7 × 10/60 refilled: 3 requests, not 5.
        assert_eq!(admitted(&store, plan(&p), "k:a", 20, T0 + 10 * SECOND), 3);
        // Refusals took nothing from the minute bucket.
        let r = charge(&store, plan(&p), CallerId::new(b"k:a"), T0 + 10 * SECOND);
        assert!(matches!(r.charge, Charge::Limited { quota: Quota { limit: 7, remaining: 0, .. }, .. }));
    }

    #[test]
    fn callers_are_independent_and_quota_reports_the_tightest_bucket() {
        let p = plans(&[(20, 10), (100, 60)]);
        let store = MemoryStore::default();
        assert_eq!(admitted(&store, plan(&p), "k:a", 25, T0), 20);
        let r = charge(&store, plan(&p), CallerId::new(b"k:b"), T0);
        assert_eq!(r.charge, Charge::Admitted(Quota { limit: 20, remaining: 19, reset_s: 1 }));
        let r = charge(&store, plan(&p), CallerId::new(b"k:a"), T0);
        assert_eq!(
            r.charge,
            Charge::Limited { quota: Quota { limit: 20, remaining: 0, reset_s: 10 }, retry_after_s: 1 }
        );
    }

    #[test]
    fn concurrent_workers_admit_exactly_the_plan() {
        let p = Arc::new(plans(&[(100, 3600)]));
        let store = Arc::new(MemoryStore::default());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (p, store) = (Arc::clone(&p), Arc::clone(&store));
                std::thread::spawn(move || admitted(store.as_ref(), plan(&p), "k:hot", 100, T0))
            })
            .collect();
        let total: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(total, 100);
    }

    #[test]
    fn a_charge_whose_clock_lags_the_last_writer_still_takes_exactly_one_token() {
        // Two workers read the clock; the one that read it earlier wins the
        // compare-and-swap second. It must see one token fewer, not two.
        let p = plans(&[(20, 3600)]);
        let store = MemoryStore::default();
        let caller = CallerId::new(b"k:lag");
        let remaining = |now| match charge(&store, plan(&p), caller, now).charge {
            Charge::Admitted(quota) => quota.remaining,
            other => panic!("{other:?}"),
        };
        assert_eq!(remaining(T0), 19);
        assert_eq!(remaining(T0 - 1_000), 18);
        assert_eq!(remaining(T0 - 2_000), 17);
        assert_eq!(remaining(T0 + 1_000), 16);
    }

    #[test]
    fn a_creation_race_cannot_lose_a_token() {
        let p = plans(&[(3, 60)]);
        let store = MemoryStore::default();
        let caller = CallerId::new(b"k:new");
        // Two workers saw the slot missing; the second creation must conflict.
        let key = slot_key(caller.slot);
        store.set(&key, b"first", Cas::Absent).unwrap();
        assert_eq!(store.set(&key, b"second", Cas::Absent), Err(Conflict));
        // A slot holding garbage is free to claim, and CAS-guarded.
        assert_eq!(admitted(&store, plan(&p), "k:new", 5, T0), 3);
    }

    #[test]
    fn idle_slots_are_reused_so_memory_is_bounded() {
        let p = plans(&[(1, 1)]);
        let store = MemoryStore::default();
        for i in 0..2_000u64 {
            // Each caller arrives after the previous one's bucket refilled.
            let caller = format!("k:{}", i % 500);
            assert_eq!(admitted(&store, plan(&p), &caller, 1, T0 + i * 2 * SECOND), 1);
        }
        assert!(store.len() <= 500, "{} slots used", store.len());
    }

    #[test]
    fn a_full_neighbourhood_refuses_instead_of_sharing() {
        let p = plans(&[(1, 3600)]);
        let store = MemoryStore::default();
        let victim = CallerId::new(b"k:victim");
        // Fill every probe slot of the victim with other, active callers.
        for probe in 0..PROBES {
            let entry = Entry { caller: probe + 1, plan: 0, idle_at_ns: u64::MAX, clock_ns: T0, tats: vec![0] };
            store.set(&slot_key(victim.slot + probe), &entry.encode(), Cas::Absent).unwrap();
        }
        assert_eq!(charge(&store, plan(&p), victim, T0).charge, Charge::TableFull);
    }

    #[test]
    fn a_caller_keeps_its_slot_when_an_earlier_one_frees_up() {
        let p = plans(&[(2, 3600)]);
        let store = MemoryStore::default();
        let caller = CallerId::new(b"k:late");
        let blocker = Entry { caller: 7, plan: 0, idle_at_ns: T0 + SECOND, clock_ns: T0, tats: vec![0] };
        store.set(&slot_key(caller.slot), &blocker.encode(), Cas::Absent).unwrap();
        assert_eq!(admitted(&store, plan(&p), "k:late", 1, T0), 1); // lands in the second slot
                                                                    // The blocker goes idle; the caller must still find its own state.
        assert_eq!(admitted(&store, plan(&p), "k:late", 5, T0 + 2 * SECOND), 1);
    }

    #[test]
    fn entries_round_trip_and_garbage_is_refused() {
        let entry = Entry { caller: 1, plan: 2, idle_at_ns: 3, clock_ns: 5, tats: vec![4, u128::MAX] };
        let back = Entry::decode(&entry.encode()).unwrap();
        assert_eq!(
            (back.caller, back.plan, back.idle_at_ns, back.clock_ns, back.tats),
            (1, 2, 3, 5, vec![4, u128::MAX])
        );
        assert!(Entry::decode(b"").is_none());
        assert!(Entry::decode(&[VERSION, 1, 2]).is_none());
        let mut odd = entry.encode();
        odd.push(0);
        assert!(Entry::decode(&odd).is_none());
    }
}
