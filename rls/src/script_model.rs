//! `charge.lua` against a plain reference model, on a fake clock, in a real Redis.
//!
//! The model keeps each bucket's level in u128 as tokens × per_s·10^6 (no gcd, no
//! doubles), refills it by `requests` per microsecond, caps it at the bucket's size,
//! and charges a request only when every bucket has enough.

use crate::descriptor::Charge;
use crate::limit::Limit;
use crate::script::FakeClockScript;
use crate::support::Redis;
use proptest::prelude::*;
use std::collections::HashMap;

const MICROS: u128 = 1_000_000;

#[derive(Default)]
struct Model {
    /// key → (level, time of that level)
    buckets: HashMap<String, (u128, u64)>,
}

impl Model {
    fn charge(&mut self, charges: &[Charge], now: u64) -> (bool, Vec<u128>) {
        let mut levels = self.buckets.clone();
        let mut before = Vec::new();
        let mut admitted = true;
        let mut charged = Vec::new();
        for c in charges {
            let (requests, period) = (u128::from(c.limit.requests()), u128::from(c.limit.per_s()) * MICROS);
            let full = requests * period;
            let (level, at) = levels.get(&c.key).copied().unwrap_or((full, now));
            let level = if now > at { full.min(level + u128::from(now - at) * requests) } else { level };
            let at = at.max(now);
            before.push(level);
            let cost = u128::from(c.hits) * period;
            if level >= cost {
                levels.insert(c.key.clone(), (level - cost, at));
                if cost > 0 {
                    charged.push(c.key.clone());
                }
            } else {
                levels.insert(c.key.clone(), (level, at));
                admitted = false;
            }
        }
        // Only charged buckets are stored: a look (0 hits) leaves a bucket's time alone.
        if admitted {
            for key in charged {
                self.buckets.insert(key.clone(), levels[&key]);
            }
        }
        (admitted, before)
    }
}

fn limits() -> impl Strategy<Value = Limit> {
    prop_oneof![
        (1u64..=20, 1u64..=10),
        (1u64..=100_000, 1u64..=100_000),
        (1_000_000u64..=5_000_000, 1u64..=3),
        Just((4_294_967_291, 1)),
        Just((5000, 86_400)),
    ]
    .prop_filter_map("beyond exact range", |(requests, per_s)| Limit::new(requests, per_s).ok())
}

/// One request: (bucket index, hits) pairs, and how far the clock moves first (µs;
/// negative steps model a clock that went back).
fn steps(buckets: usize) -> impl Strategy<Value = Vec<(i64, Vec<(usize, u64)>)>> {
    let charge = (0..buckets, prop_oneof![Just(1u64), 0u64..=3, 0u64..=5_000_000]);
    let advance = prop_oneof![0i64..=1_000, 0i64..=2_000_000, -5_000i64..=0, 0i64..=90_000_000_000];
    prop::collection::vec((advance, prop::collection::vec(charge, 1..=3)), 1..40)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn script_matches_the_model(limits in prop::collection::vec(limits(), 1..=3), steps in steps(3)) {
        let redis = REDIS.with(|r| r.url());
        let mut con = redis::Client::open(redis).unwrap().get_connection().unwrap();
        let _: () = redis::cmd("FLUSHALL").query(&mut con).unwrap();
        let script = FakeClockScript::new();
        let mut model = Model::default();
        let mut now: u64 = 1_700_000_000_000_000;
        for (advance, request) in steps {
            now = now.saturating_add_signed(advance);
            let charges: Vec<Charge> = request
                .into_iter()
                .map(|(i, hits)| {
                    let limit = limits[i % limits.len()];
                    Charge { caller: "c".into(), bucket: i.to_string(), limit, hits, key: format!("k{}", i % limits.len()) }
                })
                .collect();
            let outcome = script.charge(&mut con, &charges, now);
            let (admitted, before) = model.charge(&charges, now);
            prop_assert_eq!(outcome.admitted, admitted);
            for ((charge, units), level) in charges.iter().zip(&outcome.before).zip(&before) {
                let period = u128::from(charge.limit.per_s()) * MICROS;
                let per_token = u128::from(charge.limit.capacity() / u64::from(charge.limit.requests()));
                prop_assert_eq!(u128::from(*units) * (period / per_token), *level);
            }
        }
    }
}

thread_local! {
    // One server for every case of this thread's run.
    static REDIS: Redis = Redis::start();
}
