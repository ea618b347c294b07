//! Per-caller token buckets, exact across all Envoy workers.

mod gcra;
mod plan;
mod table;

pub use plan::{Bucket, Plan, PlanId, Plans};
pub use table::{charge, CallerId, Charge, ChargeResult, Quota, SLOTS};
