//! Verifying a compact JWS against a provider.
//!
//! The header is read here, strictly, before any key is touched: the
//! provider's algorithm list and the key's own type decide the algorithm,
//! keys or URLs carried in the token are refused, and so is any `crit`.
//! jwt-simple then checks the signature and decodes the claims; the claims
//! are judged here, in the order of the contract's decision table (invalid
//! before expired).

use super::{Algorithm, KeyImpl, Provider, SignatureHost, VerifyKey};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
#[cfg(not(target_arch = "wasm32"))]
use jwt_simple::prelude::{ECDSAP256PublicKeyLike, RSAPublicKeyLike};
use jwt_simple::prelude::{JWTClaims, MACLike, VerificationOptions};
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::{Map, Value};

/// Longest token accepted; the credential grammar caps header values at 8 KiB.
const MAX_TOKEN_LEN: usize = 8 * 1024;

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    /// Row 9: bad signature, algorithm, key, issuer, audience, or not yet valid.
    Invalid(&'static str),
    /// Row 9 too, but a fresh JWKS might know the key.
    UnknownKid,
    /// Row 10: past `exp` beyond the clock skew.
    Expired,
}

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

/// The JOSE header members the filter reads or refuses. Known members that
/// repeat make serde fail, so a token cannot say `alg` twice.
#[derive(Deserialize)]
struct Header {
    alg: String,
    kid: Option<String>,
    typ: Option<String>,
    crit: Option<Vec<IgnoredAny>>,
    jwk: Option<IgnoredAny>,
    jku: Option<IgnoredAny>,
    x5u: Option<IgnoredAny>,
    x5c: Option<IgnoredAny>,
    x5t: Option<IgnoredAny>,
    #[serde(rename = "x5t#S256")]
    x5t_s256: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct Issuer {
    iss: Option<String>,
}

fn decode_part<T: for<'de> Deserialize<'de>>(part: &str) -> Result<T, TokenError> {
    let bytes = URL_SAFE_NO_PAD.decode(part).map_err(|_| TokenError::Invalid("bad base64url"))?;
    serde_json::from_slice(&bytes).map_err(|_| TokenError::Invalid("bad JSON"))
}

fn parts(token: &str) -> Result<(&str, &str), TokenError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::Invalid("too long"));
    }
    let mut parts = token.splitn(3, '.');
    match (parts.next(), parts.next()) {
        (Some(header), Some(payload)) => Ok((header, payload)),
        _ => Err(TokenError::Invalid("not a compact JWS")),
    }
}

/// The provider named by the token's (still unverified) `iss`.
pub fn provider_for(providers: &[Provider], token: &str) -> Result<usize, TokenError> {
    let (_, payload) = parts(token)?;
    let issuer: Issuer = decode_part(payload)?;
    let iss = issuer.iss.ok_or(TokenError::Invalid("no iss"))?;
    providers.iter().position(|p| p.issuer == iss).ok_or(TokenError::Invalid("unknown issuer"))
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
    let provider = providers.get(index).ok_or(TokenError::Invalid("unknown issuer"))?;
    let (header, _) = parts(token)?;
    let header: Header = decode_part(header)?;
    let carried = [&header.jwk, &header.jku, &header.x5u, &header.x5c, &header.x5t, &header.x5t_s256];
    if carried.iter().any(|member| member.is_some()) {
        return Err(TokenError::Invalid("key or key URL carried in the token"));
    }
    if header.crit.is_some_and(|crit| !crit.is_empty()) {
        return Err(TokenError::Invalid("critical header extension"));
    }
    // As jwt-simple: a `typ`, if any, must say JWT (`JWT`, `at+jwt`, …).
    if header.typ.is_some_and(|typ| {
        let typ = typ.to_ascii_uppercase();
        typ != "JWT" && !typ.ends_with("+JWT")
    }) {
        return Err(TokenError::Invalid("not a JWT"));
    }
    // Exact, case-sensitive names only: "none", "None", "nOnE" all fail here.
    let alg = Algorithm::parse(&header.alg)
        .filter(|alg| provider.algorithms.contains(alg))
        .ok_or(TokenError::Invalid("algorithm not allowed"))?;
    let candidates: Vec<&VerifyKey> = match &header.kid {
        Some(kid) => keys.iter().copied().filter(|k| k.kid.as_deref() == Some(kid)).collect(),
        None => keys.to_vec(),
    };
    if candidates.is_empty() {
        return Err(if header.kid.is_some() { TokenError::UnknownKid } else { TokenError::Invalid("no key") });
    }
    // The key's type pins the algorithm; a token cannot pick another.
    let claims = candidates
        .iter()
        .filter(|key| key.algorithm() == alg)
        .find_map(|key| check_signature(key, host, token))
        .ok_or(TokenError::Invalid("bad signature or claims"))?;
    judge(provider, index, claims, now_s)
}

type Claims = JWTClaims<Map<String, Value>>;

/// The claims, if `key` signed `token`. RSA and EC signatures go to the host
/// when it can check them; HMAC, and off wasm everything else, jwt-simple checks.
fn check_signature(key: &VerifyKey, host: &dyn SignatureHost, token: &str) -> Option<Claims> {
    if let Some(der) = &key.der {
        let (signed, signature) = token.rsplit_once('.')?;
        let signature = URL_SAFE_NO_PAD.decode(signature).ok()?;
        let signature = match key.algorithm() {
            // JWS carries r‖s; the host expects ASN.1 DER.
            Algorithm::Es256 => p256::ecdsa::Signature::from_slice(&signature).ok()?.to_der().as_bytes().to_vec(),
            Algorithm::Rs256 | Algorithm::Hs256 => signature,
        };
        match host.verify_sha256(der, signed.as_bytes(), &signature) {
            Some(true) => return decode_claims(signed),
            Some(false) => return None,
            None => {}
        }
    }
    check_signature_in_software(key, token)
}

fn decode_claims(signed: &str) -> Option<Claims> {
    let (_, payload) = signed.split_once('.')?;
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()
}

/// jwt-simple's own time checks are neutralised here (an artificial time of
/// zero, future tokens accepted): `judge` applies them in the contract's order.
fn check_signature_in_software(key: &VerifyKey, token: &str) -> Option<Claims> {
    let options = VerificationOptions {
        accept_future: true,
        artificial_time: Some(jwt_simple::prelude::UnixTimeStamp::from_secs(0)),
        time_tolerance: Some(jwt_simple::prelude::Duration::from_secs(0)),
        max_token_length: Some(MAX_TOKEN_LEN),
        ..VerificationOptions::default()
    };
    match &key.key {
        KeyImpl::Hs256(k) => k.verify_token(token, Some(options)).ok(),
        // The module leaves RSA and ECDSA to Envoy (BoringSSL is faster by ten
        // times, and software verifiers would add 150 KB): a host without
        // `verify_signature` admits no such token. The CLI, tests and fuzzers
        // verify them in software.
        #[cfg(target_arch = "wasm32")]
        KeyImpl::Rs256(_) | KeyImpl::Es256(_) => None,
        #[cfg(not(target_arch = "wasm32"))]
        KeyImpl::Rs256(k) => k.verify_token(token, Some(options)).ok(),
        #[cfg(not(target_arch = "wasm32"))]
        KeyImpl::Es256(k) => k.verify_token(token, Some(options)).ok(),
    }
}

fn judge(provider: &Provider, index: usize, claims: Claims, now_s: u64) -> Result<VerifiedToken, TokenError> {
    if claims.issuer.as_deref() != Some(provider.issuer.as_str()) {
        return Err(TokenError::Invalid("issuer mismatch"));
    }
    if !provider.audiences.is_empty() {
        let audiences = claims.audiences.as_ref().ok_or(TokenError::Invalid("no aud"))?;
        let fits = match audiences {
            jwt_simple::prelude::Audiences::AsString(aud) => provider.audiences.contains(aud),
            jwt_simple::prelude::Audiences::AsSet(set) => provider.audiences.iter().any(|a| set.contains(a)),
        };
        if !fits {
            return Err(TokenError::Invalid("audience mismatch"));
        }
    }
    let skew = provider.clock_skew_s;
    let secs = |t: jwt_simple::prelude::UnixTimeStamp| t.as_secs();
    if claims.invalid_before.map(secs).is_some_and(|nbf| now_s.saturating_add(skew) < nbf) {
        return Err(TokenError::Invalid("not yet valid (nbf)"));
    }
    if claims.issued_at.map(secs).is_some_and(|iat| now_s.saturating_add(skew) < iat) {
        return Err(TokenError::Invalid("issued in the future (iat)"));
    }
    let expires_at = claims.expires_at.map(secs).ok_or(TokenError::Invalid("no exp"))?;
    let subject = claims.subject.filter(|s| is_visible(s)).ok_or(TokenError::Invalid("no usable sub"))?;
    let custom = claims.custom;
    let org = match custom.get(&provider.org_claim) {
        None => None,
        Some(Value::String(org)) if is_visible(org) => Some(org.clone()),
        Some(_) => return Err(TokenError::Invalid("unusable org claim")),
    };
    let accounts = match custom.get(&provider.accounts_claim) {
        None => None,
        Some(Value::Array(items)) => Some(
            items
                .iter()
                .map(|v| v.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or(TokenError::Invalid("accounts claim is not a list of strings"))?,
        ),
        Some(_) => return Err(TokenError::Invalid("accounts claim is not a list of strings")),
    };
    let scopes = match custom.get(&provider.scopes_claim) {
        None => String::new(),
        Some(Value::String(text)) => text.split(' ').filter(|s| !s.is_empty()).collect::<Vec<_>>().join(" "),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().filter(|s| !s.is_empty() && !s.contains(' ')))
            .collect::<Option<Vec<_>>>()
            .ok_or(TokenError::Invalid("scopes claim is not a list of strings"))?
            .join(" "),
        Some(_) => return Err(TokenError::Invalid("scopes claim is not a string or list")),
    };
    if !is_visible(&scopes) {
        return Err(TokenError::Invalid("unusable scopes claim"));
    }
    // Expiry last: a token that is both forged and old is reported invalid.
    if now_s.saturating_sub(skew) > expires_at {
        return Err(TokenError::Expired);
    }
    Ok(VerifiedToken { provider: index, subject, org, accounts, scopes, expires_at })
}

/// Safe to copy into a request header: visible ASCII and spaces.
fn is_visible(text: &str) -> bool {
    text.bytes().all(|b| (0x20..0x7f).contains(&b))
}
