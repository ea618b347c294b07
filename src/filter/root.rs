//! The root context: compiles the policy once per VM, hands it to each
//! request, and fetches the policy's key sets and JWKS (one fetch per
//! process: the worker holding the shared lease fetches).

use super::http::HttpFilter;
use super::metrics::Metrics;
use super::shared::HostStore;
use super::signatures::EnvoySignatures;
use crate::config::{self, Policy, ProcessEnv};
use crate::fetched::{self, Document, Fetched, Kind, SourceSpec};
use crate::jwt::{host_wire, Provider, TokenCache};
use crate::source::{Outcome, SharedSource, MAX_BODY};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

/// How long a fetch may take before it counts as failed.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a worker looks at its sources: a few times per interval,
/// between 10 ms and 1 s.
const TICKS_PER_INTERVAL: u32 = 4;
const MIN_TICK: Duration = Duration::from_millis(10);
const MAX_TICK: Duration = Duration::from_secs(1);

#[derive(Default)]
pub struct Root {
    policy: Option<Rc<Policy>>,
    metrics: Option<Rc<Metrics>>,
    /// Verified tokens of this worker; emptied with every new policy.
    tokens: Rc<RefCell<TokenCache>>,
    fetched: Rc<RefCell<Option<Fetched>>>,
    sources: Vec<SourceSpec>,
    /// Names this VM as a lease holder.
    holder: u64,
    /// Fetches in flight: call token → source index.
    pending: HashMap<u32, usize>,
    signatures: Rc<EnvoySignatures>,
}

impl Root {
    fn now_ns(&self) -> u64 {
        self.get_current_time().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(0))
    }

    fn fetch(&mut self, index: usize, etag: &str) {
        let Some(spec) = self.sources.get(index) else { return };
        let mut headers =
            vec![(":method", "GET"), (":path", spec.path.as_str()), (":authority", spec.cluster.as_str())];
        if !etag.is_empty() {
            headers.push(("if-none-match", etag));
        }
        match self.dispatch_http_call(&spec.cluster, headers, None, vec![], FETCH_TIMEOUT) {
            Ok(token) => {
                self.pending.insert(token, index);
            }
            Err(status) => {
                log::warn!("edge-auth: source {}: cannot call cluster {}: {status:?}", spec.id, spec.cluster);
                self.settle(index, Outcome::Failed);
            }
        }
    }

    fn settle(&self, index: usize, outcome: Outcome) {
        let Some(spec) = self.sources.get(index) else { return };
        if let Some(metrics) = &self.metrics {
            metrics.refreshed(spec.kind, !matches!(outcome, Outcome::Failed));
        }
        SharedSource::new(&HostStore, &spec.id).finish(self.holder, self.now_ns(), spec.refresh, outcome);
    }

    /// Judges a fetched answer; only a valid document may be published.
    fn judge(&self, spec: &SourceSpec, status: &str, body: Option<Vec<u8>>, etag: Option<String>) -> Outcome {
        let Some(policy) = &self.policy else { return Outcome::Failed };
        match (status, body) {
            ("304", _) => Outcome::Unchanged,
            ("200", Some(body)) if body.len() <= MAX_BODY => match fetched::parse(policy, spec.kind, &body) {
                Ok(document) => {
                    match &document {
                        Document::Keys(keys, version) => {
                            if let Some(metrics) = &self.metrics {
                                metrics.key_set_size(keys.len());
                            }
                            log::info!(
                                "edge-auth: source {}: key set version {version:?}, {} keys",
                                spec.id,
                                keys.len()
                            );
                        }
                        Document::Jwks(keys) => {
                            log::info!("edge-auth: source {}: JWKS with {} keys", spec.id, keys.len())
                        }
                    }
                    Outcome::Fresh { body, etag }
                }
                Err(err) => {
                    log::warn!("edge-auth: source {}: invalid answer, keeping the last good one: {err}", spec.id);
                    Outcome::Failed
                }
            },
            (status, _) => {
                log::warn!("edge-auth: source {}: HTTP {status}, keeping the last good answer", spec.id);
                Outcome::Failed
            }
        }
    }
}

impl Context for Root {
    fn on_http_call_response(&mut self, token_id: u32, _num_headers: usize, body_size: usize, _num_trailers: usize) {
        let Some(index) = self.pending.remove(&token_id) else { return };
        let Some(spec) = self.sources.get(index).cloned() else { return };
        let headers = self.get_http_call_response_headers_bytes();
        let header =
            |name: &str| headers.iter().find(|(n, _)| n == name).and_then(|(_, v)| String::from_utf8(v.clone()).ok());
        // No :status means the call failed (timeout, reset, no cluster).
        let status = header(":status").unwrap_or_else(|| "none".to_owned());
        let body = if body_size > MAX_BODY { None } else { self.get_http_call_response_body(0, body_size) };
        let outcome = self.judge(&spec, &status, body, header("etag"));
        self.settle(index, outcome);
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
            log::error!("edge-auth: config: config: the plugin configuration is empty");
            return false;
        };
        let policy = match config::parse(&json, &ProcessEnv) {
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
        self.sources = fetched::sources(&policy);
        // Several looks per interval: a fetch falls due between ticks, and
        // waiting a whole tick for it would add up to an interval of delay.
        if let Some(refresh) = self.sources.iter().map(|s| s.refresh).min() {
            self.set_tick_period((refresh / TICKS_PER_INTERVAL).clamp(MIN_TICK, MAX_TICK));
        }
        *self.fetched.borrow_mut() = Some(Fetched::new(&policy));
        self.tokens.borrow_mut().clear();
        self.policy = Some(Rc::new(policy));
        self.metrics = Some(Rc::new(metrics));
        true
    }

    fn on_tick(&mut self) {
        let now_ns = self.now_ns();
        for index in 0..self.sources.len() {
            let Some(spec) = self.sources.get(index) else { continue };
            let lease = SharedSource::new(&HostStore, &spec.id).try_lease(self.holder, now_ns, spec.refresh);
            if let Some(etag) = lease {
                self.fetch(index, &etag);
            }
        }
        // Idle workers stay current too, not only those serving requests.
        if let (Some(policy), Some(fetched)) = (&self.policy, self.fetched.borrow_mut().as_mut()) {
            if fetched.sync(policy, &HostStore) {
                self.tokens.borrow_mut().clear();
            }
        }
        let keys = self.sources.iter().find(|s| s.kind == Kind::Keys);
        if let (Some(metrics), Some(spec)) = (&self.metrics, keys) {
            metrics.key_set_generation(SharedSource::new(&HostStore, &spec.id).meta().generation);
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(HttpFilter::new(
            context_id,
            self.policy.clone(),
            self.metrics.clone(),
            Rc::clone(&self.tokens),
            Rc::clone(&self.fetched),
            Rc::clone(&self.signatures),
        )))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
