//! The root context: compiles the policy into a [`Worker`] on every
//! configure, hands it to each request, and fetches the policy's key sets and
//! JWKS (one fetch per process: the worker holding the shared lease fetches).

use super::http::HttpFilter;
use super::metrics::Metrics;
use super::shared::HostStore;
use super::signatures::EnvoySignatures;
use crate::config::ProcessEnv;
use crate::fetched::Kind;
use crate::jwt::{host_wire, Provider};
use crate::policy::Policy;
use crate::remote::{Outcome, MAX_BODY};
use crate::worker::{Answer, Worker};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

/// How often a worker looks at its sources: a few times per interval,
/// between 10 ms and 1 s.
const TICKS_PER_INTERVAL: u32 = 4;
const MIN_TICK: Duration = Duration::from_millis(10);
const MAX_TICK: Duration = Duration::from_secs(1);

#[derive(Default)]
pub struct Root {
    worker: Option<Rc<Worker>>,
    metrics: Option<Rc<Metrics>>,
    /// Names this VM as a lease holder.
    holder: u64,
    /// Fetches in flight: call token → (feed index, when it started,
    /// whether it asked for a page of a whole set).
    pending: HashMap<u32, (usize, u64, bool)>,
    signatures: Rc<EnvoySignatures>,
}

impl Root {
    fn fetch(&mut self, worker: &Worker, index: usize, etag: &str) {
        let Some(feed) = worker.feeds().get(index) else { return };
        let endpoint = &feed.endpoint;
        let owned = worker.request_headers(feed, etag);
        let page = worker.fetching_page(feed);
        let headers = owned.iter().map(|(n, v)| (*n, v.as_str())).collect();
        match self.dispatch_http_call(&endpoint.cluster, headers, None, vec![], endpoint.call_timeout()) {
            Ok(token) => {
                self.pending.insert(token, (index, super::now_ns(), page));
            }
            Err(status) => {
                log::warn!("edge-auth: source {}: cannot call cluster {}: {status:?}", feed.id, endpoint.cluster);
                self.settle(worker, index, Outcome::Failed, None);
            }
        }
    }

    fn settle(&self, worker: &Worker, index: usize, outcome: Outcome, next_fetch_ns: Option<u64>) {
        let Some(feed) = worker.feeds().get(index) else { return };
        if let Some(metrics) = &self.metrics {
            metrics.refreshed(feed.kind, !matches!(outcome, Outcome::Failed | Outcome::Resync));
        }
        let shared = feed.shared(&HostStore);
        shared.finish(self.holder, super::now_ns(), feed.endpoint.refresh, outcome, next_fetch_ns);
    }

    /// Fetches every source that is due and not leased to another worker.
    fn fetch_due(&mut self, worker: &Worker) {
        let now_ns = super::now_ns();
        for (index, feed) in worker.feeds().iter().enumerate() {
            let endpoint = &feed.endpoint;
            if let Some(etag) =
                feed.shared(&HostStore).try_lease(self.holder, now_ns, endpoint.refresh, endpoint.lease())
            {
                self.fetch(worker, index, &etag);
            }
        }
    }

    fn gauges(&self, worker: &Worker) {
        let Some(metrics) = &self.metrics else { return };
        if let Some(feed) = worker.feeds().iter().find(|f| f.kind == Kind::Keys) {
            metrics.key_set_generation(feed.shared(&HostStore).meta().generation);
        }
        if let Some(keys) = worker.fetched_keys(&HostStore) {
            metrics.key_set_size(keys);
        }
    }
}

impl Context for Root {
    fn on_http_call_response(&mut self, token_id: u32, _num_headers: usize, body_size: usize, _num_trailers: usize) {
        let Some((index, started_ns, page)) = self.pending.remove(&token_id) else { return };
        let Some(worker) = self.worker.clone() else { return };
        let Some(feed) = worker.feeds().get(index) else { return };
        // A page asked for by the worker of an earlier configuration: its
        // pages before are gone, so the load starts again.
        if page && !worker.fetching_page(feed) {
            self.settle(&worker, index, Outcome::Failed, None);
            return;
        }
        let headers = self.get_http_call_response_headers_bytes();
        let header =
            |name: &str| headers.iter().find(|(n, _)| n == name).and_then(|(_, v)| String::from_utf8(v.clone()).ok());
        // No :status means the call failed (timeout, reset, no cluster).
        let status = header(":status").unwrap_or_else(|| "none".to_owned());
        let body = if body_size > MAX_BODY { None } else { self.get_http_call_response_body(0, body_size) };
        // RFC 7240: a server that held the call says so.
        // The last page of a whole set re-arms a long poll too.
        let applied = header("preference-applied").is_some_and(|v| v.trim_start().starts_with("wait"))
            || worker.fetching_page(feed);
        let rearm = feed.endpoint.rearm(&status, applied, started_ns, super::now_ns());
        let answer = Answer { status: &status, body, etag: header("etag") };
        let outcome = worker.assess(feed, answer, &HostStore);
        // A whole set coming page by page: the next page at once, under
        // the same lease.
        if outcome == Outcome::Page {
            if feed.shared(&HostStore).renew(self.holder, super::now_ns(), feed.endpoint.lease()) {
                self.fetch(&worker, index, "");
            }
            return;
        }
        self.settle(&worker, index, outcome, rearm);
        worker.sync(&HostStore);
        self.gauges(&worker);
        // A long poll goes straight back to the server.
        if rearm.is_some() {
            self.fetch_due(&worker);
        }
    }
}

impl RootContext for Root {
    fn on_vm_start(&mut self, _vm_configuration_size: usize) -> bool {
        log::info!("edge-auth {} starting", crate::VERSION);
        let mut holder = [0u8; 8];
        // Distinct holders only keep two workers from mistaking each other's
        // lease; a clash costs at most one duplicate fetch.
        let _ = getrandom::fill(&mut holder);
        self.holder = u64::from_le_bytes(holder) | 1;
        true
    }

    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let Some(json) = self.get_plugin_configuration() else {
            log::error!("edge-auth: config: the plugin configuration is empty");
            return false;
        };
        let policy = match Policy::from_json(&json, &ProcessEnv) {
            Ok(policy) => policy,
            Err(err) => {
                log::error!("edge-auth: config: {err}");
                return false;
            }
        };
        if let Some(index) = policy.jwt_providers.iter().position(Provider::needs_host_signatures) {
            if !self.signatures.available() {
                log::error!(
                    "edge-auth: config: jwt.providers[{index}].algorithms: RS256 and ES256 need Envoy's {} \
                     foreign function, which this Envoy lacks",
                    host_wire::FUNCTION
                );
                return false;
            }
        }
        let Some(metrics) = Metrics::define() else {
            log::error!("edge-auth: could not define metrics");
            return false;
        };
        log::info!(
            "edge-auth: policy loaded ({:?} mode, {} inline keys, {} routes)",
            policy.mode,
            policy.api_keys.as_ref().map_or(0, |k| k.inline.len()),
            policy.routes.len()
        );
        let worker = Worker::new(policy);
        // Several looks per interval: a fetch falls due between ticks, and
        // waiting a whole tick for it would add up to an interval of delay.
        if let Some(refresh) = worker.feeds().iter().map(|f| f.endpoint.refresh).min() {
            self.set_tick_period((refresh / TICKS_PER_INTERVAL).clamp(MIN_TICK, MAX_TICK));
        }
        self.worker = Some(Rc::new(worker));
        self.metrics = Some(Rc::new(metrics));
        true
    }

    fn on_tick(&mut self) {
        let Some(worker) = self.worker.clone() else { return };
        self.fetch_due(&worker);
        // Idle workers stay current too, not only those serving requests.
        worker.sync(&HostStore);
        self.gauges(&worker);
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(HttpFilter::new(
            context_id,
            self.worker.clone(),
            self.metrics.clone(),
            Rc::clone(&self.signatures),
        )))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
