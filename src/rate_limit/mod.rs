//! Rate-limit plans: named sets of token buckets.

mod plan;

pub use plan::{Bucket, Plan, PlanId, Plans};
