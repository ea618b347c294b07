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

/// The fixed part of a caller's stored state: who, under which plan, until
/// when it matters. The buckets' TATs follow it, [`TAT_LEN`] bytes each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    caller: u64,
    plan: u64,
    /// Unix nanoseconds from which every bucket is full again.
    idle_at_ns: u64,
    /// The clock the last charge used: the buckets' time never runs back.
    clock_ns: u64,
}

impl Header {
    const LEN: usize = 1 + 8 + 8 + 8 + 8;

    fn encode(&self) -> [u8; Self::LEN] {
        let fields = [self.caller, self.plan, self.idle_at_ns, self.clock_ns].map(u64::to_le_bytes);
        let mut out = [0; Self::LEN];
        let [version, numbers @ ..] = &mut out;
        *version = VERSION;
        for (out, &byte) in numbers.iter_mut().zip(fields.as_flattened()) {
            *out = byte;
        }
        out
    }
}

/// Bytes of one bucket's TAT (little-endian).
const TAT_LEN: usize = 16;

/// A caller's stored state, read in place.
struct Entry<'a> {
    header: Header,
    /// One TAT per bucket, [`TAT_LEN`] bytes each.
    tats: &'a [u8],
}

impl<'a> Entry<'a> {
    /// `None` for anything not written by this version: such a slot is free.
    fn decode(bytes: &'a [u8]) -> Option<Self> {
        let (&version, rest) = bytes.split_first()?;
        if version != VERSION {
            return None;
        }
        let (caller, rest) = take_u64(rest)?;
        let (plan, rest) = take_u64(rest)?;
        let (idle_at_ns, rest) = take_u64(rest)?;
        let (clock_ns, tats) = take_u64(rest)?;
        if tats.len() % TAT_LEN != 0 {
            return None;
        }
        Some(Self { header: Header { caller, plan, idle_at_ns, clock_ns }, tats })
    }

    fn buckets(&self) -> usize {
        self.tats.len() / TAT_LEN
    }
}

fn take_u64(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let (head, rest) = bytes.split_first_chunk::<8>()?;
    Some((u64::from_le_bytes(*head), rest))
}

/// The TATs in `bytes` (whole [`TAT_LEN`] chunks; a remainder is ignored).
fn read_tats(bytes: &[u8]) -> impl Iterator<Item = Tat> + '_ {
    bytes.chunks_exact(TAT_LEN).filter_map(|chunk| chunk.try_into().ok()).map(Tat::from_le_bytes)
}

/// Where each TAT of an entry being encoded goes.
fn tat_slots(bytes: &mut [u8]) -> impl Iterator<Item = &mut [u8; TAT_LEN]> {
    bytes.chunks_exact_mut(TAT_LEN).filter_map(|chunk| chunk.try_into().ok())
}

/// Entries of plans with up to this many buckets are encoded on the stack.
/// The configuration does not bound a plan's buckets, so bigger plans spill
/// to the heap.
const INLINE_BUCKETS: usize = 4;

/// Runs `f` on a zeroed buffer the size of an entry of `buckets` buckets:
/// a charge encodes its entry without allocating.
fn with_entry_buffer<R>(buckets: usize, f: impl FnOnce(&mut [u8]) -> R) -> R {
    let len = buckets.saturating_mul(TAT_LEN).saturating_add(Header::LEN);
    let mut inline = [0; Header::LEN + INLINE_BUCKETS * TAT_LEN];
    match inline.get_mut(..len) {
        Some(out) => f(out),
        None => f(&mut vec![0; len]),
    }
}

/// The plan's buckets as GCRAs (cheap: derived on each use, never stored).
fn gcras(plan: &Plan) -> impl Iterator<Item = Gcra> + '_ {
    plan.buckets.iter().map(Gcra::new)
}

/// Decimal digits of the largest slot number.
const SLOT_DIGITS: usize = (SLOTS - 1).ilog10() as usize + 1;

/// The shared-data key of a slot, `edge_auth/rl/<slot in decimal>`, built on
/// the stack: a charge names up to `CHOICES × WINDOW` of them.
#[derive(Clone, Copy)]
struct SlotKey {
    bytes: [u8; KEY_PREFIX.len() + SLOT_DIGITS],
    len: usize,
}

impl SlotKey {
    fn new(bucket: u64, index: u64) -> Self {
        // Wrapping, as the arithmetic always did in release builds; callers'
        // buckets are below `BUCKETS`, so nothing wraps.
        let mut slot = bucket.wrapping_mul(WINDOW).wrapping_add(index) % SLOTS;
        let len = KEY_PREFIX.len() + slot.checked_ilog10().map_or(1, |log| log as usize + 1);
        let mut bytes = [0; KEY_PREFIX.len() + SLOT_DIGITS];
        for (out, &byte) in bytes.iter_mut().zip(KEY_PREFIX.as_bytes()) {
            *out = byte;
        }
        // The digits, last first.
        for digit in bytes.iter_mut().take(len).skip(KEY_PREFIX.len()).rev() {
            *digit = b'0' + (slot % 10) as u8;
            slot /= 10;
        }
        Self { bytes, len }
    }

    fn as_str(&self) -> &str {
        // ASCII by construction, so this cannot fail; were it to, every slot
        // would be one key, which callers fight over and are refused (fail
        // closed), rather than a panic.
        self.bytes.get(..self.len).and_then(|bytes| std::str::from_utf8(bytes).ok()).unwrap_or(KEY_PREFIX)
    }
}

impl std::ops::Deref for SlotKey {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

/// Takes one token from every bucket of `plan` for `caller`, all or nothing.
pub fn charge(store: &dyn SharedStore, plan: &Plan, caller: CallerId, now_ns: u64) -> ChargeResult {
    let attempt = || -> Result<Charge, Conflict> {
        let slot = match find_slot(store, plan, caller, now_ns) {
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
        let now_ns = now_ns.max(slot.clock_ns);
        with_entry_buffer(plan.buckets.len(), |out| {
            let Some((header, next)) = out.split_first_chunk_mut::<{ Header::LEN }>() else {
                return Ok(Charge::Contended); // Cannot happen: the buffer holds a header.
            };
            // One pass: the new TATs go straight into the entry to write; the
            // stored ones stay as they were, for a refusal to report.
            let mut refused: Option<u128> = None;
            let mut quota: Option<Quota> = None;
            let mut idle_at_ns = now_ns;
            for ((g, tat), out) in gcras(plan).zip(slot.tats()).zip(tat_slots(next)) {
                match g.check(tat, now_ns) {
                    Draw::Refuse { retry_in_ns } => refused = refused.max(Some(retry_in_ns)),
                    Draw::Admit { tat, remaining, full_in_ns } => {
                        *out = tat.to_le_bytes();
                        let full_at_ns = now_ns.saturating_add(u64::try_from(full_in_ns).unwrap_or(u64::MAX));
                        idle_at_ns = idle_at_ns.max(full_at_ns);
                        let candidate = Quota { limit: g.capacity(), remaining, reset_s: ceil_seconds(full_in_ns) };
                        if quota.is_none_or(|q| candidate.remaining < q.remaining) {
                            quota = Some(candidate);
                        }
                    }
                }
            }
            if let Some(retry_in_ns) = refused {
                // A refusal takes no token, so nothing is written.
                let quota = most_constrained(plan, slot.tats(), now_ns);
                return Ok(Charge::Limited { quota, retry_after_s: ceil_seconds(retry_in_ns) });
            }
            *header =
                Header { caller: caller.fingerprint, plan: plan.fingerprint, idle_at_ns, clock_ns: now_ns }.encode();
            store.set(&slot.key, out, slot.cas)?;
            Ok(Charge::Admitted(quota.unwrap_or(Quota { limit: 0, remaining: 0, reset_s: 0 })))
        })
    };
    let retried = retry(MAX_ATTEMPTS, attempt);
    ChargeResult { charge: retried.value.unwrap_or(Charge::Contended), conflicts: retried.conflicts }
}

/// Gives back the token [`charge`] took from every bucket of `plan` (the
/// fleet-wide engine refused the request the local buckets admitted), so a
/// refusal by one scope takes nothing from the other. Returns whether a token
/// was given back.
pub fn refund(store: &dyn SharedStore, plan: &Plan, caller: CallerId, now_ns: u64) -> bool {
    let attempt = || -> Result<bool, Conflict> {
        let Ok(slot) = find_slot(store, plan, caller, now_ns) else {
            return Ok(false);
        };
        if slot.clock_ns == 0 {
            return Ok(false); // Nothing of this caller's is stored.
        }
        let now_ns = now_ns.max(slot.clock_ns);
        with_entry_buffer(plan.buckets.len(), |out| {
            let Some((header, next)) = out.split_first_chunk_mut::<{ Header::LEN }>() else {
                return Ok(false); // Cannot happen: the buffer holds a header.
            };
            let mut full_in_ns = 0;
            for ((g, tat), out) in gcras(plan).zip(slot.tats()).zip(tat_slots(next)) {
                let tat = g.give_back(tat);
                *out = tat.to_le_bytes();
                full_in_ns = full_in_ns.max(g.peek(tat, now_ns).1);
            }
            let idle_at_ns = now_ns.saturating_add(u64::try_from(full_in_ns).unwrap_or(u64::MAX));
            *header =
                Header { caller: caller.fingerprint, plan: plan.fingerprint, idle_at_ns, clock_ns: now_ns }.encode();
            store.set(&slot.key, out, slot.cas)?;
            Ok(true)
        })
    };
    retry(MAX_ATTEMPTS, attempt).value.unwrap_or(false)
}

/// Where a charge writes, with the CAS condition, and the buckets it finds.
struct Slot {
    key: SlotKey,
    cas: Cas,
    /// The caller's entry as stored, when its buckets are usable; empty for
    /// fresh buckets.
    stored: Vec<u8>,
    /// The clock of the last charge (0 for fresh buckets).
    clock_ns: u64,
}

impl Slot {
    fn fresh(key: SlotKey, cas: Cas) -> Self {
        Self { key, cas, stored: Vec::new(), clock_ns: 0 }
    }

    /// The buckets' TATs, in the plan's order: as stored, then full buckets
    /// (TAT 0) for as many as are asked, which is all of a fresh slot's.
    fn tats(&self) -> impl Iterator<Item = Tat> + '_ {
        read_tats(self.stored.get(Header::LEN..).unwrap_or_default()).chain(std::iter::repeat(0))
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
    claim: Option<(SlotKey, Cas)>,
    /// Slots held by other callers that are still active.
    active: u64,
}

/// The caller's slot (its state, or a free or idle slot to claim with fresh
/// buckets). A bucket's slots are read in order and a caller always claims
/// the first free or idle one of a bucket, so a bucket's written slots are a
/// prefix of it: a slot that was never written ends that bucket's search.
/// A new caller goes to whichever of its buckets holds fewer active callers
/// (the first on a tie), which keeps buckets evenly filled.
fn find_slot(store: &dyn SharedStore, plan: &Plan, caller: CallerId, now_ns: u64) -> Result<Slot, Full> {
    let mut seen: [Seen; CHOICES] = Default::default();
    let mut idle_at_ns = u64::MAX;
    for (&bucket, seen) in caller.buckets.iter().zip(&mut seen) {
        for index in 0..WINDOW {
            let key = SlotKey::new(bucket, index);
            let Some((bytes, cas)) = store.get(&key) else {
                seen.claim.get_or_insert((key, Cas::Absent));
                break;
            };
            match Entry::decode(&bytes) {
                Some(entry) if entry.header.caller == caller.fingerprint => {
                    let cas = Cas::Match(cas);
                    let usable = entry.header.plan == plan.fingerprint && entry.buckets() == plan.buckets.len();
                    return Ok(if usable {
                        Slot { key, cas, clock_ns: entry.header.clock_ns, stored: bytes }
                    } else {
                        Slot::fresh(key, cas)
                    });
                }
                Some(Entry { header, .. }) if header.idle_at_ns > now_ns => {
                    seen.active += 1;
                    idle_at_ns = idle_at_ns.min(header.idle_at_ns);
                }
                _ => {
                    seen.claim.get_or_insert((key, Cas::Match(cas)));
                }
            }
        }
    }
    let emptiest = seen.into_iter().filter(|s| s.claim.is_some()).min_by_key(|s| s.active);
    emptiest.and_then(|s| s.claim).map(|(key, cas)| Slot::fresh(key, cas)).ok_or(Full { idle_at_ns })
}

/// The bucket with the fewest tokens left, without taking one.
fn most_constrained(plan: &Plan, tats: impl Iterator<Item = Tat>, now_ns: u64) -> Quota {
    gcras(plan)
        .zip(tats)
        .map(|(g, tat)| {
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

    fn slot_key(bucket: u64, index: u64) -> SlotKey {
        SlotKey::new(bucket, index)
    }

    /// An entry as version 2 lays it out: the version, the header's numbers,
    /// then the TATs, all little-endian.
    fn encode(header: Header, tats: &[Tat]) -> Vec<u8> {
        let mut out = vec![VERSION];
        for n in [header.caller, header.plan, header.idle_at_ns, header.clock_ns] {
            out.extend_from_slice(&n.to_le_bytes());
        }
        for tat in tats {
            out.extend_from_slice(&tat.to_le_bytes());
        }
        out
    }

    fn active(caller: u64, idle_at_ns: u64) -> Vec<u8> {
        encode(Header { caller, plan: 0, idle_at_ns, clock_ns: T0 }, &[0])
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
        let header = Header { caller: 1, plan: 2, idle_at_ns: 3, clock_ns: 5 };
        let bytes = encode(header, &[4, u128::MAX]);
        assert_eq!(bytes.get(..Header::LEN), Some(&header.encode()[..]));
        let back = Entry::decode(&bytes).unwrap();
        assert_eq!((back.header, back.buckets()), (header, 2));
        assert_eq!(read_tats(back.tats).collect::<Vec<_>>(), vec![4, u128::MAX]);
        assert!(Entry::decode(b"").is_none());
        assert!(Entry::decode(&[VERSION, 1, 2]).is_none());
        let mut odd = bytes.clone();
        odd.push(0);
        assert!(Entry::decode(&odd).is_none());
        let mut other = bytes;
        other[0] = VERSION + 1;
        assert!(Entry::decode(&other).is_none());
    }

    #[test]
    fn a_charge_writes_the_entry_as_version_2_lays_it_out() {
        let p = plans(&[(10, 10), (5, 60)]);
        let store = MemoryStore::default();
        let caller = id(&store, "k:layout");
        assert!(matches!(charge(&store, plan(&p), caller, T0).charge, Charge::Admitted(_)));
        let (bytes, _) = caller.buckets.iter().find_map(|&bucket| store.get(&slot_key(bucket, 0))).unwrap();
        // A fresh bucket's TAT becomes now + one interval, in units of
        // 1 / requests ns; the minute bucket is full again last, 60 s / 5
        // after its one token.
        let tats = [u128::from(T0) * 10 + 10 * u128::from(SECOND), u128::from(T0) * 5 + 60 * u128::from(SECOND)];
        let header = Header {
            caller: caller.fingerprint,
            plan: plan(&p).fingerprint,
            idle_at_ns: T0 + 12 * SECOND,
            clock_ns: T0,
        };
        assert_eq!(bytes, encode(header, &tats));
    }

    #[test]
    fn slot_keys_are_the_prefix_and_the_slot_in_decimal() {
        for slot in 0..SLOTS {
            let key = slot_key(slot / WINDOW, slot % WINDOW);
            assert_eq!(key.as_str(), format!("{KEY_PREFIX}{slot}"));
        }
        // Slot numbers wrap around the table.
        assert_eq!(slot_key(BUCKETS, 1).as_str(), format!("{KEY_PREFIX}1"));
    }

    #[test]
    fn plans_bigger_than_the_inline_buffer_charge_and_refund_every_bucket() {
        let buckets: Vec<(u64, u64)> = (0..INLINE_BUCKETS as u64 + 3).map(|i| (3 + i, 60 * (i + 1))).collect();
        let p = plans(&buckets);
        let store = MemoryStore::default();
        let caller = id(&store, "k:big");
        assert_eq!(admitted(&store, plan(&p), "k:big", 10, T0), 3);
        assert!(refund(&store, plan(&p), caller, T0));
        assert_eq!(
            charge(&store, plan(&p), caller, T0).charge,
            Charge::Admitted(Quota { limit: 3, remaining: 0, reset_s: 60 })
        );
        assert!(matches!(charge(&store, plan(&p), caller, T0).charge, Charge::Limited { .. }));
    }
}
