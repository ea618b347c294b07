//! RFC 7517 JWK Sets, checked for weak or unusable key material.

use super::{Algorithm, VerifyKey};
use crate::config::{ConfigError, Environment, JwkSetDoc};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use std::collections::HashSet;

/// Shortest accepted HMAC secret (RFC 7518 §3.2: at least the hash size).
const MIN_OCT_BYTES: usize = 32;
const MIN_RSA_BITS: usize = 2048;
/// Largest accepted RSA modulus; bigger keys only cost verification time.
const MAX_RSA_BITS: usize = 8192;
/// The small primes of the ROCA fingerprint (CVE-2017-15361): modulo each of
/// them, a modulus from the flawed Infineon generator is a power of 65537.
const ROCA_PRIMES: [u32; 38] = [
    3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71, 73, 79, 83, 89, 97, 101, 103, 107, 109,
    113, 127, 131, 137, 139, 149, 151, 157, 163, 167,
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyMaterial {
    Oct(Vec<u8>),
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// P-256 affine coordinates.
    Ec {
        x: Vec<u8>,
        y: Vec<u8>,
    },
}

impl KeyMaterial {
    /// The one algorithm this key may verify: the key decides, never the token.
    pub fn algorithm(&self) -> Algorithm {
        match self {
            KeyMaterial::Oct(_) => Algorithm::Hs256,
            KeyMaterial::Rsa { .. } => Algorithm::Rs256,
            KeyMaterial::Ec { .. } => Algorithm::Es256,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jwk {
    pub kid: Option<String>,
    pub material: KeyMaterial,
}

/// Validates a JWK Set; `path` names it in errors (e.g. `jwt.providers[0].jwks`).
/// `env` resolves `k_env`: the policy's own sets have one, fetched sets none
/// (a key server sends key material, never the name of a variable).
pub fn compile_jwks(set: &JwkSetDoc, path: &str, env: Option<&dyn Environment>) -> Result<Vec<Jwk>, ConfigError> {
    let mut kids = HashSet::new();
    let mut keys = Vec::with_capacity(set.keys.len());
    for (i, doc) in set.keys.iter().enumerate() {
        let at = |field: &str| format!("{path}.keys[{i}].{field}");
        let decode = |field: &str, value: &Option<String>| -> Result<Vec<u8>, ConfigError> {
            let text = value.as_deref().ok_or_else(|| ConfigError::new(at(field), "missing"))?;
            URL_SAFE_NO_PAD.decode(text).map_err(|_| ConfigError::new(at(field), "expected unpadded base64url"))
        };
        let material = match doc.kty.as_str() {
            "oct" => {
                let (field, k) = match (&doc.k, &doc.k_env, env) {
                    (Some(_), None, _) => ("k", decode("k", &doc.k)?),
                    (None, Some(name), Some(env)) => ("k_env", secret_from(env, name, &at("k_env"))?),
                    (None, Some(_), None) => {
                        return Err(ConfigError::new(at("k_env"), "only the policy's own jwks may name a variable"))
                    }
                    _ => return Err(ConfigError::new(at("k"), "an oct key needs exactly one of k and k_env")),
                };
                if k.len() < MIN_OCT_BYTES {
                    return Err(ConfigError::new(at(field), format!("oct keys need at least {MIN_OCT_BYTES} bytes")));
                }
                KeyMaterial::Oct(k)
            }
            "RSA" => {
                let n = decode("n", &doc.n)?;
                let e = decode("e", &doc.e)?;
                let bits = significant_bits(&n);
                if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
                    return Err(ConfigError::new(
                        at("n"),
                        format!("RSA keys need {MIN_RSA_BITS} to {MAX_RSA_BITS} bits, this one has {bits}"),
                    ));
                }
                if significant_bits(&e) < 2 || e.len() > 8 {
                    return Err(ConfigError::new(at("e"), "unusable RSA exponent"));
                }
                if has_roca_fingerprint(&n) {
                    return Err(ConfigError::new(at("n"), "RSA key has the ROCA fingerprint (CVE-2017-15361)"));
                }
                KeyMaterial::Rsa { n, e }
            }
            "EC" => {
                if doc.crv.as_deref() != Some("P-256") {
                    return Err(ConfigError::new(at("crv"), "only P-256 is supported"));
                }
                let x = decode("x", &doc.x)?;
                let y = decode("y", &doc.y)?;
                if x.len() != 32 || y.len() != 32 {
                    return Err(ConfigError::new(at("x"), "P-256 coordinates are 32 bytes each"));
                }
                KeyMaterial::Ec { x, y }
            }
            other => return Err(ConfigError::new(at("kty"), format!("unsupported key type '{other}'"))),
        };
        if let Some(alg) = &doc.alg {
            if Algorithm::parse(alg) != Some(material.algorithm()) {
                return Err(ConfigError::new(
                    at("alg"),
                    format!("'{alg}' does not fit a {} key (expected {})", doc.kty, material.algorithm()),
                ));
            }
        }
        if doc.use_.as_deref().is_some_and(|u| u != "sig") {
            return Err(ConfigError::new(at("use"), "only signature keys (\"sig\") can verify tokens"));
        }
        if doc.key_ops.as_ref().is_some_and(|ops| !ops.iter().any(|op| op == "verify")) {
            return Err(ConfigError::new(at("key_ops"), "only keys for \"verify\" can verify tokens"));
        }
        if let Some(kid) = &doc.kid {
            if !kids.insert(kid.clone()) {
                return Err(ConfigError::new(at("kid"), format!("duplicate kid '{kid}'")));
            }
        }
        keys.push(Jwk { kid: doc.kid.clone(), material });
    }
    Ok(keys)
}

/// The secret in environment variable `name`: its value's bytes as they are
/// (not base64), like the pepper. Errors name the variable, never the value.
fn secret_from(env: &dyn Environment, name: &str, at: &str) -> Result<Vec<u8>, ConfigError> {
    if name.is_empty() {
        return Err(ConfigError::new(at, "names an environment variable"));
    }
    match env.var(name) {
        Some(value) if !value.is_empty() => Ok(value.into_bytes()),
        _ => Err(ConfigError::new(at, format!("environment variable {name} is missing or empty"))),
    }
}

/// A JWK Set's keys, validated and parsed, ready to verify; `path` names the
/// set in errors (e.g. `jwt.providers[0].jwks`); `env` as for [`compile_jwks`].
pub fn verify_keys(set: &JwkSetDoc, path: &str, env: Option<&dyn Environment>) -> Result<Vec<VerifyKey>, ConfigError> {
    compile_jwks(set, path, env)?
        .iter()
        .enumerate()
        .map(|(i, jwk)| VerifyKey::new(jwk).map_err(|why| ConfigError::new(format!("{path}.keys[{i}]"), why)))
        .collect()
}

/// Whether the big-endian modulus `n` is, modulo every ROCA prime, in the
/// subgroup generated by 65537 (a random modulus almost never is).
fn has_roca_fingerprint(n: &[u8]) -> bool {
    ROCA_PRIMES.iter().all(|&p| {
        let residue = n.iter().fold(0, |r, &b| (r * 256 + u32::from(b)) % p);
        let generator = 65_537 % p;
        let mut power = 1;
        for _ in 0..p {
            if power == residue {
                return true;
            }
            power = power * generator % p;
        }
        false
    })
}

fn significant_bits(bytes: &[u8]) -> usize {
    match bytes.iter().position(|&b| b != 0) {
        None => 0,
        Some(first) => {
            let lead = bytes.get(first).copied().unwrap_or(0);
            (bytes.len() - first - 1) * 8 + (8 - lead.leading_zeros() as usize)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    fn compile(json: String) -> Result<Vec<Jwk>, String> {
        let set: JwkSetDoc = serde_json::from_str(&json).unwrap();
        compile_jwks(&set, "jwks", None).map_err(|e| e.to_string())
    }

    #[test]
    fn accepts_strong_keys_of_each_type() {
        let mut n = vec![0xc5u8; 256];
        n[0] = 0x80;
        let keys = compile(format!(
            r#"{{"keys":[
              {{"kty":"oct","kid":"h","alg":"HS256","k":"{}"}},
              {{"kty":"RSA","kid":"r","n":"{}","e":"AQAB","use":"sig"}},
              {{"kty":"EC","kid":"e","crv":"P-256","x":"{}","y":"{}","extra":1}}]}}"#,
            b64(&[7; 32]),
            b64(&n),
            b64(&[1; 32]),
            b64(&[2; 32])
        ))
        .unwrap();
        let algs: Vec<_> = keys.iter().map(|k| k.material.algorithm()).collect();
        assert_eq!(algs, [Algorithm::Hs256, Algorithm::Rs256, Algorithm::Es256]);
    }

    #[test]
    fn refuses_weak_or_inconsistent_keys() {
        let short = format!(r#"{{"keys":[{{"kty":"oct","k":"{}"}}]}}"#, b64(&[7; 31]));
        assert_eq!(compile(short).unwrap_err(), "jwks.keys[0].k: oct keys need at least 32 bytes");
        let rsa1024 = format!(r#"{{"keys":[{{"kty":"RSA","n":"{}","e":"AQAB"}}]}}"#, b64(&[0xff; 128]));
        assert_eq!(compile(rsa1024).unwrap_err(), "jwks.keys[0].n: RSA keys need 2048 to 8192 bits, this one has 1024");
        let confused = format!(r#"{{"keys":[{{"kty":"oct","alg":"RS256","k":"{}"}}]}}"#, b64(&[7; 32]));
        assert!(compile(confused).unwrap_err().starts_with("jwks.keys[0].alg:"));
        let p384 = format!(r#"{{"keys":[{{"kty":"EC","crv":"P-384","x":"{0}","y":"{0}"}}]}}"#, b64(&[1; 48]));
        assert_eq!(compile(p384).unwrap_err(), "jwks.keys[0].crv: only P-256 is supported");
        let dup = format!(
            r#"{{"keys":[{{"kty":"oct","kid":"a","k":"{0}"}},{{"kty":"oct","kid":"a","k":"{0}"}}]}}"#,
            b64(&[7; 32])
        );
        assert_eq!(compile(dup).unwrap_err(), "jwks.keys[1].kid: duplicate kid 'a'");
        assert!(compile(r#"{"keys":[{"kty":"none"}]}"#.into()).unwrap_err().starts_with("jwks.keys[0].kty:"));
    }

    #[test]
    fn verify_keys_parses_every_key_and_names_the_one_that_fails() {
        let set = |json: String| serde_json::from_str::<JwkSetDoc>(&json).unwrap();
        let oct = format!(r#"{{"kty":"oct","kid":"h","k":"{}"}}"#, b64(&[7; 32]));
        let keys = verify_keys(&set(format!(r#"{{"keys":[{oct}]}}"#)), "p.jwks", None).unwrap();
        assert_eq!((keys.len(), keys[0].kid.as_deref(), keys[0].algorithm()), (1, Some("h"), Algorithm::Hs256));
        // 32-byte coordinates that are not a point on P-256 pass compile_jwks; VerifyKey refuses them.
        let off_curve = format!(r#"{{"kty":"EC","crv":"P-256","x":"{0}","y":"{0}"}}"#, b64(&[1; 32]));
        let err = verify_keys(&set(format!(r#"{{"keys":[{oct},{off_curve}]}}"#)), "p.jwks", None).unwrap_err();
        assert_eq!(err.to_string(), "p.jwks.keys[1]: not a point on P-256");
        let short = format!(r#"{{"keys":[{{"kty":"oct","k":"{}"}}]}}"#, b64(&[7; 31]));
        assert_eq!(verify_keys(&set(short), "p.jwks", None).unwrap_err().path, "p.jwks.keys[0].k");
    }

    #[test]
    fn oct_secrets_may_come_from_the_environment_and_errors_never_show_them() {
        use crate::testing::OnlyVars;
        const ENV: OnlyVars =
            OnlyVars(&[("HS_GOOD", "a-secret-of-at-least-thirty-two-bytes!"), ("HS_SHORT", "short-secret-value")]);
        let set = |key: &str| serde_json::from_str::<JwkSetDoc>(&format!(r#"{{"keys":[{key}]}}"#)).unwrap();
        let run = |key: &str| compile_jwks(&set(key), "jwks", Some(&ENV)).map_err(|e| e.to_string());
        let keys = run(r#"{"kty":"oct","kid":"h","k_env":"HS_GOOD"}"#).unwrap();
        assert_eq!(keys[0].material, KeyMaterial::Oct(b"a-secret-of-at-least-thirty-two-bytes!".to_vec()));
        let short = run(r#"{"kty":"oct","k_env":"HS_SHORT"}"#).unwrap_err();
        assert_eq!(short, "jwks.keys[0].k_env: oct keys need at least 32 bytes");
        assert_eq!(
            run(r#"{"kty":"oct","k_env":"HS_NONE"}"#).unwrap_err(),
            "jwks.keys[0].k_env: environment variable HS_NONE is missing or empty"
        );
        let both = format!(r#"{{"kty":"oct","k":"{}","k_env":"HS_GOOD"}}"#, b64(&[7; 32]));
        assert_eq!(run(&both).unwrap_err(), "jwks.keys[0].k: an oct key needs exactly one of k and k_env");
        assert_eq!(run(r#"{"kty":"oct"}"#).unwrap_err(), "jwks.keys[0].k: an oct key needs exactly one of k and k_env");
        // A fetched set has no environment to read.
        let fetched = compile_jwks(&set(r#"{"kty":"oct","k_env":"HS_GOOD"}"#), "jwks", None).unwrap_err();
        assert_eq!(fetched.path, "jwks.keys[0].k_env");
    }

    #[test]
    fn spots_the_roca_fingerprint() {
        // 1 is 65537⁰ modulo every prime; 2 is no power of 65537 ≡ 10 (mod 11).
        assert!(has_roca_fingerprint(&[1]));
        assert!(!has_roca_fingerprint(&[2]));
        let mut n = vec![0xc5u8; 256];
        n[0] = 0x80;
        assert!(!has_roca_fingerprint(&n));
    }

    #[test]
    fn counts_significant_bits() {
        assert_eq!(significant_bits(&[0, 0, 1]), 1);
        assert_eq!(significant_bits(&[0x80, 0]), 16);
        assert_eq!(significant_bits(&[]), 0);
    }
}
