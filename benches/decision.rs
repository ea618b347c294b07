//! Host-side cost of the request decision. `make bench` (or
//! `cargo bench --bench decision`) prints nanoseconds per call, median of rounds.

// A benchmark, not request-path code: failing loudly on bad fixtures is right.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use edge_auth::api_key::KeyHasher;
use edge_auth::decision::{decide, Request, Runtime};
use edge_auth::effects;
use edge_auth::fetched::Fetched;
use edge_auth::jwt::{NoSignatureHost, TokenCache};
use edge_auth::policy::Policy;
use edge_auth::rate_limit::Placement;
use edge_auth::store::MemoryStore;
use edge_auth::testing::{measure, EveryVar};
use std::cell::RefCell;
use std::hint::black_box;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

const PEPPER: EveryVar = EveryVar("bench-pepper");

fn policy_json(keys: usize) -> String {
    policy_with(keys, "")
}

/// `plan` names a plan of `rate_limits` below for every key, or "" for none.
fn policy_with(keys: usize, plan: &str) -> String {
    let hasher = KeyHasher::new(b"bench-pepper").unwrap();
    let records: Vec<String> = (0..keys)
        .map(|i| {
            format!(
                r#"{{"id":"key_{i}","hash":"{}","org":"org_{i}","account":"acme","scopes":["agents:read","tasks:execute"]{}}}"#,
                hasher.hash(&format!("sk_live_acme_Secret{i:08}")).to_hex(),
                if plan.is_empty() { String::new() } else { format!(r#","plan":"{plan}""#) }
            )
        })
        .collect();
    format!(
        r#"{{"api_keys":{{"keys":[{}]}},
            "rate_limits":{{"plans":{{
                "huge":[{{"name":"burst","requests":1000000000000,"per_s":1}},{{"name":"day","requests":1000000000000,"per_s":86400}}],
                "tiny":[{{"name":"burst","requests":1,"per_s":31536000}}]}}}},
            "routes":[
            {{"prefix":"/api/accounts","methods":["GET"],"auth":"none"}},
            {{"prefix":"/api/v1/api-keys","methods":["POST"],"credentials":["jwt"]}},
            {{"prefix":"/v1/agents","methods":["GET"],"scopes":["agents:read"]}}]}}"#,
        records.join(",")
    )
}

fn headers(pairs: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
    let mut all = vec![
        (":method".to_owned(), b"GET".to_vec()),
        (":path".to_owned(), b"/v1/agents/42?verbose=1".to_vec()),
        (":authority".to_owned(), b"api.example.com".to_vec()),
        ("user-agent".to_owned(), b"bench/1.0".to_vec()),
        ("accept".to_owned(), b"application/json".to_vec()),
    ];
    all.extend(pairs.iter().map(|(n, v)| (n.to_string(), v.as_bytes().to_vec())));
    all
}

fn bench_decision(policy: &Policy, label: &str, pairs: &[(&str, &str)]) {
    bench_requests(policy, label, 100_000, pairs, Cache::Kept);
}

/// Whether verified tokens stay cached between calls.
#[derive(PartialEq)]
enum Cache {
    Kept,
    Emptied,
}

fn bench_requests(policy: &Policy, label: &str, iters: u32, pairs: &[(&str, &str)], cache: Cache) {
    let headers = headers(pairs);
    let request = Request { method: "GET", path: "/v1/agents/42?verbose=1", headers: &headers };
    let store = MemoryStore::default();
    let tokens = RefCell::new(TokenCache::default());
    let fetched = Fetched::empty();
    let placement = Placement::shared(&store).unwrap();
    let mut now_ns = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64;
    measure(label, iters, || {
        now_ns += 1_000;
        if cache == Cache::Emptied {
            tokens.borrow_mut().clear();
        }
        let runtime = Runtime {
            now_ns,
            store: &store,
            tokens: &tokens,
            fetched: &fetched,
            signatures: &NoSignatureHost,
            placement: Some(&placement),
        };
        let decision = decide(black_box(policy), black_box(&request), &runtime);
        black_box(effects::of(policy, &decision));
    });
}

fn main() {
    for keys in [10, 10_000] {
        let policy = Policy::from_json(policy_json(keys).as_bytes(), &PEPPER).unwrap();
        let key = format!("sk_live_acme_Secret{:08}", keys / 2);
        let bearer = format!("Bearer {key}");
        bench_decision(&policy, &format!("decide+act: Bearer sk_live_ ({keys} keys)"), &[("authorization", &bearer)]);
        bench_decision(&policy, &format!("decide+act: x-api-key ({keys} keys)"), &[("x-api-key", &key)]);
        bench_decision(
            &policy,
            &format!("decide+act: unknown key ({keys} keys)"),
            &[("x-api-key", "sk_live_acme_Nope")],
        );
    }
    let key = "sk_live_acme_Secret00000005";
    let limited = Policy::from_json(policy_with(10, "huge").as_bytes(), &PEPPER).unwrap();
    bench_decision(&limited, "decide+act: x-api-key + 2-bucket plan, admitted", &[("x-api-key", key)]);
    let limited = Policy::from_json(policy_with(10, "tiny").as_bytes(), &PEPPER).unwrap();
    bench_decision(&limited, "decide+act: x-api-key, rate limited (429)", &[("x-api-key", key)]);

    let policy = Policy::from_json(policy_json(10).as_bytes(), &PEPPER).unwrap();
    bench_decision(&policy, "decide+act: no credential (401)", &[]);
    bench_decision(&policy, "decide+act: ambiguous (400)", &[("x-api-key", "a"), ("x-api-key", "b")]);

    bench_jwt();
    bench_rate_limit_step();

    let json = policy_json(10_000);
    let mut samples = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        black_box(Policy::from_json(json.as_bytes(), &PEPPER).unwrap());
        samples.push(start.elapsed().as_secs_f64() * 1e3);
    }
    samples.sort_by(f64::total_cmp);
    println!("{:<48} {:>10.1} ms", "config compile, 10,000 keys", samples[2]);
}

/// Cached and uncached tokens. Off wasm RS256 and ES256 are checked in
/// software (jwt-simple); the module hands them to Envoy's BoringSSL, whose
/// cost `make bench` measures in Envoy.
fn bench_jwt() {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use jwt_simple::prelude::*;

    let b64 = |bytes: &[u8]| URL_SAFE_NO_PAD.encode(bytes);
    let rs = RS256KeyPair::generate(2048).unwrap().with_key_id("rs");
    let es = ES256KeyPair::generate().with_key_id("es");
    let rsa = rs.public_key().to_components();
    let point = es.public_key().public_key().to_bytes_uncompressed();
    let (x, y) = point[1..].split_at(32);
    let json = format!(
        r#"{{"jwt":{{"providers":[{{"name":"idp","issuer":"https://auth.example.com","audiences":["api"],
            "algorithms":["RS256","ES256"],"jwks":{{"keys":[
              {{"kty":"RSA","kid":"rs","n":"{}","e":"{}"}},
              {{"kty":"EC","kid":"es","crv":"P-256","x":"{}","y":"{}"}}]}}}}]}}}}"#,
        b64(&rsa.n),
        b64(&rsa.e),
        b64(x),
        b64(y)
    );
    let policy = Policy::from_json(json.as_bytes(), &PEPPER).unwrap();
    let claims = || {
        let custom =
            serde_json::json!({"org_id": "org_42", "accounts": ["acme"], "scope": "agents:read tasks:execute"});
        Claims::with_custom_claims(custom, Duration::from_hours(1))
            .with_issuer("https://auth.example.com")
            .with_audience("api")
            .with_subject("user-1")
    };
    let rs_raw = rs.sign(claims()).unwrap();
    let rs_token = format!("Bearer {rs_raw}");
    let es_token = format!("Bearer {}", es.sign(claims()).unwrap());
    measure(&format!("SHA-256 of an RS256 token ({} bytes)", rs_raw.len()), 100_000, || {
        black_box(TokenCache::hash(black_box(&rs_raw)));
    });
    bench_requests(&policy, "decide+act: RS256, cached", 100_000, &[("authorization", &rs_token)], Cache::Kept);
    bench_requests(&policy, "decide+act: ES256, cached", 100_000, &[("authorization", &es_token)], Cache::Kept);
    let label = "decide+act: RS256, uncached (software)";
    bench_requests(&policy, label, 200, &[("authorization", &rs_token)], Cache::Emptied);
    let label = "decide+act: ES256, uncached (software)";
    bench_requests(&policy, label, 200, &[("authorization", &es_token)], Cache::Emptied);
}

/// One charge of a two-bucket plan against the in-memory store.
fn bench_rate_limit_step() {
    use edge_auth::rate_limit::{charge, CallerId};

    let policy = Policy::from_json(policy_with(1, "huge").as_bytes(), &PEPPER).unwrap();
    let plan = policy.plans.get(policy.plans.id("huge").unwrap()).unwrap();
    let store = MemoryStore::default();
    let caller = CallerId::new(&Placement::shared(&store).unwrap(), b"k:key_0");
    let mut now_ns = 1_800_000_000_000_000_000u64;
    measure("rate-limit step: 2-bucket plan, admitted", 100_000, || {
        now_ns += 1_000;
        black_box(charge(&store, plan, caller, now_ns));
    });
}
