//! What a key set costs in shared data, by size: the fetching worker's
//! whole load (parse its pages, check, write both series of shards), one
//! revocation applied by it, and one lookup by hash as any worker makes per
//! request.
//! `cargo bench --bench apply`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use edge_auth::api_key::{KeyHash, Lookup};
use edge_auth::fetched::{feeds, with_rules, Fetched};
use edge_auth::policy::Policy;
use edge_auth::remote::Outcome;
use edge_auth::store::MemoryStore;
use edge_auth::testing::EveryVar;
use std::time::{Duration, Instant};

const CHANGES: u64 = 2_000;
const LOOKUPS: u64 = 20_000;
const PAGE: usize = 100_000;

/// Hashes spread like real MACs: shards are cut on their first bits.
fn hash(i: u64) -> String {
    format!("{:016x}{i:048x}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// The whole set in pages of [`PAGE`] keys (an answer is at most 32 MiB).
fn pages(keys: u64) -> Vec<Vec<u8>> {
    let starts: Vec<u64> = (0..keys).step_by(PAGE).collect();
    starts
        .iter()
        .map(|&start| {
            let records: Vec<String> = (start..keys.min(start + PAGE as u64))
                .map(|i| {
                    let hash = hash(i);
                    format!(r#"{{"id":"key_{i}","hash":"{hash}","org":"org_1","account":"acme","scopes":["a:read"]}}"#)
                })
                .collect();
            let next = if start + (PAGE as u64) < keys {
                format!(r#","next":"{}""#, start + PAGE as u64)
            } else {
                String::new()
            };
            format!(r#"{{"version":"0","keys":[{}]{next}}}"#, records.join(",")).into_bytes()
        })
        .collect()
}

fn main() {
    let policy =
        Policy::from_json(br#"{"api_keys":{"source":{"cluster":"ks","path":"/keys"}}}"#, &EveryVar("pepper")).unwrap();
    let feeds = feeds(&policy);
    let feed = &feeds[0];
    let (refresh, lease) = (Duration::from_secs(30), Duration::from_secs(30));
    println!("{:>8} {:>14} {:>16} {:>14}", "keys", "ms whole load", "ns per change", "ns per lookup");
    for keys in [10_000u64, 100_000, 1_000_000] {
        let store = MemoryStore::default();
        let shared = feed.shared(&store);
        let mut fetcher = Fetched::new(&feeds);
        let pages = pages(keys);
        shared.try_lease(1, 1, refresh, lease).unwrap();
        let started = Instant::now();
        let mut outcome = Outcome::Page;
        for page in pages {
            fetcher.request_headers(feed, "");
            outcome = fetcher.assess(&policy, feed, ("200", Some(page), None), &store);
        }
        let load_ms = started.elapsed().as_secs_f64() * 1e3;
        assert!(matches!(outcome, Outcome::Applied { .. }));
        shared.finish(1, 1, refresh, outcome, Some(1));
        let index = feed.index(&store);
        assert_eq!(index.header().keys, keys);
        let mut spent = Duration::ZERO;
        for n in 1..=CHANGES {
            // Revoke one key, or unrevoke it: a change of one entry either way.
            let id = format!("key_{}", n % 100);
            let op = if n % 200 < 100 { "revoke" } else { "unrevoke" };
            let changes = format!(r#"{{"version":"{n}","base":"{}","changes":{{"{op}":["{id}"]}}}}"#, n - 1);
            shared.try_lease(1, 1 + n, refresh, lease).unwrap();
            let started = Instant::now();
            let outcome = fetcher.assess(&policy, feed, ("200", Some(changes.into_bytes()), None), &store);
            spent += started.elapsed();
            assert!(matches!(outcome, Outcome::Applied { .. }));
            shared.finish(1, 1 + n, refresh, outcome, Some(1 + n));
            assert_eq!(index.is_revoked(&id), Some(op == "revoke"));
        }
        let per_change = spent.as_nanos() / u128::from(CHANGES);
        let hashes: Vec<KeyHash> = (0..LOOKUPS).map(|i| KeyHash::from_hex(&hash(i * 7919 % keys)).unwrap()).collect();
        let started = Instant::now();
        with_rules(&policy, |rules| {
            for hash in &hashes {
                assert!(matches!(index.find(hash, rules), Lookup::Found(_)));
            }
        });
        let per_lookup = started.elapsed().as_nanos() / u128::from(LOOKUPS);
        println!("{keys:>8} {load_ms:>14.1} {per_change:>16} {per_lookup:>14}");
    }
}
