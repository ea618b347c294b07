//! Host-side cost of the edge's own MACs: session tokens (issue, verify, and
//! a whole request authenticated by one) and webhook signatures per KiB of
//! body. `cargo bench --bench signing` prints nanoseconds, median of rounds.

// A benchmark, not request-path code: failing loudly on bad fixtures is right.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use edge_auth::api_key::KeyHasher;
use edge_auth::config::{SignatureFormatDoc, WebhookDoc};
use edge_auth::decision::{decide, Request, Runtime};
use edge_auth::fetched::Fetched;
use edge_auth::jwt::{NoSignatureHost, TokenCache};
use edge_auth::policy::Policy;
use edge_auth::rate_limit::Placement;
use edge_auth::store::MemoryStore;
use edge_auth::testing::{measure, OnlyVars};
use edge_auth::webhook::{self, parse_signature};
use std::cell::RefCell;
use std::hint::black_box;

const SECRET: &str = "bench-webhook-secret-0123456789";
const ENV: OnlyVars = OnlyVars(&[
    ("EDGE_AUTH_PEPPER", "bench-pepper"),
    ("EDGE_AUTH_SESSION_KEY", "bench-session-key-0123456789abcdef"),
    ("HOOK", SECRET),
]);
const NOW_S: u64 = 1_800_000_000;

fn main() {
    let hash = KeyHasher::new(b"bench-pepper").unwrap().hash("opaque-bench-key").to_hex();
    let json = format!(
        r#"{{"api_keys":{{"opaque_bearer":true,"keys":[{{"id":"key_bench","hash":"{hash}","org":"o","account":"acme"}}]}},
            "sessions":{{"path":"/api/session"}}}}"#
    );
    let policy = Policy::from_json(json.as_bytes(), &ENV).unwrap();
    let sessions = policy.sessions.as_ref().unwrap();
    let token = sessions.issue("key_bench", NOW_S + 3600, [7; 12]).unwrap();
    measure("session token: issue", 200_000, || {
        black_box(sessions.issue(black_box("key_bench"), NOW_S + 3600, [7; 12]));
    });
    measure("session token: verify", 200_000, || {
        black_box(sessions.verify(black_box(&token), NOW_S).unwrap());
    });

    let store = MemoryStore::default();
    let (tokens, fetched) = (RefCell::new(TokenCache::default()), Fetched::empty());
    let placement = Placement::shared(&store).unwrap();
    let runtime = Runtime {
        now_ns: NOW_S * 1_000_000_000,
        store: &store,
        tokens: &tokens,
        fetched: &fetched,
        signatures: &NoSignatureHost,
        placement: Some(&placement),
    };
    for (label, value) in [("session", format!("Bearer {token}")), ("opaque API key", "Bearer opaque-bench-key".into())]
    {
        let headers = vec![("authorization".to_owned(), value.into_bytes())];
        let request = Request { method: "GET", path: "/v1/x", headers: &headers };
        measure(&format!("decide: Bearer {label}"), 100_000, || {
            black_box(decide(black_box(&policy), black_box(&request), &runtime));
        });
    }

    let doc = |format| WebhookDoc {
        name: "bench".into(),
        header: "x-sig".into(),
        secret_env: "HOOK".into(),
        format,
        tolerance_s: 300,
        max_body_bytes: 1 << 20,
    };
    for format in [SignatureFormatDoc::Hex, SignatureFormatDoc::Timestamped] {
        let hook = webhook::compile(&[doc(format)], &ENV).unwrap().pop().unwrap();
        let mut per_kib = Vec::new();
        for kib in [1usize, 64, 1024] {
            let body = vec![b'x'; kib * 1024];
            let header = webhook::sign(format, SECRET.as_bytes(), &body, NOW_S).unwrap();
            let iters = u32::try_from(200_000 / kib).unwrap().max(50);
            let ns = measure(&format!("webhook {format:?}: parse + verify, {kib} KiB body"), iters, || {
                let signature = parse_signature(format, black_box(header.as_bytes())).unwrap();
                black_box(hook.verify(&signature, black_box(&body), NOW_S)).unwrap();
            });
            per_kib.push((kib, ns));
        }
        let (small, large) = (per_kib[0], per_kib[2]);
        let slope = (large.1 - small.1) / (large.0 - small.0) as f64;
        println!("{:<52} {slope:>10.0} ns", format!("webhook {format:?}: per KiB of body (slope)"));
    }
}
