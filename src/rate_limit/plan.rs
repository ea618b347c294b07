//! Plans as configured: each bucket holds `requests` tokens and refills at
//! `requests / per_s` per second. Zero sizes are refused at configuration.

use crate::config::{BucketDoc, ConfigError, ScopeDoc};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::num::NonZeroU64;

/// Index of a plan in [`Plans`]; only [`Plans::id`] makes one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanId(usize);

#[derive(Debug)]
pub struct Bucket {
    pub name: String,
    pub requests: NonZeroU64,
    pub per_s: NonZeroU64,
}

#[derive(Debug)]
pub struct Plan {
    pub name: String,
    /// Buckets kept in shared data, exact across one Envoy's workers.
    pub buckets: Vec<Bucket>,
    /// `"scope": "global"` buckets, charged in the fleet-wide engine.
    pub global: Vec<Bucket>,
    /// Names the plan's shape in stored state, so a changed plan starts afresh
    /// instead of reading buckets of another size.
    pub fingerprint: u64,
}

#[derive(Debug, Default)]
pub struct Plans {
    plans: Vec<Plan>,
}

/// A bucket's size is bounded so refill arithmetic can never overflow.
const MAX_REQUESTS: u64 = 1 << 40;
/// A year; longer windows are almost certainly a unit mistake.
const MAX_PERIOD_S: u64 = 366 * 86_400;

impl Plans {
    /// Compiles `rate_limits.plans`; `engine` says whether
    /// `rate_limits.global` names an engine for global buckets.
    pub fn compile(docs: &BTreeMap<String, Vec<BucketDoc>>, engine: bool) -> Result<Self, ConfigError> {
        let mut plans = Vec::with_capacity(docs.len());
        for (name, buckets) in docs {
            let at = |i: usize, field: &str| format!("rate_limits.plans.{name}[{i}].{field}");
            if name.is_empty() {
                return Err(ConfigError::new("rate_limits.plans", "a plan needs a name"));
            }
            if buckets.is_empty() {
                return Err(ConfigError::new(format!("rate_limits.plans.{name}"), "a plan needs at least one bucket"));
            }
            let (mut compiled, mut global): (Vec<Bucket>, Vec<Bucket>) = (Vec::new(), Vec::new());
            for (i, doc) in buckets.iter().enumerate() {
                if compiled.iter().chain(&global).any(|b| b.name == doc.name) {
                    return Err(ConfigError::new(at(i, "name"), format!("duplicate bucket '{}'", doc.name)));
                }
                let requests = NonZeroU64::new(doc.requests)
                    .filter(|r| r.get() <= MAX_REQUESTS)
                    .ok_or_else(|| ConfigError::new(at(i, "requests"), format!("must be 1 to {MAX_REQUESTS}")))?;
                let per_s = NonZeroU64::new(doc.per_s)
                    .filter(|p| p.get() <= MAX_PERIOD_S)
                    .ok_or_else(|| ConfigError::new(at(i, "per_s"), format!("must be 1 to {MAX_PERIOD_S}")))?;
                let bucket = Bucket { name: doc.name.clone(), requests, per_s };
                match doc.scope {
                    ScopeDoc::Local => compiled.push(bucket),
                    ScopeDoc::Global if !engine => {
                        return Err(ConfigError::new(at(i, "scope"), "\"global\" needs rate_limits.global"));
                    }
                    // The protocol carries limits as 32-bit numbers.
                    ScopeDoc::Global if doc.requests > u64::from(u32::MAX) => {
                        return Err(ConfigError::new(
                            at(i, "requests"),
                            format!("a global bucket holds 1 to {}", u32::MAX),
                        ));
                    }
                    ScopeDoc::Global => global.push(bucket),
                }
            }
            let fingerprint = fingerprint(name, &compiled, &global);
            plans.push(Plan { name: name.clone(), buckets: compiled, global, fingerprint });
        }
        Ok(Self { plans })
    }

    pub fn id(&self, name: &str) -> Option<PlanId> {
        self.plans.iter().position(|p| p.name == name).map(PlanId)
    }

    pub fn get(&self, id: PlanId) -> Option<&Plan> {
        self.plans.get(id.0)
    }

    /// Whether any plan is configured (so callers have buckets to charge).
    pub fn any(&self) -> bool {
        !self.plans.is_empty()
    }
}

fn fingerprint(name: &str, local: &[Bucket], global: &[Bucket]) -> u64 {
    let mut hasher = Sha256::new();
    hasher.update(name.as_bytes());
    for (scope, bucket) in local.iter().map(|b| (0, b)).chain(global.iter().map(|b| (1, b))) {
        hasher.update([scope]);
        hasher.update(bucket.requests.get().to_le_bytes());
        hasher.update(bucket.per_s.get().to_le_bytes());
    }
    let digest = hasher.finalize();
    digest.first_chunk::<8>().map_or(0, |bytes| u64::from_le_bytes(*bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn docs(json: &str) -> BTreeMap<String, Vec<BucketDoc>> {
        serde_json::from_str(json).unwrap()
    }

    impl Plans {
        fn compile_local(docs: &BTreeMap<String, Vec<BucketDoc>>) -> Result<Self, ConfigError> {
            Self::compile(docs, false)
        }
    }

    #[test]
    fn compiles_and_finds_plans() {
        let plans = Plans::compile_local(&docs(
            r#"{"standard":[{"name":"burst","requests":20,"per_s":10},{"name":"day","requests":5000,"per_s":86400}]}"#,
        ))
        .unwrap();
        let id = plans.id("standard").unwrap();
        assert_eq!(plans.get(id).unwrap().buckets.len(), 2);
        assert!(plans.id("gold").is_none());
    }

    #[test]
    fn refuses_zero_and_duplicate_buckets() {
        let err = |json| Plans::compile_local(&docs(json)).unwrap_err().to_string();
        assert_eq!(
            err(r#"{"p":[{"name":"a","requests":0,"per_s":1}]}"#),
            format!("rate_limits.plans.p[0].requests: must be 1 to {MAX_REQUESTS}")
        );
        assert!(err(r#"{"p":[{"name":"a","requests":1,"per_s":0}]}"#).starts_with("rate_limits.plans.p[0].per_s:"));
        assert_eq!(
            err(r#"{"p":[{"name":"a","requests":1,"per_s":1},{"name":"a","requests":2,"per_s":2}]}"#),
            "rate_limits.plans.p[1].name: duplicate bucket 'a'"
        );
        assert_eq!(err(r#"{"p":[]}"#), "rate_limits.plans.p: a plan needs at least one bucket");
    }
}
