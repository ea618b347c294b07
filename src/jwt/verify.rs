//! Verifying a compact JWS against a provider.
//!
//! The header is read here, strictly, before any key is touched: the
//! provider's algorithm list and the key's own type decide the algorithm,
//! keys or URLs carried in the token are refused, and so is any `crit`.
//! Then the signature is checked over the signing input alone, and only then
//! are the claims parsed (strictly, here: jwt-simple would cast `-1` or `1e30`
//! to a far-future `u64`) and judged in the order of the contract's decision
//! table (invalid before expired).

use super::error::{Claim, Rejection, TokenError};
use super::{Algorithm, KeyImpl, Provider, SignatureHost, VerifyKey};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jwt_simple::prelude::MACLike;
#[cfg(not(target_arch = "wasm32"))]
use jwt_simple::prelude::{ECDSAP256PublicKeyLike, RSAPublicKeyLike, VerificationOptions};
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::fmt;
use subtle::ConstantTimeEq;

/// Longest token accepted; the credential grammar caps header values at 8 KiB.
const MAX_TOKEN_LEN: usize = 8 * 1024;

/// Latest accepted `exp`/`nbf`/`iat`: the last second of year 9999. Anything
/// later is an encoding error, not a lifetime.
const MAX_TIME_S: i64 = 253_402_300_799;

/// Header members that carry a key or point at one; the token never chooses its key.
const CARRIED_KEYS: [&str; 6] = ["jwk", "jku", "x5u", "x5c", "x5t", "x5t#S256"];

/// The verified facts of a token, as the filter uses them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    pub provider: usize,
    pub subject: String,
    pub org: Option<String>,
    /// The `accounts_claim`, when the token has one.
    pub accounts: Option<Vec<String>>,
    /// Space-joined.
    pub scopes: String,
    /// Unix seconds.
    pub expires_at: u64,
}

/// A JSON object read member by member, so that a repeated member is seen
/// (serde_json's maps keep the last one silently).
struct StrictObject {
    members: Map<String, Value>,
    duplicate: bool,
}

impl<'de> Deserialize<'de> for StrictObject {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Members;
        impl<'de> Visitor<'de> for Members {
            type Value = StrictObject;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<StrictObject, A::Error> {
                let mut object = StrictObject { members: Map::new(), duplicate: false };
                while let Some(name) = access.next_key::<String>()? {
                    let value = access.next_value::<Value>()?;
                    object.duplicate |= object.members.insert(name, value).is_some();
                }
                Ok(object)
            }
        }
        deserializer.deserialize_map(Members)
    }
}

/// A base64url part holding a JSON object with unique top-level members.
fn decode_object(part: &str) -> Result<Map<String, Value>, Rejection> {
    let bytes = URL_SAFE_NO_PAD.decode(part).map_err(|_| Rejection::BadBase64)?;
    object_from_json(&bytes)
}

fn object_from_json(bytes: &[u8]) -> Result<Map<String, Value>, Rejection> {
    let object: StrictObject = serde_json::from_slice(bytes).map_err(|_| Rejection::BadJson)?;
    if object.duplicate {
        return Err(Rejection::DuplicateMember);
    }
    Ok(object.members)
}

/// The three parts of a compact JWS.
struct Parts<'t> {
    header: &'t str,
    payload: &'t str,
    signature: &'t str,
}

impl<'t> Parts<'t> {
    fn of(token: &'t str) -> Result<Self, Rejection> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(Rejection::TooLong);
        }
        let mut parts = token.split('.');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(header), Some(payload), Some(signature), None) => Ok(Self { header, payload, signature }),
            _ => Err(Rejection::NotCompact),
        }
    }

    /// What the signature covers: `header.payload` as sent.
    fn signed(&self, token: &'t str) -> &'t str {
        token.get(..self.header.len() + 1 + self.payload.len()).unwrap_or_default()
    }
}

/// The provider named by the token's (still unverified) `iss`.
pub fn provider_for(providers: &[Provider], token: &str) -> Result<usize, TokenError> {
    let claims = decode_object(Parts::of(token)?.payload)?;
    let iss = match claims.get("iss") {
        None => return Err(Rejection::NoIssuer.into()),
        Some(Value::String(iss)) => iss,
        Some(_) => return Err(Rejection::UnusableClaim(Claim::Iss).into()),
    };
    providers.iter().position(|p| &p.issuer == iss).ok_or(Rejection::UnknownIssuer.into())
}

/// Verifies `token` against provider `index` and its current `keys` (inline
/// and fetched) at `now_s` (Unix seconds).
pub fn verify(
    providers: &[Provider],
    index: usize,
    keys: &[&VerifyKey],
    host: &dyn SignatureHost,
    token: &str,
    now_s: u64,
) -> Result<VerifiedToken, TokenError> {
    let provider = providers.get(index).ok_or(Rejection::UnknownIssuer)?;
    let payload = authenticate(&provider.algorithms, keys, host, token)?;
    judge(provider, index, object_from_json(&payload)?, now_s)
}

/// The payload of a compact JWS whose header passes and whose signature one of
/// `keys` verifies, without judging claims: the layer that test vectors with
/// non-JWT payloads exercise. Off wasm, software RS256 (jwt-simple) still
/// needs a JSON claims set; pass a host to check other payloads.
#[doc(hidden)]
pub fn verify_jws(
    algorithms: &[Algorithm],
    keys: &[&VerifyKey],
    host: &dyn SignatureHost,
    token: &str,
) -> Result<Vec<u8>, TokenError> {
    authenticate(algorithms, keys, host, token)
}

/// Header checks, then the signature; the decoded payload if both pass.
fn authenticate(
    algorithms: &[Algorithm],
    keys: &[&VerifyKey],
    host: &dyn SignatureHost,
    token: &str,
) -> Result<Vec<u8>, TokenError> {
    let parts = Parts::of(token)?;
    let header = decode_object(parts.header)?;
    if CARRIED_KEYS.iter().any(|name| header.contains_key(*name)) {
        return Err(Rejection::KeyCarriedInToken.into());
    }
    match header.get("crit") {
        None => {}
        Some(Value::Array(crit)) if crit.is_empty() => {}
        Some(_) => return Err(Rejection::CriticalExtension.into()),
    }
    // As jwt-simple: a `typ`, if any, must say JWT (`JWT`, `at+jwt`, …).
    match header.get("typ") {
        None => {}
        Some(Value::String(typ)) => {
            let typ = typ.to_ascii_uppercase();
            if typ != "JWT" && !typ.ends_with("+JWT") {
                return Err(Rejection::NotAJwt.into());
            }
        }
        Some(_) => return Err(Rejection::BadHeader.into()),
    }
    // Exact, case-sensitive names only: "none", "None", "nOnE" all fail here.
    let alg = match header.get("alg") {
        Some(Value::String(alg)) => {
            Algorithm::parse(alg).filter(|alg| algorithms.contains(alg)).ok_or(Rejection::AlgorithmNotAllowed)?
        }
        _ => return Err(Rejection::BadHeader.into()),
    };
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.as_str()),
        Some(_) => return Err(Rejection::BadHeader.into()),
    };
    let payload = URL_SAFE_NO_PAD.decode(parts.payload).map_err(|_| Rejection::BadBase64)?;
    let signature = URL_SAFE_NO_PAD.decode(parts.signature).map_err(|_| Rejection::BadBase64)?;
    let candidates: Vec<&VerifyKey> = match kid {
        Some(kid) => keys.iter().copied().filter(|k| k.kid.as_deref() == Some(kid)).collect(),
        None => keys.to_vec(),
    };
    if candidates.is_empty() {
        return Err(if kid.is_some() { TokenError::UnknownKid } else { Rejection::NoKey.into() });
    }
    // The key's type pins the algorithm; a token cannot pick another.
    let signed = parts.signed(token);
    let verified = candidates
        .iter()
        .filter(|key| key.algorithm() == alg)
        .any(|key| check_signature(key, host, Some(token), signed.as_bytes(), &signature));
    if !verified {
        return Err(Rejection::BadSignature.into());
    }
    Ok(payload)
}

/// Whether `key` signed `message`, by the same code as tokens: for test
/// vectors of the bare signature schemes. Off wasm, RSA without a host is
/// refused here, since jwt-simple checks RSA only as a whole token.
#[doc(hidden)]
pub fn verify_signature(key: &VerifyKey, host: &dyn SignatureHost, message: &[u8], signature: &[u8]) -> bool {
    check_signature(key, host, None, message, signature)
}

/// Whether `key` signed `signed` (of `token`, if it is one). RSA and EC
/// signatures go to the host when it can check them; HMAC, and off wasm
/// everything else, are checked here.
fn check_signature(
    key: &VerifyKey,
    host: &dyn SignatureHost,
    token: Option<&str>,
    signed: &[u8],
    signature: &[u8],
) -> bool {
    if let Some(der) = &key.der {
        let answer = match key.algorithm() {
            // JWS carries r‖s; the host expects ASN.1 DER.
            Algorithm::Es256 => match p256::ecdsa::Signature::from_slice(signature) {
                Ok(rs) => host.verify_sha256(der, signed, rs.to_der().as_bytes()),
                Err(_) => return false,
            },
            Algorithm::Rs256 | Algorithm::Hs256 => host.verify_sha256(der, signed, signature),
        };
        if let Some(answer) = answer {
            return answer;
        }
    }
    check_signature_in_software(key, token, signed, signature)
}

#[cfg_attr(target_arch = "wasm32", allow(unused_variables))]
fn check_signature_in_software(key: &VerifyKey, token: Option<&str>, signed: &[u8], signature: &[u8]) -> bool {
    match &key.key {
        // Constant time; a truncated tag never matches.
        KeyImpl::Hs256(k) => bool::from(k.authentication_tag(signed).ct_eq(signature)),
        // The module leaves RSA and ECDSA to Envoy (BoringSSL is faster by ten
        // times, and software verifiers would add 150 KB): a host without
        // `verify_signature` admits no such token. The CLI, tests and fuzzers
        // verify them in software.
        #[cfg(target_arch = "wasm32")]
        KeyImpl::Rs256(_) | KeyImpl::Es256(_) => false,
        #[cfg(not(target_arch = "wasm32"))]
        KeyImpl::Es256(k) => {
            use p256::ecdsa::signature::Verifier;
            p256::ecdsa::Signature::from_slice(signature)
                .is_ok_and(|rs| k.public_key().as_ref().verify(signed, &rs).is_ok())
        }
        // jwt-simple exposes RSA only through whole-token verification, which
        // also decodes the claims (leniently; they are judged here afterwards).
        // Its clock checks are neutralised: `judge` applies them in order.
        #[cfg(not(target_arch = "wasm32"))]
        KeyImpl::Rs256(k) => {
            let options = VerificationOptions {
                accept_future: true,
                artificial_time: Some(jwt_simple::prelude::UnixTimeStamp::from_secs(0)),
                time_tolerance: Some(jwt_simple::prelude::Duration::from_secs(0)),
                max_token_length: Some(MAX_TOKEN_LEN),
                ..VerificationOptions::default()
            };
            token.is_some_and(|token| k.verify_token::<Map<String, Value>>(token, Some(options)).is_ok())
        }
    }
}

/// `exp`, `nbf` or `iat`: an integer no later than year 9999; `None` if absent.
/// Negative values are returned for the caller to judge.
fn time_claim(claims: &Map<String, Value>, name: &str) -> Result<Option<i64>, Rejection> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => match n.as_i64() {
            Some(t) if t <= MAX_TIME_S => Ok(Some(t)),
            _ => Err(Rejection::BadTimeClaim),
        },
        Some(_) => Err(Rejection::BadTimeClaim),
    }
}

/// `nbf` and `iat` must not be negative.
fn instant_claim(claims: &Map<String, Value>, name: &str) -> Result<Option<u64>, Rejection> {
    time_claim(claims, name)?.map(|t| u64::try_from(t).map_err(|_| Rejection::BadTimeClaim)).transpose()
}

fn judge(
    provider: &Provider,
    index: usize,
    claims: Map<String, Value>,
    now_s: u64,
) -> Result<VerifiedToken, TokenError> {
    match claims.get("iss") {
        Some(Value::String(iss)) if *iss == provider.issuer => {}
        Some(Value::String(_)) => return Err(Rejection::IssuerMismatch.into()),
        Some(_) => return Err(Rejection::UnusableClaim(Claim::Iss).into()),
        None => return Err(Rejection::NoIssuer.into()),
    }
    if !provider.audiences.is_empty() {
        let fits = match claims.get("aud").ok_or(Rejection::NoAudience)? {
            Value::String(aud) => provider.audiences.contains(aud),
            Value::Array(items) => {
                let mut fits = false;
                for item in items {
                    let aud = item.as_str().ok_or(Rejection::UnusableClaim(Claim::Aud))?;
                    fits |= provider.audiences.iter().any(|a| a == aud);
                }
                fits
            }
            _ => return Err(Rejection::UnusableClaim(Claim::Aud).into()),
        };
        if !fits {
            return Err(Rejection::AudienceMismatch.into());
        }
    }
    let skew = provider.clock_skew_s;
    if instant_claim(&claims, "nbf")?.is_some_and(|nbf| now_s.saturating_add(skew) < nbf) {
        return Err(Rejection::NotYetValid.into());
    }
    if instant_claim(&claims, "iat")?.is_some_and(|iat| now_s.saturating_add(skew) < iat) {
        return Err(Rejection::IssuedInFuture.into());
    }
    let exp = time_claim(&claims, "exp")?.ok_or(Rejection::MissingExp)?;
    let subject = match claims.get("sub") {
        None => return Err(Rejection::MissingSub.into()),
        Some(Value::String(sub)) if sub.is_empty() => return Err(Rejection::MissingSub.into()),
        // It becomes an identity header and a rate-limit key: printable, no spaces.
        Some(Value::String(sub)) if sub.bytes().all(|b| b.is_ascii_graphic()) => sub.clone(),
        Some(_) => return Err(Rejection::UnusableClaim(Claim::Sub).into()),
    };
    let org = match claims.get(&provider.org_claim) {
        None => None,
        Some(Value::String(org)) if is_visible(org) => Some(org.clone()),
        Some(_) => return Err(Rejection::UnusableClaim(Claim::Org).into()),
    };
    let accounts = match claims.get(&provider.accounts_claim) {
        None => None,
        Some(Value::Array(items)) => Some(
            items
                .iter()
                .map(|v| v.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or(Rejection::UnusableClaim(Claim::Accounts))?,
        ),
        Some(_) => return Err(Rejection::UnusableClaim(Claim::Accounts).into()),
    };
    let scopes = match claims.get(&provider.scopes_claim) {
        None => String::new(),
        Some(Value::String(text)) => text.split(' ').filter(|s| !s.is_empty()).collect::<Vec<_>>().join(" "),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().filter(|s| !s.is_empty() && !s.contains(' ')))
            .collect::<Option<Vec<_>>>()
            .ok_or(Rejection::UnusableClaim(Claim::Scopes))?
            .join(" "),
        Some(_) => return Err(Rejection::UnusableClaim(Claim::Scopes).into()),
    };
    if !is_visible(&scopes) {
        return Err(Rejection::UnusableClaim(Claim::Scopes).into());
    }
    // Expiry last: a token that is both forged and old is reported invalid.
    // A negative `exp` lies before any clock: expired, never "far future".
    let expires_at = u64::try_from(exp).map_err(|_| TokenError::Expired)?;
    if now_s.saturating_sub(skew) > expires_at {
        return Err(TokenError::Expired);
    }
    Ok(VerifiedToken { provider: index, subject, org, accounts, scopes, expires_at })
}

/// Safe to copy into a request header: visible ASCII and spaces.
fn is_visible(text: &str) -> bool {
    text.bytes().all(|b| (0x20..0x7f).contains(&b))
}
