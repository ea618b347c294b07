//! The verifier against real signatures and the known JOSE attacks.

use super::*;
use crate::config::{ConfigError, Environment};
use crate::policy::Policy;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use jwt_simple::algorithms::P256PublicKey;
use jwt_simple::prelude::*;
use sha2::Sha256;

fn parse(json: &[u8], env: &dyn Environment) -> Result<Policy, ConfigError> {
    Policy::from_json(json, env)
}

struct NoEnv;
impl Environment for NoEnv {
    fn var(&self, _: &str) -> Option<String> {
        None
    }
}

const NOW: u64 = 1_800_000_000;
const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-hs256-test-secret";

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

struct Keys {
    es: ES256KeyPair,
    rs: RS256KeyPair,
}

fn keys() -> &'static Keys {
    static KEYS: std::sync::OnceLock<Keys> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| Keys {
        es: ES256KeyPair::generate().with_key_id("es"),
        rs: RS256KeyPair::generate(2048).unwrap().with_key_id("rs"),
    })
}

fn providers(extra: &str) -> Vec<Provider> {
    let k = keys();
    let point = P256PublicKey::from_pem(&k.es.public_key().to_pem().unwrap()).unwrap().to_bytes_uncompressed();
    let (x, y) = point[1..].split_at(32);
    let rsa = k.rs.public_key().to_components();
    let json = format!(
        r#"{{"jwt":{{"providers":[{{
            "name":"console","issuer":"https://auth.example.com","audiences":["api"],
            "algorithms":["HS256","RS256","ES256"],
            "jwks":{{"keys":[
              {{"kty":"oct","kid":"hs","k":"{}"}},
              {{"kty":"EC","kid":"es","crv":"P-256","x":"{}","y":"{}"}},
              {{"kty":"RSA","kid":"rs","n":"{}","e":"{}"}}]}}
            {extra}}}]}}}}"#,
        b64(SECRET),
        b64(x),
        b64(y),
        b64(&rsa.n),
        b64(&rsa.e)
    );
    parse(json.as_bytes(), &NoEnv).unwrap().jwt_providers
}

fn claims() -> JWTClaims<serde_json::Value> {
    let custom =
        serde_json::json!({"org_id": "org_42", "accounts": ["acme", "beta"], "scope": "agents:read tasks:execute"});
    Claims::with_custom_claims(custom, Duration::from_secs(600))
        .with_issuer("https://auth.example.com")
        .with_audience("api")
        .with_subject("user-1")
}

fn at_now(mut c: JWTClaims<serde_json::Value>) -> JWTClaims<serde_json::Value> {
    c.issued_at = Some(UnixTimeStamp::from_secs(NOW));
    c.invalid_before = Some(UnixTimeStamp::from_secs(NOW));
    c.expires_at = Some(UnixTimeStamp::from_secs(NOW + 600));
    c
}

/// A token with any header and payload, signed HS256 with `SECRET`.
fn forge(header: &str, payload: &serde_json::Value) -> String {
    forge_text(header, &payload.to_string())
}

/// As `forge`, with the payload as JSON text serde_json would never write
/// (repeated members, `1.5e0`).
fn forge_text(header: &str, payload: &str) -> String {
    let signing_input = format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()));
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET).unwrap();
    mac.update(signing_input.as_bytes());
    format!("{signing_input}.{}", b64(&mac.finalize().into_bytes()))
}

fn payload() -> serde_json::Value {
    serde_json::json!({"iss":"https://auth.example.com","aud":"api","sub":"user-1","exp":NOW+600,"iat":NOW,"org_id":"org_42"})
}

fn check(providers: &[Provider], token: &str, now: u64) -> Result<VerifiedToken, TokenError> {
    let index = provider_for(providers, token)?;
    let keys: Vec<&VerifyKey> = providers[index].keys.iter().collect();
    verify(providers, index, &keys, &NoSignatureHost, token, now)
}

#[test]
fn valid_tokens_of_each_algorithm_verify_with_their_claims() {
    let p = providers("");
    let k = keys();
    let hs = HS256Key::from_bytes(SECRET).with_key_id("hs").authenticate(at_now(claims())).unwrap();
    let es = k.es.sign(at_now(claims())).unwrap();
    let rs = k.rs.sign(at_now(claims())).unwrap();
    for token in [hs, es, rs] {
        let v = check(&p, &token, NOW).unwrap();
        assert_eq!(v.subject, "user-1");
        assert_eq!(v.org.as_deref(), Some("org_42"));
        assert_eq!(v.accounts, Some(vec!["acme".to_owned(), "beta".to_owned()]));
        assert_eq!(v.scopes, "agents:read tasks:execute");
        assert_eq!(v.expires_at, NOW + 600);
    }
    // Without a kid, the keys of the token's algorithm are tried.
    assert!(check(&p, &forge(r#"{"alg":"HS256"}"#, &payload()), NOW).is_ok());
}

#[test]
fn none_in_any_spelling_is_refused() {
    let p = providers("");
    for alg in ["none", "None", "NONE", "nOnE"] {
        let body = b64(payload().to_string().as_bytes());
        let unsigned = format!("{}.{body}.", b64(format!(r#"{{"alg":"{alg}"}}"#).as_bytes()));
        assert_eq!(check(&p, &unsigned, NOW), Err(TokenError::Invalid(Rejection::AlgorithmNotAllowed)), "{alg}");
        // Signed with the provider's real HMAC key, naming it: still refused.
        let signed = forge(&format!(r#"{{"alg":"{alg}","kid":"hs"}}"#), &payload());
        assert_eq!(check(&p, &signed, NOW), Err(TokenError::Invalid(Rejection::AlgorithmNotAllowed)), "{alg}");
    }
}

#[test]
fn algorithm_confusion_is_refused() {
    let p = providers("");
    // HS256 keyed with the RSA public key's bytes, naming the RSA key.
    let rsa_n = keys().rs.public_key().to_components().n;
    let token = {
        let signing_input =
            format!("{}.{}", b64(br#"{"alg":"HS256","kid":"rs"}"#), b64(payload().to_string().as_bytes()));
        let mut mac = Hmac::<Sha256>::new_from_slice(&rsa_n).unwrap();
        mac.update(signing_input.as_bytes());
        format!("{signing_input}.{}", b64(&mac.finalize().into_bytes()))
    };
    assert_eq!(check(&p, &token, NOW), Err(TokenError::Invalid(Rejection::BadSignature)));
    // An algorithm the provider does not allow.
    let hs_only = {
        let mut p = providers("");
        p[0].algorithms = vec![Algorithm::Rs256];
        p
    };
    assert_eq!(
        check(&hs_only, &forge(r#"{"alg":"HS256","kid":"hs"}"#, &payload()), NOW),
        Err(TokenError::Invalid(Rejection::AlgorithmNotAllowed))
    );
}

#[test]
fn header_attacks_are_refused() {
    let p = providers("");
    let cases = [
        (r#"{"alg":"HS256","kid":"hs","jwk":{"kty":"oct","k":"AAAA"}}"#, Rejection::KeyCarriedInToken),
        (r#"{"alg":"HS256","kid":"hs","jku":"https://evil.example/jwks"}"#, Rejection::KeyCarriedInToken),
        (r#"{"alg":"HS256","kid":"hs","x5u":"https://evil.example/cert"}"#, Rejection::KeyCarriedInToken),
        (r#"{"alg":"HS256","kid":"hs","x5c":["MIIB"]}"#, Rejection::KeyCarriedInToken),
        (r#"{"alg":"HS256","kid":"hs","crit":["exp"]}"#, Rejection::CriticalExtension),
        (r#"{"alg":"HS256","alg":"none","kid":"hs"}"#, Rejection::DuplicateMember),
        (r#"{"alg":"HS256","kid":"es"}"#, Rejection::BadSignature),
    ];
    for (header, why) in cases {
        assert_eq!(check(&p, &forge(header, &payload()), NOW), Err(TokenError::Invalid(why)), "{header}");
    }
    assert_eq!(
        check(&p, &forge(r#"{"alg":"HS256","kid":"../../etc/passwd"}"#, &payload()), NOW),
        Err(TokenError::UnknownKid)
    );
    // An empty crit list is harmless.
    assert!(check(&p, &forge(r#"{"alg":"HS256","kid":"hs","crit":[]}"#, &payload()), NOW).is_ok());
}

#[test]
fn signature_tampering_is_refused() {
    let p = providers("");
    let token = keys().es.sign(at_now(claims())).unwrap();
    let (signed, signature) = token.rsplit_once('.').unwrap();
    assert!(check(&p, &format!("{signed}."), NOW).is_err());
    let zeroed = b64(&vec![0u8; URL_SAFE_NO_PAD.decode(signature).unwrap().len()]);
    assert!(check(&p, &format!("{signed}.{zeroed}"), NOW).is_err());
    // Another payload under the same signature.
    let mut other = payload();
    other["sub"] = "admin".into();
    let forged = format!("{}.{}.{signature}", signed.split('.').next().unwrap(), b64(other.to_string().as_bytes()));
    assert!(check(&p, &forged, NOW).is_err());
}

#[test]
fn claims_are_judged_in_the_decision_table_order() {
    let p = providers("");
    let with = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut body = payload();
        edit(&mut body);
        check(&p, &forge(r#"{"alg":"HS256","kid":"hs"}"#, &body), NOW)
    };
    assert_eq!(with(&|b| b["aud"] = "other".into()), Err(TokenError::Invalid(Rejection::AudienceMismatch)));
    assert!(with(&|b| b["aud"] = serde_json::json!(["other", "api"])).is_ok());
    assert_eq!(with(&|b| b["iss"] = "https://evil.example".into()), Err(TokenError::Invalid(Rejection::UnknownIssuer)));
    assert_eq!(with(&|b| b["nbf"] = (NOW + 61).into()), Err(TokenError::Invalid(Rejection::NotYetValid)));
    assert!(with(&|b| b["nbf"] = (NOW + 60).into()).is_ok(), "within the 60 s skew");
    assert_eq!(with(&|b| b["iat"] = (NOW + 3600).into()), Err(TokenError::Invalid(Rejection::IssuedInFuture)));
    assert_eq!(with(&|b| b["exp"] = (NOW - 61).into()), Err(TokenError::Expired));
    assert!(with(&|b| b["exp"] = (NOW - 60).into()).is_ok(), "within the 60 s skew");
    assert_eq!(
        with(&|b| {
            b["exp"] = (NOW - 3600).into();
            b["aud"] = "other".into();
        }),
        Err(TokenError::Invalid(Rejection::AudienceMismatch)),
        "invalid (row 9) answers before expired (row 10)"
    );
    assert_eq!(
        with(&|b| b.as_object_mut().unwrap().remove("exp").map(drop).unwrap()),
        Err(TokenError::Invalid(Rejection::MissingExp))
    );
    assert_eq!(with(&|b| b["exp"] = "tomorrow".into()), Err(TokenError::Invalid(Rejection::BadTimeClaim)));
    assert_eq!(
        with(&|b| b["org_id"] = serde_json::json!({"a": 1})),
        Err(TokenError::Invalid(Rejection::UnusableClaim(Claim::Org)))
    );
    assert_eq!(
        with(&|b| b["org_id"] = "evil\r\nx-admin: 1".into()),
        Err(TokenError::Invalid(Rejection::UnusableClaim(Claim::Org)))
    );
    assert_eq!(
        with(&|b| b["accounts"] = "acme".into()),
        Err(TokenError::Invalid(Rejection::UnusableClaim(Claim::Accounts)))
    );
    assert_eq!(with(&|b| b["scope"] = serde_json::json!(["a", "b"])).map(|v| v.scopes), Ok("a b".to_owned()));
    assert_eq!(
        with(&|b| b.as_object_mut().unwrap().remove("sub").map(drop).unwrap()),
        Err(TokenError::Invalid(Rejection::MissingSub))
    );
}

#[test]
fn garbage_never_panics() {
    let p = providers("");
    for token in ["", ".", "..", "a.b.c", "e30.e30.", "eyJhbGciOiJIUzI1NiJ9.!!!.x", &"a".repeat(9000)] {
        let _ = check(&p, token, NOW);
    }
}

/// A host that answers as told and records what it was asked.
struct FakeHost {
    answer: Option<bool>,
    calls: std::cell::RefCell<Vec<Vec<u8>>>,
}

impl SignatureHost for FakeHost {
    fn verify_sha256(&self, _der: &[u8], _message: &[u8], signature: &[u8]) -> Option<bool> {
        self.calls.borrow_mut().push(signature.to_vec());
        self.answer
    }
}

fn with_host(providers: &[Provider], token: &str, host: &FakeHost) -> Result<VerifiedToken, TokenError> {
    let index = provider_for(providers, token)?;
    let keys: Vec<&VerifyKey> = providers[index].keys.iter().collect();
    verify(providers, index, &keys, host, token, NOW)
}

#[test]
fn the_host_decides_rsa_and_ec_signatures_when_it_can() {
    let p = providers("");
    let es = keys().es.sign(at_now(claims())).unwrap();
    let rs = keys().rs.sign(at_now(claims())).unwrap();
    for token in [&es, &rs] {
        let refusing = FakeHost { answer: Some(false), calls: Default::default() };
        assert_eq!(with_host(&p, token, &refusing), Err(TokenError::Invalid(Rejection::BadSignature)));
        let accepting = FakeHost { answer: Some(true), calls: Default::default() };
        assert_eq!(with_host(&p, token, &accepting).map(|v| v.subject), Ok("user-1".to_owned()));
        // Claims are still judged after the host's yes.
        assert_eq!(check_later(&p, token, &accepting), Err(TokenError::Expired));
        let absent = FakeHost { answer: None, calls: Default::default() };
        assert!(with_host(&p, token, &absent).is_ok(), "falls back to wasm");
    }
    // ECDSA reaches the host DER-encoded, RSA as is.
    let accepting = FakeHost { answer: Some(true), calls: Default::default() };
    with_host(&p, &es, &accepting).unwrap();
    with_host(&p, &rs, &accepting).unwrap();
    let calls = accepting.calls.borrow();
    assert_eq!(calls[0][0], 0x30, "DER SEQUENCE");
    assert_eq!(calls[1].len(), 256, "2048-bit RSA signature");
}

fn check_later(p: &[Provider], token: &str, host: &FakeHost) -> Result<VerifiedToken, TokenError> {
    let index = provider_for(p, token)?;
    let keys: Vec<&VerifyKey> = p[index].keys.iter().collect();
    verify(p, index, &keys, host, token, NOW + 3_600)
}

#[test]
fn hmac_never_goes_to_the_host_and_typ_must_say_jwt() {
    let p = providers("");
    let host = FakeHost { answer: Some(false), calls: Default::default() };
    assert!(with_host(&p, &forge(r#"{"alg":"HS256","kid":"hs"}"#, &payload()), &host).is_ok());
    assert!(host.calls.borrow().is_empty());
    assert!(with_host(&p, &forge(r#"{"alg":"HS256","kid":"hs","typ":"at+jwt"}"#, &payload()), &host).is_ok());
    assert_eq!(
        with_host(&p, &forge(r#"{"alg":"HS256","kid":"hs","typ":"JOSE"}"#, &payload()), &host),
        Err(TokenError::Invalid(Rejection::NotAJwt))
    );
}

/// RFC 7515 Appendix A.1 (HS256) and A.3 (ES256): published keys and tokens.
/// The payload has no `sub`, so a token whose signature verifies is refused
/// for that reason, and a wrong signature as a bad signature.
#[test]
fn rfc7515_examples_verify() {
    let json = r#"{"jwt":{"providers":[{"name":"rfc","issuer":"joe","algorithms":["HS256","ES256"],
        "jwks":{"keys":[
          {"kty":"oct","k":"AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow"},
          {"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}}]}}"#;
    let p = parse(json.as_bytes(), &NoEnv).unwrap().jwt_providers;
    let payload = "eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ";
    let a1 = format!("eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9.{payload}.dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk");
    let a3 = format!(
        "eyJhbGciOiJFUzI1NiJ9.{payload}.DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q"
    );
    let before_exp = 1_300_819_000;
    for token in [&a1, &a3] {
        let keys: Vec<&VerifyKey> = p[0].keys.iter().collect();
        assert_eq!(
            verify(&p, 0, &keys, &NoSignatureHost, token, before_exp),
            Err(TokenError::Invalid(Rejection::MissingSub))
        );
        let tampered = token.replacen(".eyJpc3MiOiJqb2Ui", ".eyJpc3MiOiJqb2Ki", 1);
        assert_eq!(
            verify(&p, 0, &keys, &NoSignatureHost, &tampered, before_exp),
            Err(TokenError::Invalid(Rejection::BadSignature))
        );
    }
}

#[test]
fn only_providers_admitting_rsa_or_ecdsa_need_the_hosts_verifier() {
    let json = |algs: &str| {
        format!(
            r#"{{"jwt":{{"providers":[{{"name":"p","issuer":"i","algorithms":{algs},
                "jwks":{{"keys":[{{"kty":"oct","kid":"hs","k":"{}"}}]}}}}]}}}}"#,
            b64(SECRET)
        )
    };
    let needs = |algs: &str| parse(json(algs).as_bytes(), &NoEnv).unwrap().jwt_providers[0].needs_host_signatures();
    assert!(!needs(r#"["HS256"]"#));
    assert!(needs(r#"["HS256","ES256"]"#));
    assert!(needs(r#"["RS256"]"#));
}

/// The payload of `payload()` as text with `members` appended (`exp` left out).
fn claims_text(members: &str) -> String {
    format!(r#"{{"iss":"https://auth.example.com","aud":"api","sub":"user-1","iat":{NOW}{members}}}"#)
}

fn check_text(p: &[Provider], payload: &str) -> Result<VerifiedToken, TokenError> {
    let token = forge_text(r#"{"alg":"HS256","kid":"hs"}"#, payload);
    // Straight to `verify` too, so the claims check is not just `provider_for`'s.
    let keys: Vec<&VerifyKey> = p[0].keys.iter().collect();
    let direct = verify(p, 0, &keys, &NoSignatureHost, &token, NOW);
    let routed = check(p, &token, NOW);
    assert_eq!(direct, routed, "{payload}");
    direct
}

#[test]
fn repeated_members_are_refused_in_header_and_claims() {
    let p = providers("");
    let exp = format!(r#","exp":{}"#, NOW + 600);
    let invalid = |why| Err(TokenError::Invalid(why));
    for header in [
        r#"{"alg":"HS256","kid":"hs","kid":"hs"}"#,
        r#"{"alg":"HS256","kid":"hs","crit":[],"crit":[]}"#,
        r#"{"alg":"HS256","a\u006cg":"HS256","kid":"hs"}"#,
    ] {
        assert_eq!(check(&p, &forge_text(header, &claims_text(&exp)), NOW), invalid(Rejection::DuplicateMember));
    }
    assert!(check_text(&p, &claims_text(&exp)).is_ok());
    assert_eq!(check_text(&p, &claims_text(&format!(r#"{exp},"sub":"admin""#))), invalid(Rejection::DuplicateMember));
    assert_eq!(check_text(&p, &claims_text(&format!("{exp}{exp}"))), invalid(Rejection::DuplicateMember));
    assert_eq!(
        check_text(&p, &claims_text(&format!(r#"{exp},"org_id":"a","org_id":"b""#))),
        invalid(Rejection::DuplicateMember)
    );
    // Repeats inside a nested value are not members of the claims set.
    assert!(check_text(&p, &claims_text(&format!(r#"{exp},"extra":{{"a":1,"a":2}}"#))).is_ok());
}

#[test]
fn time_claims_are_integers_in_range() {
    let p = providers("");
    let invalid = Err(TokenError::Invalid(Rejection::BadTimeClaim));
    for exp in ["1.5", "\"123\"", "1e30", "1800000600.0", "1.8000006e9", "253402300800", "18446744073709551615", "null"]
    {
        assert_eq!(check_text(&p, &claims_text(&format!(r#","exp":{exp}"#))), invalid, "exp {exp}");
    }
    for (claim, value) in [("nbf", "-1"), ("iat", "-5"), ("nbf", "1.5"), ("iat", "\"0\""), ("nbf", "1e30")] {
        let text = format!(
            r#"{{"iss":"https://auth.example.com","aud":"api","sub":"user-1","exp":{},"{claim}":{value}}}"#,
            NOW + 600
        );
        assert_eq!(check_text(&p, &text), invalid, "{claim} {value}");
    }
    // The last second of year 9999 is still a time.
    assert!(check_text(&p, &claims_text(r#","exp":253402300799"#)).is_ok());
    assert_eq!(check_text(&p, &claims_text("")), Err(TokenError::Invalid(Rejection::MissingExp)));
}

#[test]
fn a_negative_exp_is_expired_never_far_future() {
    let p = providers("");
    for exp in ["-1", "-9223372036854775808", "0"] {
        assert_eq!(check_text(&p, &claims_text(&format!(r#","exp":{exp}"#))), Err(TokenError::Expired), "exp {exp}");
    }
    // Still invalid (row 9) before expired (row 10).
    let text = claims_text(r#","exp":-1"#).replace(r#""aud":"api""#, r#""aud":"other""#);
    assert_eq!(check_text(&p, &text), Err(TokenError::Invalid(Rejection::AudienceMismatch)));
    // The same through each algorithm's signature path (jwt-simple casts -1 to u64::MAX).
    let mut c = at_now(claims());
    c.expires_at = None;
    c.custom["exp"] = (-1).into();
    let k = keys();
    for token in [k.es.sign(c.clone()).unwrap(), k.rs.sign(c).unwrap()] {
        assert_eq!(check(&p, &token, NOW), Err(TokenError::Expired));
    }
}

#[test]
fn sub_is_required_non_empty_and_header_safe() {
    let p = providers("");
    let exp = format!(r#","exp":{}"#, NOW + 600);
    let with_sub = |sub: &str| check_text(&p, &claims_text(&exp).replace(r#""sub":"user-1""#, sub));
    assert_eq!(with_sub(r#""sub":"""#), Err(TokenError::Invalid(Rejection::MissingSub)));
    assert_eq!(with_sub(r#""x":1"#), Err(TokenError::Invalid(Rejection::MissingSub)));
    for sub in [r#""sub":5"#, r#""sub":null"#, r#""sub":"a b""#, r#""sub":"evil\r\nx-admin: 1""#, r#""sub":"é""#] {
        assert_eq!(with_sub(sub), Err(TokenError::Invalid(Rejection::UnusableClaim(Claim::Sub))), "{sub}");
    }
    assert_eq!(
        with_sub(r#""sub":"auth0|5f7c8ec7c33c6c004bbafe82""#).map(|v| v.subject).as_deref(),
        Ok("auth0|5f7c8ec7c33c6c004bbafe82")
    );
}

#[test]
fn malformed_tokens_get_their_reason() {
    let p = providers("");
    let good = forge(r#"{"alg":"HS256","kid":"hs"}"#, &payload());
    let (signed, tag) = good.rsplit_once('.').unwrap();
    let keys: Vec<&VerifyKey> = p[0].keys.iter().collect();
    let reason = |token: &str| verify(&p, 0, &keys, &NoSignatureHost, token, NOW);
    let invalid = |why| Err(TokenError::Invalid(why));
    assert_eq!(reason(&format!("{good}.")), invalid(Rejection::NotCompact));
    assert_eq!(reason(signed), invalid(Rejection::NotCompact));
    assert_eq!(reason(&format!("{signed}.{tag}=")), invalid(Rejection::BadBase64));
    assert_eq!(
        reason(&format!("{signed}.{}", b64(&URL_SAFE_NO_PAD.decode(tag).unwrap()[..16]))),
        invalid(Rejection::BadSignature),
        "truncated tag"
    );
    assert_eq!(reason(&forge_text("[]", &payload().to_string())), invalid(Rejection::BadJson));
    assert_eq!(reason(&forge_text(r#"{"alg":"HS256"} x"#, &payload().to_string())), invalid(Rejection::BadJson));
    assert_eq!(reason(&forge_text(r#"{"alg":["HS256"]}"#, &payload().to_string())), invalid(Rejection::BadHeader));
    assert_eq!(
        reason(&forge_text(r#"{"alg":"HS256","kid":7}"#, &payload().to_string())),
        invalid(Rejection::BadHeader)
    );
    assert_eq!(
        reason(&forge_text(r#"{"alg":"HS256","crit":"b64"}"#, &payload().to_string())),
        invalid(Rejection::CriticalExtension)
    );
    assert_eq!(reason(&forge_text(r#"{"alg":"HS256"}"#, "[1]")), invalid(Rejection::BadJson));
    assert_eq!(reason(&"a".repeat(9000)), invalid(Rejection::TooLong));
    assert_eq!(
        check(&p, &forge_text(r#"{"alg":"HS256"}"#, r#"{"iss":1}"#), NOW),
        invalid(Rejection::UnusableClaim(Claim::Iss))
    );
    assert_eq!(check(&p, &forge_text(r#"{"alg":"HS256"}"#, r#"{"sub":"x"}"#), NOW), invalid(Rejection::NoIssuer));
    let mut aud = payload();
    aud["aud"] = serde_json::json!(["api", 1]);
    assert_eq!(reason(&forge(r#"{"alg":"HS256"}"#, &aud)), invalid(Rejection::UnusableClaim(Claim::Aud)));
}

#[test]
fn reasons_read_as_short_phrases() {
    assert_eq!(TokenError::Invalid(Rejection::DuplicateMember).to_string(), "duplicate json member");
    assert_eq!(TokenError::Invalid(Rejection::UnusableClaim(Claim::Accounts)).to_string(), "unusable accounts claim");
    assert_eq!(TokenError::Expired.to_string(), "expired");
    assert_eq!(TokenError::UnknownKid.to_string(), "unknown kid");
}

#[test]
fn verify_jws_checks_header_and_signature_of_any_payload() {
    let p = providers("");
    let keys: Vec<&VerifyKey> = p[0].keys.iter().collect();
    let token = forge_text(r#"{"alg":"HS256","kid":"hs"}"#, "foo");
    assert_eq!(verify_jws(&[Algorithm::Hs256], &keys, &NoSignatureHost, &token), Ok(b"foo".to_vec()));
    assert_eq!(
        verify_jws(&[Algorithm::Es256], &keys, &NoSignatureHost, &token),
        Err(TokenError::Invalid(Rejection::AlgorithmNotAllowed))
    );
    // ES256 in software, over a raw payload.
    let signing_input = format!("{}.{}", b64(br#"{"alg":"ES256","kid":"es"}"#), b64(b"foo"));
    let signature: p256::ecdsa::Signature =
        p256::ecdsa::signature::Signer::sign(keys_es_signing(), signing_input.as_bytes());
    let es = format!("{signing_input}.{}", b64(&signature.to_bytes()));
    assert_eq!(verify_jws(&[Algorithm::Es256], &keys, &NoSignatureHost, &es), Ok(b"foo".to_vec()));
}

fn keys_es_signing() -> &'static p256::ecdsa::SigningKey {
    keys().es.key_pair().as_ref()
}
