//! JWT providers as configured: checked once, at configuration.

use super::{verify_keys, Algorithm, Provider};
use crate::config::{ConfigError, Environment, ProviderDoc};
use crate::headers::check_header_name;
use crate::remote::Endpoint;
use std::collections::HashSet;

const MAX_CLOCK_SKEW_S: u64 = 3_600;

/// Compiles `jwt.providers`; `env` holds the secrets `k_env` names.
pub fn compile_providers(docs: &[ProviderDoc], env: &dyn Environment) -> Result<Vec<Provider>, ConfigError> {
    if docs.is_empty() {
        return Err(ConfigError::new("jwt.providers", "needs at least one provider"));
    }
    let mut names = HashSet::new();
    let mut issuers = HashSet::new();
    let mut providers = Vec::with_capacity(docs.len());
    for (i, doc) in docs.iter().enumerate() {
        let at = |field: &str| format!("jwt.providers[{i}].{field}");
        if doc.name.is_empty() || !names.insert(doc.name.as_str()) {
            return Err(ConfigError::new(at("name"), "needs a unique, non-empty name"));
        }
        // The token's `iss` chooses the provider, so issuers must be unique.
        if doc.issuer.is_empty() || !issuers.insert(doc.issuer.as_str()) {
            return Err(ConfigError::new(at("issuer"), "needs a unique, non-empty issuer"));
        }
        if doc.algorithms.is_empty() {
            return Err(ConfigError::new(at("algorithms"), "needs at least one algorithm"));
        }
        let algorithms = doc
            .algorithms
            .iter()
            .enumerate()
            .map(|(j, a)| {
                Algorithm::parse(a).ok_or_else(|| {
                    ConfigError::new(
                        at(&format!("algorithms[{j}]")),
                        format!("'{a}' is not one of HS256, RS256, ES256"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if doc.jwks.is_none() && doc.jwks_source.is_none() {
            return Err(ConfigError::new(at("jwks"), "a provider needs jwks, jwks_source, or both"));
        }
        let keys = match &doc.jwks {
            Some(set) => verify_keys(set, &at("jwks"), Some(env))?,
            None => Vec::new(),
        };
        let jwks_source =
            doc.jwks_source.as_ref().map(|s| Endpoint::compile(s, &at("jwks_source"), 300.0)).transpose()?;
        for (field, claim) in [
            ("org_claim", &doc.org_claim),
            ("accounts_claim", &doc.accounts_claim),
            ("scopes_claim", &doc.scopes_claim),
        ] {
            if claim.is_empty() {
                return Err(ConfigError::new(at(field), "names a claim"));
            }
        }
        if let Some(header) = &doc.account_header {
            check_header_name(header, &at("account_header"))?;
        }
        if doc.clock_skew_s > MAX_CLOCK_SKEW_S {
            return Err(ConfigError::new(at("clock_skew_s"), format!("at most {MAX_CLOCK_SKEW_S} seconds")));
        }
        providers.push(Provider {
            name: doc.name.clone(),
            issuer: doc.issuer.clone(),
            audiences: doc.audiences.clone(),
            algorithms,
            keys,
            jwks_source,
            org_claim: doc.org_claim.clone(),
            accounts_claim: doc.accounts_claim.clone(),
            scopes_claim: doc.scopes_claim.clone(),
            account_header: doc.account_header.clone(),
            clock_skew_s: doc.clock_skew_s,
        });
    }
    Ok(providers)
}
