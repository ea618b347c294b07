//! How many callers the rate-limit table holds: the real placement and
//! charge code against the in-memory store, no formula. For each load (a
//! share of `SLOTS` held by distinct active callers, whose buckets stay
//! non-idle for an hour), the share of new callers refused with `TableFull`
//! and the host reads a charge makes. `cargo bench --bench placement`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use edge_auth::config::{BucketDoc, ScopeDoc};
use edge_auth::rate_limit::{charge, CallerId, Charge, Placement, Plan, Plans, SLOTS};
use edge_auth::store::MemoryStore;
use edge_auth::testing::CountingStore;
use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Instant;

const T0: u64 = 1_800_000_000 * 1_000_000_000;
const TRIALS: u64 = 5;
const LOADS_PERCENT: [u64; 7] = [10, 25, 40, 50, 60, 75, 90];
/// New callers tried at each load, per trial.
const PROBES: u64 = 400_000;
/// Returning callers charged at each load, per trial (for their reads).
const RETURNING: u64 = 20_000;

#[derive(Default, Clone, Copy)]
struct Reads {
    charges: u64,
    total: u64,
    max: u64,
}

impl Reads {
    fn add(&mut self, reads: u64) {
        self.charges += 1;
        self.total += reads;
        self.max = self.max.max(reads);
    }

    fn mean(&self) -> f64 {
        self.total as f64 / self.charges.max(1) as f64
    }
}

#[derive(Default, Clone, Copy)]
struct Row {
    refused: u64,
    probes: u64,
    fill_refused: u64,
    /// Active callers summed over trials.
    active: u64,
    new_reads: Reads,
    returning_reads: Reads,
}

fn plans() -> Plans {
    let bucket = |requests, per_s| vec![BucketDoc { name: "b".to_owned(), requests, per_s, scope: ScopeDoc::Local }];
    Plans::compile(
        &BTreeMap::from([
            // One request an hour: a filled caller stays active all along.
            ("active".to_owned(), bucket(1, 3600)),
            // Refills in a nanosecond: a probe is idle again at once, so probes
            // do not fill the table they measure.
            ("probe".to_owned(), bucket(1_000_000_000, 1)),
        ]),
        false,
    )
    .unwrap()
}

fn charged(store: &CountingStore, plan: &Plan, caller: CallerId, now_ns: u64, reads: &mut Reads) -> Charge {
    store.take_reads();
    let result = charge(store, plan, caller, now_ns).charge;
    reads.add(store.take_reads());
    result
}

fn main() {
    let plans = plans();
    let active = plans.get(plans.id("active").unwrap()).unwrap();
    let probe = plans.get(plans.id("probe").unwrap()).unwrap();
    let mut rows = vec![Row::default(); LOADS_PERCENT.len()];
    let started = Instant::now();
    for trial in 0..TRIALS {
        // A fresh process: a fresh secret.
        let store = CountingStore::default();
        let placement = Placement::shared(&store).unwrap();
        let mut filled: Vec<CallerId> = Vec::new();
        let mut attempts = 0u64;
        let mut now_ns = T0;
        for (row, percent) in rows.iter_mut().zip(LOADS_PERCENT) {
            let target = SLOTS * percent / 100;
            let mut fill_reads = Reads::default();
            while (filled.len() as u64) < target && attempts < 3 * SLOTS {
                attempts += 1;
                let caller = CallerId::new(&placement, format!("k:fill-{trial}-{attempts}").as_bytes());
                match charged(&store, active, caller, now_ns, &mut fill_reads) {
                    Charge::Admitted(_) => filled.push(caller),
                    Charge::TableFull { .. } => row.fill_refused += 1,
                    other => panic!("{other:?}"),
                }
            }
            row.active += filled.len() as u64;
            for i in 0..PROBES {
                now_ns += 2;
                let caller = CallerId::new(&placement, format!("k:probe-{trial}-{percent}-{i}").as_bytes());
                match charged(&store, probe, caller, now_ns, &mut row.new_reads) {
                    Charge::Admitted(_) => {}
                    Charge::TableFull { .. } => row.refused += 1,
                    other => panic!("{other:?}"),
                }
                row.probes += 1;
            }
            for i in 0..RETURNING {
                let caller = filled[(i * 7919) as usize % filled.len()];
                match charged(&store, active, caller, now_ns, &mut row.returning_reads) {
                    Charge::Limited { .. } => {}
                    other => panic!("a filled caller lost its slot: {other:?}"),
                }
            }
        }
    }
    println!("rate-limit table: {SLOTS} slots, {TRIALS} trials, {PROBES} new callers per load per trial");
    println!(
        "{:>6} {:>8} {:>14} {:>12} {:>16} {:>16} {:>14}",
        "load", "active", "new refused", "share", "reads new (max)", "reads back (max)", "fill refused"
    );
    for (row, percent) in rows.iter().zip(LOADS_PERCENT) {
        println!(
            "{:>5}% {:>8} {:>14} {:>12.2e} {:>11.2} ({:>2}) {:>11.2} ({:>2}) {:>14}",
            percent,
            row.active / TRIALS,
            format!("{}/{}", row.refused, row.probes),
            row.refused as f64 / row.probes as f64,
            row.new_reads.mean(),
            row.new_reads.max,
            row.returning_reads.mean(),
            row.returning_reads.max,
            row.fill_refused,
        );
    }
    println!("(measured in {:.1} s)", started.elapsed().as_secs_f64());

    let store = MemoryStore::default();
    let placement = Placement::shared(&store).unwrap();
    let iters = 200_000u32;
    let start = Instant::now();
    for i in 0..iters {
        black_box(CallerId::new(&placement, format!("k:key_{i}").as_bytes()));
    }
    println!(
        "CallerId::new (HMAC-SHA256 of the key id): {:.0} ns",
        start.elapsed().as_nanos() as f64 / f64::from(iters)
    );
}
