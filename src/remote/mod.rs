//! Documents the policy fetches from Envoy clusters (key sets, JWKS): where
//! they come from, and how one fetch per Envoy process reaches every worker.

mod shared;

pub use shared::{Meta, Outcome, SharedDocument, EARLY_REFETCH, LEASE, MAX_BODY, RETRY};

use crate::config::{ConfigError, SourceDoc};
use crate::text::is_header_safe;
use std::time::Duration;

/// A document served by an Envoy cluster at a path, fetched every `refresh`.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    pub cluster: String,
    pub path: String,
    pub refresh: Duration,
}

const MIN_REFRESH: Duration = Duration::from_millis(50);
const MAX_REFRESH: Duration = Duration::from_secs(86_400);

impl Endpoint {
    /// Compiles a `source` or `jwks_source`; `at` names it in errors.
    pub fn compile(doc: &SourceDoc, at: &str, default_refresh_s: f64) -> Result<Self, ConfigError> {
        if doc.cluster.is_empty() {
            return Err(ConfigError::new(format!("{at}.cluster"), "names the Envoy cluster to fetch from"));
        }
        if !doc.path.starts_with('/') || !is_header_safe(&doc.path) || doc.path.contains(' ') {
            return Err(ConfigError::new(format!("{at}.path"), "an absolute request path like /v1/keys"));
        }
        let seconds = doc.refresh_s.unwrap_or(default_refresh_s);
        let refresh = Duration::try_from_secs_f64(seconds)
            .ok()
            .filter(|d| (MIN_REFRESH..=MAX_REFRESH).contains(d))
            .ok_or_else(|| {
                ConfigError::new(
                    format!("{at}.refresh_s"),
                    format!("must be {} to {} seconds", MIN_REFRESH.as_secs_f64(), MAX_REFRESH.as_secs()),
                )
            })?;
        Ok(Self { cluster: doc.cluster.clone(), path: doc.path.clone(), refresh })
    }
}
