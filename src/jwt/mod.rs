//! JWT providers: configuration and key material.

mod cache;
mod jwks;
mod verify;

#[cfg(test)]
mod tests;

pub use cache::TokenCache;
pub use jwks::{compile_jwks, Jwk, KeyMaterial};
pub use verify::{provider_for, verify, TokenError, VerifiedToken};

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
    pub jwks_source: Option<crate::config::Source>,
    pub org_claim: String,
    pub accounts_claim: String,
    pub scopes_claim: String,
    pub account_header: Option<String>,
    pub clock_skew_s: u64,
}

/// A JWK ready to verify: decoded and parsed once, at configuration.
pub struct VerifyKey {
    pub kid: Option<String>,
    key: KeyImpl,
}

enum KeyImpl {
    Hs256(jwt_simple::prelude::HS256Key),
    Rs256(Box<jwt_simple::prelude::RS256PublicKey>),
    Es256(jwt_simple::prelude::ES256PublicKey),
}

impl VerifyKey {
    pub fn new(jwk: &Jwk) -> Result<Self, &'static str> {
        use jwt_simple::prelude::{ES256PublicKey, HS256Key, RS256PublicKey};
        let key = match &jwk.material {
            KeyMaterial::Oct(k) => KeyImpl::Hs256(HS256Key::from_bytes(k)),
            KeyMaterial::Rsa { n, e } => {
                KeyImpl::Rs256(Box::new(RS256PublicKey::from_components(n, e).map_err(|_| "unusable RSA key")?))
            }
            KeyMaterial::Ec { x, y } => {
                let point: Vec<u8> = [&[0x04][..], x, y].concat();
                KeyImpl::Es256(ES256PublicKey::from_bytes(&point).map_err(|_| "not a point on P-256")?)
            }
        };
        Ok(Self { kid: jwk.kid.clone(), key })
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
