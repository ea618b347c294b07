//! JWT providers: configuration and key material.

mod jwks;

pub use jwks::{compile_jwks, Jwk, KeyMaterial};

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
    pub keys: Vec<Jwk>,
    pub jwks_source: Option<crate::config::Source>,
    pub org_claim: String,
    pub accounts_claim: String,
    pub scopes_claim: String,
    pub account_header: Option<String>,
    pub clock_skew_s: u64,
}
