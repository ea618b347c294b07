//! Callers' buckets in proxy-wasm shared data, shared by every Envoy worker.
//!
//! Shared data cannot be deleted, so the key space is fixed: [`SLOTS`] keys,
//! grouped in [`BUCKETS`] buckets of [`WINDOW`] slots. A caller may live in
//! either of two buckets chosen by a keyed hash ([`Placement`]); a new one
//! goes to the one with fewer active callers. A slot whose buckets
//! are all full again carries no information, so another caller may take it
//! over; a caller that finds neither its own slot nor a free or idle one in
//! both buckets is refused (fail closed). Every write is a compare-and-swap,
//! retried at most [`MAX_ATTEMPTS`] times; a caller that cannot win in that
//! many is refused too, never waved through.
//!
//! [`Placement`]: super::Placement

use super::gcra::{Draw, Gcra, Tat};
use super::placement::CallerId;
use super::plan::Plan;
use crate::store::{retry, Cas, Conflict, SharedStore};

/// Distinct callers whose buckets are not yet full again that one Envoy
/// process tracks at most (≈ 100 bytes of shared data each once used); see
/// `docs/rate-limit-table.md` for how many it holds in practice.
pub const SLOTS: u64 = 65_536;
/// Slots per bucket: a caller reads at most this many in each of its buckets.
pub const WINDOW: u64 = 4;
/// Buckets of [`WINDOW`] slots.
pub const BUCKETS: u64 = SLOTS / WINDOW;
/// Independent buckets a caller may live in.
pub const CHOICES: usize = 2;
/// Compare-and-swap attempts before a request is refused.
pub const MAX_ATTEMPTS: u32 = 16;
/// The longest `retry_after` a full table answers: a slot may free sooner
/// than the earliest idle time (its caller is replaced by a newer one).
pub const MAX_TABLE_RETRY_S: u64 = 60;

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
    /// Every slot the caller may use holds another active caller;
    /// `retry_after_s` until the first of them goes idle (capped).
    TableFull {
        retry_after_s: u64,
    },
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

fn slot_key(bucket: u64, index: u64) -> String {
    format!("{KEY_PREFIX}{}", (bucket * WINDOW + index) % SLOTS)
}

/// Takes one token from every bucket of `plan` for `caller`, all or nothing.
pub fn charge(store: &dyn SharedStore, plan: &Plan, caller: CallerId, now_ns: u64) -> ChargeResult {
    let gcras: Vec<Gcra> = plan.buckets.iter().map(Gcra::new).collect();
    let attempt = || -> Result<Charge, Conflict> {
        let Slot { key, cas, tats, clock_ns } = match find_slot(store, plan, caller, &gcras, now_ns) {
            Ok(slot) => slot,
            Err(Full { idle_at_ns }) => {
                let retry_after_s = ceil_seconds(u128::from(idle_at_ns.saturating_sub(now_ns)));
                return Ok(Charge::TableFull { retry_after_s: retry_after_s.clamp(1, MAX_TABLE_RETRY_S) });
            }
        };
        // Charges take effect in compare-and-swap order, not in the order the
        // workers read the clock: one that read it before the last writer did
        // is charged at the writer's time, so each admitted request leaves
        // exactly one token fewer.
        let now_ns = now_ns.max(clock_ns);
        let draws: Vec<Draw> = gcras.iter().zip(&tats).map(|(g, &tat)| g.check(tat, now_ns)).collect();
        if let Some(retry_in_ns) = draws
            .iter()
            .filter_map(|v| match v {
                Draw::Refuse { retry_in_ns } => Some(*retry_in_ns),
                Draw::Admit { .. } => None,
            })
            .max()
        {
            // A refusal takes no token, so nothing is written.
            let quota = most_constrained(&gcras, &tats, now_ns);
            return Ok(Charge::Limited { quota, retry_after_s: ceil_seconds(retry_in_ns) });
        }
        let mut quota: Option<Quota> = None;
        let mut next = Vec::with_capacity(draws.len());
        let mut idle_at_ns = now_ns;
        for (g, draw) in gcras.iter().zip(&draws) {
            if let Draw::Admit { tat, remaining, full_in_ns } = *draw {
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

/// Gives back the token [`charge`] took from every bucket of `plan` (the
/// fleet-wide engine refused the request the local buckets admitted), so a
/// refusal by one scope takes nothing from the other. Returns whether a token
/// was given back.
pub fn refund(store: &dyn SharedStore, plan: &Plan, caller: CallerId, now_ns: u64) -> bool {
    let gcras: Vec<Gcra> = plan.buckets.iter().map(Gcra::new).collect();
    let attempt = || -> Result<bool, Conflict> {
        let Ok(Slot { key, cas, tats, clock_ns }) = find_slot(store, plan, caller, &gcras, now_ns) else {
            return Ok(false);
        };
        if clock_ns == 0 {
            return Ok(false); // Nothing of this caller's is stored.
        }
        let now_ns = now_ns.max(clock_ns);
        let tats: Vec<Tat> = gcras.iter().zip(&tats).map(|(g, &tat)| g.give_back(tat)).collect();
        let full_in_ns = gcras.iter().zip(&tats).map(|(g, &tat)| g.peek(tat, now_ns).1).max().unwrap_or(0);
        let idle_at_ns = now_ns.saturating_add(u64::try_from(full_in_ns).unwrap_or(u64::MAX));
        let entry = Entry { caller: caller.fingerprint, plan: plan.fingerprint, idle_at_ns, clock_ns: now_ns, tats };
        store.set(&key, &entry.encode(), cas)?;
        Ok(true)
    };
    retry(MAX_ATTEMPTS, attempt).value.unwrap_or(false)
}

/// Where a charge writes, with the CAS condition, and the buckets it finds.
struct Slot {
    key: String,
    cas: Cas,
    tats: Vec<Tat>,
    /// The clock of the last charge (0 for fresh buckets).
    clock_ns: u64,
}

impl Slot {
    fn fresh(key: String, cas: Cas, gcras: &[Gcra]) -> Self {
        Self { key, cas, tats: vec![0; gcras.len()], clock_ns: 0 }
    }
}

/// Every slot a caller may use holds another active caller.
struct Full {
    /// When the first of them goes idle.
    idle_at_ns: u64,
}

/// What a search saw of one of the caller's buckets.
#[derive(Default)]
struct Seen {
    /// Its first free or idle slot.
    claim: Option<(String, Cas)>,
    /// Slots held by other callers that are still active.
    active: u64,
}

/// The caller's slot (its state, or a free or idle slot to claim with fresh
/// buckets). A bucket's slots are read in order and a caller always claims
/// the first free or idle one of a bucket, so a bucket's written slots are a
/// prefix of it: a slot that was never written ends that bucket's search.
/// A new caller goes to whichever of its buckets holds fewer active callers
/// (the first on a tie), which keeps buckets evenly filled.
fn find_slot(
    store: &dyn SharedStore,
    plan: &Plan,
    caller: CallerId,
    gcras: &[Gcra],
    now_ns: u64,
) -> Result<Slot, Full> {
    let mut seen: [Seen; CHOICES] = Default::default();
    let mut idle_at_ns = u64::MAX;
    for (&bucket, seen) in caller.buckets.iter().zip(&mut seen) {
        for index in 0..WINDOW {
            let key = slot_key(bucket, index);
            let Some((bytes, cas)) = store.get(&key) else {
                seen.claim.get_or_insert((key, Cas::Absent));
                break;
            };
            match Entry::decode(&bytes) {
                Some(entry) if entry.caller == caller.fingerprint => {
                    let cas = Cas::Match(cas);
                    let usable = entry.plan == plan.fingerprint && entry.tats.len() == gcras.len();
                    return Ok(if usable {
                        Slot { key, cas, tats: entry.tats, clock_ns: entry.clock_ns }
                    } else {
                        Slot::fresh(key, cas, gcras)
                    });
                }
                Some(entry) if entry.idle_at_ns > now_ns => {
                    seen.active += 1;
                    idle_at_ns = idle_at_ns.min(entry.idle_at_ns);
                }
                _ => {
                    seen.claim.get_or_insert((key, Cas::Match(cas)));
                }
            }
        }
    }
    let emptiest = seen.into_iter().filter(|s| s.claim.is_some()).min_by_key(|s| s.active);
    emptiest.and_then(|s| s.claim).map(|(key, cas)| Slot::fresh(key, cas, gcras)).ok_or(Full { idle_at_ns })
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
    use crate::config::{BucketDoc, ScopeDoc};
    use crate::rate_limit::{Placement, Plans};
    use crate::store::MemoryStore;
    use crate::testing::CountingStore;
    use std::collections::BTreeMap;
    use std::sync::Arc;

    const T0: u64 = 1_800_000_000 * 1_000_000_000;
    const SECOND: u64 = 1_000_000_000;

    fn plans(buckets: &[(u64, u64)]) -> Plans {
        let docs = buckets
            .iter()
            .enumerate()
            .map(|(i, &(requests, per_s))| BucketDoc { name: format!("b{i}"), requests, per_s, scope: ScopeDoc::Local })
            .collect();
        Plans::compile(&BTreeMap::from([("p".to_owned(), docs)]), false).unwrap()
    }

    fn plan(p: &Plans) -> &Plan {
        p.get(p.id("p").unwrap()).unwrap()
    }

    fn id(store: &dyn SharedStore, caller: &str) -> CallerId {
        CallerId::new(&Placement::shared(store).unwrap(), caller.as_bytes())
    }

    fn admitted(store: &dyn SharedStore, plan: &Plan, caller: &str, n: usize, now: u64) -> usize {
        let caller = id(store, caller);
        (0..n).filter(|_| matches!(charge(store, plan, caller, now).charge, Charge::Admitted(_))).count()
    }

    fn active(caller: u64, idle_at_ns: u64) -> Vec<u8> {
        Entry { caller, plan: 0, idle_at_ns, clock_ns: T0, tats: vec![0] }.encode()
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
        let r = charge(&store, plan(&p), id(&store, "k:a"), T0 + 10 * SECOND);
        assert!(matches!(r.charge, Charge::Limited { quota: Quota { limit: 7, remaining: 0, .. }, .. }));
    }

    #[test]
    fn callers_are_independent_and_quota_reports_the_tightest_bucket() {
        let p = plans(&[(20, 10), (100, 60)]);
        let store = MemoryStore::default();
        assert_eq!(admitted(&store, plan(&p), "k:a", 25, T0), 20);
        let r = charge(&store, plan(&p), id(&store, "k:b"), T0);
        assert_eq!(r.charge, Charge::Admitted(Quota { limit: 20, remaining: 19, reset_s: 1 }));
        let r = charge(&store, plan(&p), id(&store, "k:a"), T0);
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
        let caller = id(&store, "k:lag");
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
        let caller = id(&store, "k:new");
        // Two workers saw the slot missing; the second creation must conflict.
        let key = slot_key(caller.buckets[0], 0);
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
    fn a_full_neighbourhood_refuses_and_says_when_a_slot_frees() {
        let p = plans(&[(1, 3600)]);
        let store = MemoryStore::default();
        let victim = id(&store, "k:victim");
        // Fill every slot the victim may use with other, active callers.
        for (i, &bucket) in victim.buckets.iter().enumerate() {
            for index in 0..WINDOW {
                let idle_at = T0 + (7 + 10 * (i as u64) + index) * SECOND - SECOND / 2;
                store.set(&slot_key(bucket, index), &active(100 + index, idle_at), Cas::Absent).unwrap();
            }
        }
        assert_eq!(charge(&store, plan(&p), victim, T0).charge, Charge::TableFull { retry_after_s: 7 });
        // The first one to go idle makes room.
        assert_eq!(admitted(&store, plan(&p), "k:victim", 1, T0 + 7 * SECOND), 1);
        // Far-off idle times are capped.
        let far = id(&store, "k:far");
        for bucket in far.buckets {
            for index in 0..WINDOW {
                store.set(&slot_key(bucket, index), &active(200 + index, u64::MAX), Cas::Any).unwrap();
            }
        }
        let retry_after_s = MAX_TABLE_RETRY_S;
        assert_eq!(charge(&store, plan(&p), far, T0).charge, Charge::TableFull { retry_after_s });
    }

    #[test]
    fn a_caller_overflows_to_its_second_bucket_and_stays_there() {
        let p = plans(&[(2, 3600)]);
        let store = MemoryStore::default();
        let caller = id(&store, "k:spill");
        for index in 0..WINDOW {
            let blocker = active(300 + index, T0 + SECOND);
            store.set(&slot_key(caller.buckets[0], index), &blocker, Cas::Absent).unwrap();
        }
        assert_eq!(admitted(&store, plan(&p), "k:spill", 1, T0), 1);
        assert!(store.get(&slot_key(caller.buckets[1], 0)).is_some());
        // The first bucket frees up; the caller must still find its state
        // in the second, not start afresh in the first.
        assert_eq!(admitted(&store, plan(&p), "k:spill", 5, T0 + 2 * SECOND), 1);
    }

    #[test]
    fn a_caller_keeps_its_slot_when_an_earlier_one_frees_up() {
        let p = plans(&[(2, 3600)]);
        let store = MemoryStore::default();
        let caller = id(&store, "k:late");
        store.set(&slot_key(caller.buckets[0], 0), &active(7, T0 + SECOND), Cas::Absent).unwrap();
        // Lands in the second slot.
        assert_eq!(admitted(&store, plan(&p), "k:late", 1, T0), 1);
        // The blocker goes idle; the caller must still find its own state.
        assert_eq!(admitted(&store, plan(&p), "k:late", 5, T0 + 2 * SECOND), 1);
    }

    #[test]
    fn a_new_caller_goes_to_its_emptier_bucket() {
        let p = plans(&[(2, 3600)]);
        let store = MemoryStore::default();
        let caller = id(&store, "k:even");
        store.set(&slot_key(caller.buckets[0], 0), &active(7, T0 + SECOND), Cas::Absent).unwrap();
        assert_eq!(admitted(&store, plan(&p), "k:even", 1, T0), 1);
        assert!(store.get(&slot_key(caller.buckets[1], 0)).is_some());
        assert!(store.get(&slot_key(caller.buckets[0], 1)).is_none());
    }

    #[test]
    fn a_charge_reads_few_slots_on_a_quiet_table() {
        let p = plans(&[(5, 60)]);
        let store = CountingStore::default();
        let caller = id(&store, "k:quiet");
        // New: the first slot of each bucket; returning: its own slot.
        for expected in [2, 1, 1] {
            store.take_reads();
            assert!(matches!(charge(&store, plan(&p), caller, T0).charge, Charge::Admitted(_)));
            assert_eq!(store.take_reads(), expected);
        }
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
