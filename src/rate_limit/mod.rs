//! Per-caller token buckets: local ones exact across all workers of one
//! Envoy (shared data), global ones exact across a fleet (an engine speaking
//! Envoy's rate-limit service protocol).

mod gcra;
pub mod global;
pub mod lease;
mod placement;
mod plan;
pub mod rls_wire;
mod table;

pub use global::{Engine, FailureMode};
pub use placement::{CallerId, Placement};
pub use plan::{Bucket, Plan, PlanId, Plans};
pub use table::{charge, refund, Charge, ChargeResult, Quota, SLOTS};
