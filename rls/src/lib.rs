//! `edge-auth rls`: Envoy's rate-limit service (`envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`)
//! over Redis, with exact token buckets shared by any number of replicas.
//!
//! # Descriptors
//!
//! Each descriptor names one bucket with the entries `edge_auth_caller`,
//! `edge_auth_bucket`, and its limit: `requests` tokens refilled continuously over
//! `per_s` seconds, given either as the entries `requests` and `per_s` or as the
//! descriptor's `limit` override (`requests_per_unit` per SECOND, MINUTE, HOUR or DAY;
//! not both). Any other entry, a repeated or missing one, a value that is not plain
//! decimal digits, zero, or a limit outside the exact range answers INVALID_ARGUMENT
//! with the reason. Envoy's native `envoy.filters.http.ratelimit` builds these entries
//! with `generic_key` / `request_headers` actions and their `descriptor_key`.
//!
//! A request costs each bucket its descriptor's `hits_addend` when set (0 only looks),
//! else the request's `hits_addend`, else 1. All of a request's buckets are charged in
//! one Redis script, all or nothing: a refused request takes nothing from any bucket.
//! Any domain is served; the domain is part of every key.
//!
//! # Exactness
//!
//! The script reads Redis's `TIME` and keeps each bucket as an integer count of
//! units, `per_token = per_s·10^6 / gcd(requests, per_s·10^6)` units a token, refilled
//! by a whole number of units every microsecond, so a bucket of N admits exactly N of a
//! burst whatever the number of replicas. Lua's numbers are doubles: a limit is
//! accepted when `lcm(requests, per_s·10^6) ≤ 2^52` and `requests < 2^32`, which
//! always holds for `requests × per_s ≤ 4.5·10^9`.
//!
//! # Answers
//!
//! `limit_remaining` is the whole tokens left after the request; `duration_until_reset`
//! is, for a descriptor that fits, the time until its bucket is full again, and for one
//! that does not, the time until it would fit (the filter's `retry-after`).
//! Redis unreachable or slow (1 s) answers UNAVAILABLE, a Redis error INTERNAL.
//!
//! # Keys
//!
//! `rl:{<domain>:<caller>}:<bucket>:<requests>/<per_s>`, each name escaped: one
//! caller's buckets share a Redis Cluster slot. On a cluster, a request naming
//! several callers is INVALID_ARGUMENT (one script cannot span slots); a single
//! server charges it. A key expires when its bucket would be full again.
//!
//! See `DESIGN.md` beside this crate for the reasoning.

mod args;
mod descriptor;
mod error;
mod limit;
mod metrics;
pub mod proto;
mod script;
mod server;
mod service;
mod status;
mod store;

pub use args::Options;
pub use error::Error;
pub use server::{bind, Listening};

use tokio::signal::unix::{signal, SignalKind};

/// `edge-auth rls ARGS`: serves until SIGINT or SIGTERM, then drains in-flight calls.
pub fn main(args: &[&str]) -> Result<(), Error> {
    let options = Options::parse(args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(Error::Runtime)?;
    runtime.block_on(async {
        let mut interrupt = signal(SignalKind::interrupt()).map_err(Error::Runtime)?;
        let mut terminate = signal(SignalKind::terminate()).map_err(Error::Runtime)?;
        let listening = bind(&options).await?;
        let metrics = listening.metrics_addr().map(|a| format!(", metrics on http://{a}/metrics")).unwrap_or_default();
        let grpc = listening.grpc_addr().unwrap_or(options.listen);
        eprintln!("edge-auth rls: serving on {grpc}{metrics} ({} redis url(s))", options.redis.len());
        let stop = async {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
            eprintln!("edge-auth rls: signalled; draining");
        };
        listening.serve(stop).await?;
        eprintln!("edge-auth rls: stopped");
        Ok(())
    })
}

#[cfg(test)]
#[path = "../tests/support/mod.rs"]
mod support;

#[cfg(test)]
mod script_model;
