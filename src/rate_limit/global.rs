//! Fleet-wide buckets: `"scope": "global"` buckets are charged in an engine
//! that speaks Envoy's rate-limit service protocol (`edge-auth rls`, or any
//! other), so a key's limit holds across every Envoy of a fleet.
//!
//! One descriptor per global bucket, with the entries `edge_auth_caller`,
//! `edge_auth_bucket` (`<plan>.<bucket>`), `requests` and `per_s`, all in one
//! request so the engine charges them all or none.

use super::placement::CallerId;
use super::plan::{Plan, PlanId};
use super::rls_wire::{Descriptor, RateLimitRequest};
use crate::config::{ConfigError, FailureModeDoc, GlobalDoc};
use std::time::Duration;

/// The domain every request names.
pub const DOMAIN: &str = "edge-auth";
/// The gRPC service and method the engine serves.
pub const SERVICE: &str = "envoy.service.ratelimit.v3.RateLimitService";
pub const METHOD: &str = "ShouldRateLimit";

const MAX_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest lease: what one Envoy may strand per caller is bounded by it.
const MAX_LEASE: u32 = 64;

/// What happens when the engine cannot answer in time, or answers an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureMode {
    /// Row 17: 503 `rate_limit_unavailable`.
    Deny,
    /// The request goes through, counted.
    Allow,
}

/// The engine, as `rate_limits.global` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Engine {
    /// An Envoy cluster speaking HTTP/2 to the rate-limit service.
    pub cluster: String,
    pub timeout: Duration,
    pub failure_mode: FailureMode,
    /// Most tokens one lease may take.
    pub max_lease: u32,
}

impl Engine {
    pub fn compile(doc: &GlobalDoc) -> Result<Self, ConfigError> {
        if doc.cluster.is_empty() {
            return Err(ConfigError::new("rate_limits.global.cluster", "names the rate-limit service's Envoy cluster"));
        }
        let timeout = Duration::from_millis(doc.timeout_ms);
        if timeout.is_zero() || timeout > MAX_TIMEOUT {
            return Err(ConfigError::new("rate_limits.global.timeout_ms", "must be 1 to 10000"));
        }
        let failure_mode = match doc.failure_mode {
            FailureModeDoc::Deny => FailureMode::Deny,
            FailureModeDoc::Allow => FailureMode::Allow,
        };
        if !(1..=MAX_LEASE).contains(&doc.max_lease) {
            return Err(ConfigError::new("rate_limits.global.max_lease", format!("must be 1 to {MAX_LEASE}")));
        }
        Ok(Self { cluster: doc.cluster.clone(), timeout, failure_mode, max_lease: doc.max_lease })
    }
}

/// What the decision leaves to the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Global {
    /// A token of the caller's lease was spent: nothing to ask.
    Leased,
    /// Ask the engine before the request may go on.
    Ask(Ask),
}

/// An engine request still to be made for an admitted caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ask {
    pub plan: PlanId,
    pub caller: CallerId,
    /// The caller's name in descriptors (`edge_auth_caller`).
    pub name: String,
    /// Tokens to take: 1, or more for a lease.
    pub hits: u32,
}

/// The engine request that charges `hits` tokens from every global bucket of
/// `plan` for `caller`.
pub fn request(plan: &Plan, caller: &str, hits: u32) -> Vec<u8> {
    let descriptors = plan
        .global
        .iter()
        .map(|bucket| Descriptor {
            entries: vec![
                ("edge_auth_caller", caller.to_owned()),
                ("edge_auth_bucket", format!("{}.{}", plan.name, bucket.name)),
                ("requests", bucket.requests.to_string()),
                ("per_s", bucket.per_s.to_string()),
            ],
        })
        .collect();
    RateLimitRequest { domain: DOMAIN, descriptors, hits_addend: hits }.encode()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::GlobalDoc;

    fn doc(cluster: &str, timeout_ms: u64) -> GlobalDoc {
        GlobalDoc { cluster: cluster.into(), timeout_ms, failure_mode: FailureModeDoc::Deny, max_lease: 16 }
    }

    #[test]
    fn engines_are_checked() {
        let engine = Engine::compile(&doc("rls", 50)).unwrap();
        assert_eq!((engine.timeout, engine.failure_mode), (Duration::from_millis(50), FailureMode::Deny));
        assert_eq!(Engine::compile(&doc("", 50)).unwrap_err().path, "rate_limits.global.cluster");
        assert_eq!(Engine::compile(&doc("rls", 0)).unwrap_err().path, "rate_limits.global.timeout_ms");
        assert_eq!(Engine::compile(&doc("rls", 10_001)).unwrap_err().path, "rate_limits.global.timeout_ms");
        let huge = GlobalDoc { max_lease: 65, ..doc("rls", 50) };
        assert_eq!(Engine::compile(&huge).unwrap_err().to_string(), "rate_limits.global.max_lease: must be 1 to 64");
    }
}
