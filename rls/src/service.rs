//! `ShouldRateLimit`: validate, charge in one script call, answer.

use crate::descriptor::{self, Charge};
use crate::metrics::{Answer, Metrics};
use crate::proto::rate_limit_service_server::RateLimitService;
use crate::proto::{RateLimitRequest, RateLimitResponse};
use crate::status;
use crate::store::{Store, StoreError};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tonic::{Request, Response, Status};

pub struct RateLimiter {
    store: Store,
    metrics: Arc<Metrics>,
    /// Redis errors are logged once per outage, not once per call.
    failing: AtomicBool,
}

impl RateLimiter {
    pub fn new(store: Store, metrics: Arc<Metrics>) -> Self {
        Self { store, metrics, failing: AtomicBool::new(false) }
    }

    fn validate(&self, request: &RateLimitRequest) -> Result<Vec<Charge>, Status> {
        let charges = descriptor::charges(request).map_err(|e| Status::invalid_argument(e.to_string()))?;
        if self.store.is_cluster() {
            if let Some((first, rest)) = charges.split_first() {
                if rest.iter().any(|c| c.caller != first.caller) {
                    return Err(Status::invalid_argument(
                        "descriptors name several callers; a Redis Cluster charges one caller's buckets atomically, \
                         never several",
                    ));
                }
            }
        }
        Ok(charges)
    }

    fn note_redis(&self, result: &Result<crate::script::Outcome, StoreError>) {
        match result {
            Err(e) if !self.failing.swap(true, Ordering::Relaxed) => eprintln!("edge-auth rls: {e}"),
            Ok(_) if self.failing.swap(false, Ordering::Relaxed) => eprintln!("edge-auth rls: redis answers again"),
            _ => {}
        }
    }
}

#[tonic::async_trait]
impl RateLimitService for RateLimiter {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        let charges = self.validate(request.get_ref()).inspect_err(|_| self.metrics.count(Answer::Invalid))?;
        let started = Instant::now();
        let result = self.store.charge(&charges).await;
        self.metrics.observe_redis(started.elapsed());
        self.note_redis(&result);
        match result {
            Ok(outcome) => {
                self.metrics.count(if outcome.admitted { Answer::Ok } else { Answer::OverLimit });
                Ok(Response::new(status::response(&charges, &outcome)))
            }
            Err(e) => {
                self.metrics.count(Answer::Error);
                Err(match e {
                    StoreError::Unavailable(why) => Status::unavailable(why),
                    StoreError::Failed(why) => Status::internal(why),
                })
            }
        }
    }
}
