//! What one change costs each worker: a revocation published through shared
//! data (ring slot + generation) and applied by a worker holding 10,000 or
//! 100,000 keys, against re-parsing the whole set. `cargo bench --bench apply`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use edge_auth::fetched::{feeds, Fetched};
use edge_auth::policy::Policy;
use edge_auth::remote::Outcome;
use edge_auth::store::MemoryStore;
use edge_auth::testing::EveryVar;
use std::time::{Duration, Instant};

const CHANGES: u64 = 2_000;

fn records(keys: usize) -> String {
    // Hashes spread like real MACs: the lookup indexes on their first bytes.
    let records: Vec<String> = (0..keys as u64)
        .map(|i| {
            let hash = format!("{:016x}{i:048x}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            format!(r#"{{"id":"key_{i}","hash":"{hash}","org":"org_1","account":"acme","scopes":["a:read"]}}"#)
        })
        .collect();
    records.join(",")
}

fn whole(version: u64, records: &str, revoked: &[String]) -> Vec<u8> {
    let revoked: Vec<String> = revoked.iter().map(|id| format!("\"{id}\"")).collect();
    format!(r#"{{"version":"{version}","keys":[{records}],"revoked":[{}]}}"#, revoked.join(",")).into_bytes()
}

fn main() {
    let policy =
        Policy::from_json(br#"{"api_keys":{"source":{"cluster":"ks","path":"/keys"}}}"#, &EveryVar("pepper")).unwrap();
    let feeds = feeds(&policy);
    let feed = &feeds[0];
    let (refresh, lease) = (Duration::from_secs(30), Duration::from_secs(30));
    println!("{:>8} {:>16} {:>20}", "keys", "ns per change", "ms per whole re-read");
    for keys in [10_000usize, 100_000] {
        let store = MemoryStore::default();
        let shared = feed.shared(&store);
        shared.try_lease(1, 1, refresh, lease).unwrap();
        let records = records(keys);
        let body = whole(0, &records, &[]);
        shared.finish(1, 1, refresh, Outcome::Fresh { body, etag: Some("\"0\"".into()), changes: None }, Some(1));
        let started = Instant::now();
        let mut worker = Fetched::new(&feeds);
        worker.sync(&policy, &store);
        let whole_ms = started.elapsed().as_secs_f64() * 1e3;
        assert_eq!(worker.keys().unwrap().unwrap().len(), keys);
        let mut spent = Duration::ZERO;
        let mut revoked: Vec<String> = Vec::new();
        for n in 1..=CHANGES {
            // Revoke one key, or unrevoke it: a change of one entry either way.
            let id = format!("key_{}", n % 100);
            let op = if n % 200 < 100 { "revoke" } else { "unrevoke" };
            if op == "revoke" {
                revoked.push(id.clone());
            } else {
                revoked.retain(|r| *r != id);
            }
            let changes = format!(r#"{{"version":"{n}","base":"{}","changes":{{"{op}":["{id}"]}}}}"#, n - 1);
            let base = shared.meta().generation;
            if shared.try_lease(1, 1 + n, refresh, lease).unwrap().is_empty() {
                // The fetcher brings the body up to date (a whole answer,
                // parsed by the fetcher alone; the generation stays).
                let body = whole(n - 1, &records, &revoked);
                shared.finish(1, 1 + n, refresh, Outcome::Rebased { body, etag: None }, Some(1 + n));
                shared.try_lease(1, 1 + n, refresh, lease).unwrap();
            }
            let outcome = Outcome::Changes { changes: changes.into_bytes(), etag: Some(format!("\"{n}\"")), base };
            shared.finish(1, 1 + n, refresh, outcome, Some(1 + n));
            let started = Instant::now();
            worker.sync(&policy, &store);
            spent += started.elapsed();
            assert_eq!(worker.keys().unwrap().unwrap().is_revoked(&id), op == "revoke");
        }
        let per_change = spent.as_nanos() / u128::from(CHANGES);
        println!("{keys:>8} {per_change:>16} {whole_ms:>20.1}");
    }
}
