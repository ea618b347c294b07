//! Entry points for the fuzz targets (`fuzz/`) and for the regression test that
//! replays their corpus (`tests/fuzz_corpus.rs`). Each must never panic on any
//! input; the asserts are invariants, so a violation is a finding.

use crate::config;
use crate::credential::{self, Credential, Malformed, Prefixes, AUTHORIZATION, X_API_KEY};
use crate::decision::{decide, Request, Runtime, Verdict};
use crate::fetched::{self, Fetched, Kind};
use crate::jwt::{self, NoSignatureHost, TokenCache, VerifyKey};
use crate::policy::Policy;
use crate::rate_limit::Placement;
use crate::store::MemoryStore;
use crate::testing::EveryVar;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::cell::RefCell;
use std::sync::OnceLock;

const FUZZ_ENV: EveryVar = EveryVar("fuzz-pepper");

const HS_SECRET: &[u8] = b"fuzzing-hs256-secret-0123456789abcdef";

fn policy() -> &'static Policy {
    static POLICY: OnceLock<Policy> = OnceLock::new();
    POLICY.get_or_init(|| {
        let json = format!(
            r#"{{
              "api_keys": {{"keys": [
                {{"id":"k1","hash":"{}","org":"o","account":"acme","scopes":["a"],"plan":"p"}}],
                "revoked":["k2"]}},
              "jwt": {{"providers": [{{"name":"i","issuer":"https://issuer","audiences":["api"],
                "algorithms":["HS256"],"account_header":"x-account-id",
                "jwks":{{"keys":[{{"kty":"oct","kid":"h","k":"{}"}}]}}}}]}},
              "rate_limits": {{"plans": {{"p": [{{"name":"b","requests":3,"per_s":60}}]}}, "jwt_plan":"p"}},
              "routes": [{{"prefix":"/public","auth":"none"}},{{"prefix":"/opt","auth":"optional"}},
                         {{"prefix":"/s","scopes":["a"]}},{{"path":"/jwt","credentials":["jwt"]}}]
            }}"#,
            crate::api_key::KeyHasher::new(b"fuzz-pepper")
                .map(|h| h.hash("sk_live_acme_secret").to_hex())
                .unwrap_or_default(),
            URL_SAFE_NO_PAD.encode(HS_SECRET)
        );
        Policy::from_json(json.as_bytes(), &FUZZ_ENV).unwrap_or_else(|e| unreachable!("fuzz policy: {e}"))
    })
}

/// Header lines `name:value`, newline-separated; the first two lines are the
/// method and the path.
fn request_parts(data: &[u8]) -> (String, String, Vec<(String, Vec<u8>)>) {
    let mut lines = data.split(|&b| b == b'\n');
    let method = String::from_utf8_lossy(lines.next().unwrap_or_default()).into_owned();
    let path = String::from_utf8_lossy(lines.next().unwrap_or_default()).into_owned();
    let headers = lines
        .map(|line| match line.iter().position(|&b| b == b':') {
            Some(at) => {
                let (name, value) = line.split_at(at);
                (String::from_utf8_lossy(name).into_owned(), value.get(1..).unwrap_or_default().to_vec())
            }
            None => (String::from_utf8_lossy(line).into_owned(), Vec::new()),
        })
        .collect();
    (method, path, headers)
}

/// The credential grammar: never two credentials, never an unusable key.
pub fn credential(data: &[u8]) {
    let (_, _, headers) = request_parts(data);
    let prefixes = Prefixes {
        secret: vec!["sk_live_".into()],
        public: vec!["pk_live_".into()],
        opaque_bearer: data.first().is_some_and(|b| b % 2 == 1),
        session: Some("st_".into()),
    };
    let credentials = headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(AUTHORIZATION) || n.eq_ignore_ascii_case(X_API_KEY))
        .count();
    match credential::extract(&headers, &prefixes) {
        Ok(found) => {
            assert!(credentials <= 1, "accepted one of {credentials} credentials");
            assert_eq!(found.is_some(), credentials == 1);
            if let Some((Credential::ApiKey { key, prefix_account }, _)) = found {
                assert!(!key.is_empty() && !key.contains([' ', '\t', ',']), "unusable key accepted");
                if let Some(account) = prefix_account {
                    assert!(key.contains(account));
                }
            }
        }
        Err(Malformed::Ambiguous) => {}
        Err(_) => assert!(credentials >= 1),
    }
}

/// Request paths: the canonical form is a fixed point, starts with `/` (or
/// is `*`), and keeps no dot-segment, doubled slash or refused character.
pub fn path(data: &[u8]) {
    let raw = String::from_utf8_lossy(data);
    let Ok(canonical) = crate::path::canonical(&raw) else { return };
    assert_eq!(crate::path::canonical(&canonical).as_deref(), Ok(&*canonical), "not a fixed point");
    assert!(canonical.starts_with('/') || canonical == "*");
    for bad in ["//", "/./", "/../", "\\", ";"] {
        assert!(!canonical.contains(bad), "{canonical:?} keeps {bad:?}");
    }
}

/// The whole decision: never panics, same answer for the same request.
pub fn decision(data: &[u8]) {
    let (method, path, headers) = request_parts(data);
    let request = Request { method: &method, path: &path, headers: &headers };
    let run = || {
        let (store, tokens, fetched) = (MemoryStore::default(), RefCell::new(TokenCache::default()), Fetched::empty());
        let placement = Placement::shared(&store);
        let runtime = Runtime {
            now_ns: 1_800_000_000_000_000_000,
            store: &store,
            tokens: &tokens,
            fetched: &fetched,
            signatures: &NoSignatureHost,
            placement: placement.as_ref(),
        };
        match decide(policy(), &request, &runtime).verdict {
            Verdict::Allow(identity) => format!("{identity:?}"),
            Verdict::Deny(denial) => denial.code.as_str().to_owned(),
        }
    };
    assert_eq!(run(), run(), "the decision is not deterministic");
}

/// JWT verification on raw tokens, and on tokens whose header and payload are
/// fuzzed but correctly signed (so the claim checks are reached).
pub fn jwt(data: &[u8]) {
    let providers = &policy().jwt_providers;
    let keys: Vec<&VerifyKey> = providers.iter().flat_map(|p| p.keys.iter()).collect();
    let token = match data.split_first() {
        Some((0, raw)) => String::from_utf8_lossy(raw).into_owned(),
        _ => {
            let (header, payload) = match data.iter().position(|&b| b == 0xff) {
                Some(at) => (data.get(..at).unwrap_or_default(), data.get(at + 1..).unwrap_or_default()),
                None => (&br#"{"alg":"HS256","kid":"h"}"#[..], data),
            };
            let signing_input = format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(payload));
            let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(HS_SECRET) else { return };
            mac.update(signing_input.as_bytes());
            format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
        }
    };
    if let Ok(index) = jwt::provider_for(providers, &token) {
        let _ = jwt::verify(providers, index, &keys, &NoSignatureHost, &token, 1_800_000_000);
    }
}

/// Policy documents, as Envoy hands them to the filter.
pub fn policy_document(data: &[u8]) {
    let _ = Policy::from_json(data, &FUZZ_ENV);
    let _ = config::parse_doc(data);
}

/// Answers of key servers and JWKS endpoints.
pub fn source_answer(data: &[u8]) {
    let _ = fetched::parse(policy(), Kind::Keys, data);
    let _ = fetched::parse(policy(), Kind::Jwks(0), data);
}

fn sessions() -> &'static crate::session::Sessions {
    static SESSIONS: OnceLock<crate::session::Sessions> = OnceLock::new();
    SESSIONS.get_or_init(|| {
        let doc = config::SessionsDoc {
            path: "/api/session".into(),
            ttl_s: 3600,
            prefix: "st_".into(),
            key_env: "K".into(),
            previous_key_env: Some("K".into()),
        };
        crate::session::Sessions::compile(&doc, &EveryVar("fuzzing-session-key-0123456789abcdef"))
            .unwrap_or_else(|e| unreachable!("fuzz sessions: {e}"))
    })
}

/// Session tokens: raw text is checked without panicking, and a token
/// issued for a fuzzed key id verifies to that key id.
pub fn session_token(data: &[u8]) {
    let sessions = sessions();
    let text = String::from_utf8_lossy(data);
    let _ = sessions.verify(&text, 0);
    if let Some(token) = sessions.issue(&text, u64::MAX, [0; crate::session::NONCE_LEN]) {
        let claims = sessions.verify(&token, 0);
        if text.is_empty() {
            assert!(claims.is_err(), "a token without a key id verified");
        } else {
            assert_eq!(claims.map(|c| c.key_id), Ok(text.into_owned()), "an issued token does not verify");
        }
    }
}

/// Webhook signature headers in every format, and their check against a
/// body: never panics, and a forged header never passes.
pub fn signature_header(data: &[u8]) {
    use crate::config::SignatureFormatDoc;
    let (header, body) = match data.iter().position(|&b| b == b'\n') {
        Some(at) => (data.get(..at).unwrap_or_default(), data.get(at + 1..).unwrap_or_default()),
        None => (data, &[][..]),
    };
    let env = EveryVar("fuzzing-webhook-secret");
    for format in [SignatureFormatDoc::Hex, SignatureFormatDoc::Base64, SignatureFormatDoc::Timestamped] {
        let doc = config::WebhookDoc {
            name: "f".into(),
            header: "x-sig".into(),
            secret_env: "S".into(),
            format,
            tolerance_s: 300,
            max_body_bytes: 1 << 20,
        };
        let Some(hook) = crate::webhook::compile(&[doc], &env).ok().and_then(|mut h| h.pop()) else { return };
        if let Ok(signature) = crate::webhook::parse_signature(format, header) {
            let now = match &signature {
                crate::webhook::Signature::Timestamped { at, .. } => *at,
                crate::webhook::Signature::Body(_) => 0,
            };
            // Reaching a match means the fuzzer forged HMAC-SHA256.
            assert!(hook.verify(&signature, body, now).is_err() || header_is_genuine(format, header, body, now));
        }
    }
}

fn header_is_genuine(format: crate::config::SignatureFormatDoc, header: &[u8], body: &[u8], now: u64) -> bool {
    crate::webhook::sign(format, b"fuzzing-webhook-secret", body, now).is_some_and(|signed| {
        String::from_utf8_lossy(header).to_ascii_lowercase().contains(&signed.to_ascii_lowercase())
    })
}
