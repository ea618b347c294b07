//! Leases: tokens a busy caller takes from the fleet-wide engine ahead of
//! need, spent by every worker of one Envoy through shared data, so a hot key
//! costs one engine round trip per lease rather than per request.
//!
//! Only tokens the engine granted are ever spent: a lease of `hits` is asked
//! with `hits_addend`, which the engine charges all or nothing. A caller
//! starts at one token per request; when it spends a lease before the lease
//! expires, the next one doubles (up to [`cap`]); when a lease expires, the
//! next one halves. Tokens still leased when a lease expires are stranded:
//! at most the workers that asked at once × (`cap` − 1) per caller and Envoy,
//! for at most [`TTL_NS`]. Lease slots are few and fixed (shared data cannot
//! be deleted); a caller whose slot holds another caller's live lease simply
//! asks the engine for every request.

use super::placement::CallerId;
use super::plan::Plan;
use crate::store::{retry, Cas, Conflict, SharedStore};

/// Shared-data keys for leases, one per slot.
pub const SLOTS: u64 = 4_096;
/// How long leased tokens may be spent.
pub const TTL_NS: u64 = 1_000_000_000;

const KEY_PREFIX: &str = "edge_auth/lease/";
const ATTEMPTS: u32 = 16;
const VERSION: u8 = 1;

/// The most tokens a lease of `plan` may take: `max_lease`, and at most a
/// sixteenth of its smallest global bucket, so small buckets stay exact to
/// the request.
pub fn cap(plan: &Plan, max_lease: u32) -> u32 {
    let smallest = plan.global.iter().map(|b| b.requests.get()).min().unwrap_or(1);
    u32::try_from((smallest / 16).clamp(1, u64::from(max_lease.max(1)))).unwrap_or(1)
}

/// What the caller's lease said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// A leased token was spent: the request is admitted.
    Spent,
    /// Ask the engine for this many tokens (one is the request's).
    Ask { hits: u32 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Lease {
    caller: u64,
    plan: u64,
    tokens: u64,
    until_ns: u64,
    /// The size of the last lease asked.
    hits: u64,
}

impl Lease {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(41);
        out.push(VERSION);
        for n in [self.caller, self.plan, self.tokens, self.until_ns, self.hits] {
            out.extend_from_slice(&n.to_le_bytes());
        }
        out
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let (&VERSION, mut rest) = bytes.split_first()? else { return None };
        let mut numbers = [0u64; 5];
        for n in &mut numbers {
            let (head, tail) = rest.split_first_chunk::<8>()?;
            *n = u64::from_le_bytes(*head);
            rest = tail;
        }
        let [caller, plan, tokens, until_ns, hits] = numbers;
        rest.is_empty().then_some(Self { caller, plan, tokens, until_ns, hits })
    }

    fn owned_by(&self, caller: CallerId, plan: &Plan) -> bool {
        self.caller == caller.fingerprint && self.plan == plan.fingerprint
    }
}

fn key(caller: CallerId) -> String {
    let slot = caller.buckets.first().copied().unwrap_or(0) % SLOTS;
    format!("{KEY_PREFIX}{slot}")
}

/// Spends one of the caller's leased tokens, or says how many to ask for.
pub fn take(store: &dyn SharedStore, plan: &Plan, max_lease: u32, caller: CallerId, now_ns: u64) -> Take {
    let key = key(caller);
    let cap = u64::from(cap(plan, max_lease));
    let attempt = || -> Result<Take, Conflict> {
        let Some((bytes, cas)) = store.get(&key) else { return Ok(Take::Ask { hits: 1 }) };
        let lease = match Lease::decode(&bytes) {
            Some(lease) if lease.owned_by(caller, plan) => lease,
            _ => return Ok(Take::Ask { hits: 1 }),
        };
        let live = now_ns < lease.until_ns;
        if live && lease.tokens > 0 {
            let spent = Lease { tokens: lease.tokens - 1, ..lease };
            store.set(&key, &spent.encode(), Cas::Match(cas))?;
            return Ok(Take::Spent);
        }
        // Spent within its life: demand outruns the lease, so grow it;
        // expired: demand fell, so shrink it.
        let hits = if live { lease.hits.saturating_mul(2) } else { lease.hits / 2 };
        Ok(Take::Ask { hits: u32::try_from(hits.clamp(1, cap)).unwrap_or(1) })
    };
    // Contention on a lease only costs a round trip: ask for the request alone.
    retry(ATTEMPTS, attempt).value.unwrap_or(Take::Ask { hits: 1 })
}

/// Records that the engine granted `hits` tokens, one of them the current
/// request's; the rest may be spent by any worker until the lease expires.
/// Returns the tokens stranded because the slot holds another caller's live
/// lease (for metrics).
pub fn grant(store: &dyn SharedStore, plan: &Plan, caller: CallerId, hits: u32, now_ns: u64) -> u64 {
    let key = key(caller);
    let extra = u64::from(hits).saturating_sub(1);
    let attempt = || -> Result<u64, Conflict> {
        let (current, cas) = match store.get(&key) {
            Some((bytes, cas)) => (Lease::decode(&bytes), Cas::Match(cas)),
            None => (None, Cas::Absent),
        };
        let tokens = match current {
            Some(lease) if lease.owned_by(caller, plan) && now_ns < lease.until_ns => lease.tokens,
            Some(lease) if now_ns < lease.until_ns && lease.tokens > 0 => return Ok(extra),
            _ => 0,
        };
        let lease = Lease {
            caller: caller.fingerprint,
            plan: plan.fingerprint,
            tokens: tokens.saturating_add(extra),
            until_ns: now_ns.saturating_add(TTL_NS),
            hits: u64::from(hits),
        };
        store.set(&key, &lease.encode(), cas)?;
        Ok(0)
    };
    retry(ATTEMPTS, attempt).value.unwrap_or(extra)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BucketDoc, ScopeDoc};
    use crate::rate_limit::{Placement, Plans};
    use crate::store::MemoryStore;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    const T0: u64 = 1_800_000_000 * 1_000_000_000;

    fn plans(requests: u64) -> Plans {
        let bucket = BucketDoc { name: "day".into(), requests, per_s: 86_400, scope: ScopeDoc::Global };
        Plans::compile(&BTreeMap::from([("p".to_owned(), vec![bucket])]), true).unwrap()
    }

    fn plan(p: &Plans) -> &Plan {
        p.get(p.id("p").unwrap()).unwrap()
    }

    #[test]
    fn the_cap_keeps_small_buckets_exact() {
        assert_eq!(cap(plan(&plans(20)), 16), 1);
        assert_eq!(cap(plan(&plans(100)), 16), 6);
        assert_eq!(cap(plan(&plans(5_000)), 16), 16);
        assert_eq!(cap(plan(&plans(5_000)), 1), 1, "max_lease 1: no leases");
    }

    #[test]
    fn a_busy_caller_earns_bigger_leases_and_an_idle_one_smaller() {
        let p = plans(5_000);
        let store = MemoryStore::default();
        let caller = CallerId::new(&Placement::shared(&store).unwrap(), b"k:hot");
        assert_eq!(take(&store, plan(&p), 16, caller, T0), Take::Ask { hits: 1 });
        grant(&store, plan(&p), caller, 1, T0);
        // Spent before it expired: the next lease doubles, up to the cap.
        let mut hits = 1;
        for round in 0..6 {
            let Take::Ask { hits: asked } = take(&store, plan(&p), 16, caller, T0 + round) else { panic!() };
            assert_eq!(asked, (hits * 2).min(16));
            hits = asked;
            grant(&store, plan(&p), caller, hits, T0 + round);
            for _ in 1..hits {
                assert_eq!(take(&store, plan(&p), 16, caller, T0 + round), Take::Spent);
            }
        }
        // Expired: halved.
        assert_eq!(take(&store, plan(&p), 16, caller, T0 + 10 * TTL_NS), Take::Ask { hits: 8 });
    }

    #[test]
    fn another_callers_live_lease_is_kept() {
        let p = plans(5_000);
        let store = MemoryStore::default();
        let placement = Placement::shared(&store).unwrap();
        let a = CallerId::new(&placement, b"k:a");
        let mut b = CallerId::new(&placement, b"k:b");
        b.buckets = a.buckets; // the same lease slot
        assert_eq!(grant(&store, plan(&p), a, 8, T0), 0);
        assert_eq!(grant(&store, plan(&p), b, 4, T0), 3, "b's extra tokens strand");
        assert_eq!(take(&store, plan(&p), 16, b, T0), Take::Ask { hits: 1 });
        assert_eq!(take(&store, plan(&p), 16, a, T0), Take::Spent);
    }

    proptest! {
        /// Whatever the order of takes, grants and clock steps, no more
        /// requests are admitted than the engine granted tokens.
        #[test]
        fn spent_never_exceeds_granted(steps in proptest::collection::vec((0u8..3, 0u64..3_000_000_000), 1..200)) {
            let p = plans(5_000);
            let store = MemoryStore::default();
            let caller = CallerId::new(&Placement::shared(&store).unwrap(), b"k:p");
            let (mut now, mut granted, mut admitted) = (T0, 0u64, 0u64);
            for (op, dt) in steps {
                now += dt / 8;
                match (op, take(&store, plan(&p), 16, caller, now)) {
                    (_, Take::Spent) => admitted += 1,
                    (0, Take::Ask { .. }) => {}
                    (_, Take::Ask { hits }) => {
                        granted += u64::from(hits);
                        admitted += 1;
                        grant(&store, plan(&p), caller, hits, now);
                    }
                }
            }
            prop_assert!(admitted <= granted);
        }
    }
}
