//! JWT providers: configuration and key material.

mod cache;
mod compile;
mod error;
pub mod host_wire;
mod jwks;
mod verify;

#[cfg(test)]
mod tests;

pub use cache::TokenCache;
pub use compile::compile_providers;
pub use error::{Claim, Rejection, TokenError};
pub use jwks::{compile_jwks, verify_keys, Jwk, KeyMaterial};
pub use verify::{provider_for, verify, verify_jws, verify_signature, VerifiedToken};

use std::fmt;

/// Algorithms the filter verifies. `none` and anything else are refused at
/// configuration, so a policy cannot enable them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Hs256,
    Rs256,
    Es256,
}

impl Algorithm {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "HS256" => Some(Algorithm::Hs256),
            "RS256" => Some(Algorithm::Rs256),
            "ES256" => Some(Algorithm::Es256),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Hs256 => "HS256",
            Algorithm::Rs256 => "RS256",
            Algorithm::Es256 => "ES256",
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug)]
pub struct Provider {
    pub name: String,
    pub issuer: String,
    /// Empty means the audience is not checked.
    pub audiences: Vec<String>,
    pub algorithms: Vec<Algorithm>,
    pub keys: Vec<VerifyKey>,
    pub jwks_source: Option<crate::remote::Endpoint>,
    pub org_claim: String,
    pub accounts_claim: String,
    pub scopes_claim: String,
    pub account_header: Option<String>,
    pub clock_skew_s: u64,
}

impl Provider {
    /// Whether the provider admits RSA or ECDSA tokens, whose signatures the
    /// module leaves to the host.
    pub fn needs_host_signatures(&self) -> bool {
        self.algorithms.iter().any(|alg| *alg != Algorithm::Hs256)
    }
}

/// A JWK ready to verify: decoded and parsed once, at configuration.
pub struct VerifyKey {
    pub kid: Option<String>,
    key: KeyImpl,
    /// SubjectPublicKeyInfo DER of an RSA or EC key, for host-side checks.
    der: Option<Vec<u8>>,
}

/// Signature checks the host can do natively (Envoy's `verify_signature`
/// foreign function, BoringSSL), far faster than pure Rust in wasm.
pub trait SignatureHost {
    /// Verifies a SHA-256 signature (RSA PKCS#1 v1.5, or DER-encoded ECDSA)
    /// of `message` under the DER public key; `None` if the host cannot.
    fn verify_sha256(&self, public_key_der: &[u8], message: &[u8], signature: &[u8]) -> Option<bool>;
}

/// A host without native signature checks. Off wasm everything is then
/// verified in software; the module admits only HS256 tokens.
pub struct NoSignatureHost;

impl SignatureHost for NoSignatureHost {
    fn verify_sha256(&self, _: &[u8], _: &[u8], _: &[u8]) -> Option<bool> {
        None
    }
}

enum KeyImpl {
    Hs256(jwt_simple::prelude::HS256Key),
    // In the module the host verifies with `der`; these parse and validate.
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    Rs256(Box<jwt_simple::prelude::RS256PublicKey>),
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    Es256(jwt_simple::prelude::ES256PublicKey),
}

impl VerifyKey {
    pub fn new(jwk: &Jwk) -> Result<Self, &'static str> {
        use jwt_simple::prelude::{ES256PublicKey, HS256Key, RS256PublicKey};
        let (key, der) = match &jwk.material {
            KeyMaterial::Oct(k) => (KeyImpl::Hs256(HS256Key::from_bytes(k)), None),
            KeyMaterial::Rsa { n, e } => {
                let key = RS256PublicKey::from_components(n, e).map_err(|_| "unusable RSA key")?;
                let der = key.to_der().map_err(|_| "unusable RSA key")?;
                (KeyImpl::Rs256(Box::new(key)), Some(der))
            }
            KeyMaterial::Ec { x, y } => {
                let point: Vec<u8> = [&[0x04][..], x, y].concat();
                let key = ES256PublicKey::from_bytes(&point).map_err(|_| "not a point on P-256")?;
                let der = key.to_der().map_err(|_| "not a point on P-256")?;
                (KeyImpl::Es256(key), Some(der))
            }
        };
        Ok(Self { kid: jwk.kid.clone(), key, der })
    }

    /// The one algorithm this key verifies.
    pub fn algorithm(&self) -> Algorithm {
        match self.key {
            KeyImpl::Hs256(_) => Algorithm::Hs256,
            KeyImpl::Rs256(_) => Algorithm::Rs256,
            KeyImpl::Es256(_) => Algorithm::Es256,
        }
    }
}

impl fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VerifyKey({:?}, {})", self.kid, self.algorithm())
    }
}
