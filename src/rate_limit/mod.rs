//! Per-caller token buckets, exact across all Envoy workers.

mod gcra;
mod placement;
mod plan;
mod table;

pub use placement::{CallerId, Placement};
pub use plan::{Bucket, Plan, PlanId, Plans};
pub use table::{charge, Charge, ChargeResult, Quota, SLOTS};
