//! A filter configuration: the policy document every thread compiles, its
//! metrics, and the fetching of key sets and JWKS (one fetch per process,
//! on Envoy's main thread, through the configuration's HTTP callouts; a
//! module thread only wakes the main thread at the policy's pace).

use super::ffi::{Callout, CalloutAnswer, ConfigHandle, Scheduler};
use super::metrics::Metrics;
use super::store::STORE;
use super::workers;
use crate::config::ProcessEnv;
use crate::fetched::{self, Kind};
use crate::policy::Policy;
use crate::remote::Outcome;
use crate::worker::{Answer, Worker};
use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// The filter name Envoy's `filter_name` must give.
pub const FILTER_NAME: &[u8] = b"edge_auth";

/// How often the main thread looks at the sources: a few times per
/// interval, between 10 ms and 1 s (as the wasm build's tick).
const TICKS_PER_INTERVAL: u32 = 4;
const MIN_TICK: Duration = Duration::from_millis(10);
const MAX_TICK: Duration = Duration::from_secs(1);

/// What every thread reads: `Send + Sync`, shared by the filters.
pub struct Shared {
    /// The policy document, compiled by each thread into its worker.
    pub json: Vec<u8>,
    pub metrics: Metrics,
    /// Names this process as a fetch lease holder.
    holder: u64,
    /// Fetches in flight: callout id → (feed index, when it started,
    /// whether it asked for a page of a whole set).
    pending: Mutex<HashMap<u64, (usize, u64, bool)>>,
}

pub struct Config {
    pub shared: Arc<Shared>,
    /// Wakes the main thread to fetch; stopped before the config goes.
    _ticker: Option<Ticker>,
}

impl Config {
    /// Compiles and checks the policy; `None` (Envoy refuses the
    /// configuration) with one log line naming the field otherwise.
    pub fn new(envoy: &ConfigHandle, name: &[u8], json: &[u8]) -> Option<Self> {
        log::info!("edge-auth {} (native module, ABI v0.2.0 for Envoy 1.40) configuring", crate::VERSION);
        if name != FILTER_NAME {
            log::error!(
                "edge-auth: config: filter_name: expected \"edge_auth\", got {:?}",
                String::from_utf8_lossy(name)
            );
            return None;
        }
        let policy = match Policy::from_json(json, &ProcessEnv) {
            Ok(policy) => policy,
            Err(err) => {
                log::error!("edge-auth: config: {err}");
                return None;
            }
        };
        let Some(metrics) = Metrics::define(envoy) else {
            log::error!("edge-auth: could not define metrics");
            return None;
        };
        log::info!(
            "edge-auth: policy loaded ({:?} mode, {} inline keys, {} routes)",
            policy.mode,
            policy.api_keys.as_ref().map_or(0, |k| k.inline.len()),
            policy.routes.len()
        );
        let mut holder = [0u8; 8];
        // Distinct holders only keep two configurations from mistaking each
        // other's lease; a clash costs at most one duplicate fetch.
        let _ = getrandom::fill(&mut holder);
        let shared = Arc::new(Shared {
            json: json.to_vec(),
            metrics,
            holder: u64::from_le_bytes(holder) | 1,
            pending: Mutex::default(),
        });
        let refresh = fetched::feeds(&policy).iter().map(|f| f.endpoint.refresh).min();
        let ticker = match refresh {
            None => None,
            Some(refresh) => {
                let Some(scheduler) = envoy.scheduler() else {
                    log::error!("edge-auth: config: Envoy gave no scheduler for the key sources");
                    return None;
                };
                Some(Ticker::start(scheduler, (refresh / TICKS_PER_INTERVAL).clamp(MIN_TICK, MAX_TICK)))
            }
        };
        Some(Self { shared, _ticker: ticker })
    }

    /// On the main thread: fetches what is due, and keeps the main thread's
    /// worker current.
    pub fn on_tick(&self, envoy: &ConfigHandle) {
        let Some(worker) = workers::worker(&self.shared) else { return };
        self.fetch_due(envoy, &worker);
        worker.sync(&*STORE);
        self.gauges(envoy, &worker);
    }

    /// Fetches every source that is due and not leased to another thread.
    fn fetch_due(&self, envoy: &ConfigHandle, worker: &Worker) {
        let now_ns = super::now_ns();
        for (index, feed) in worker.feeds().iter().enumerate() {
            let endpoint = &feed.endpoint;
            if let Some(etag) =
                feed.shared(&*STORE).try_lease(self.shared.holder, now_ns, endpoint.refresh, endpoint.lease())
            {
                self.fetch(envoy, worker, index, &etag);
            }
        }
    }

    fn gauges(&self, envoy: &ConfigHandle, worker: &Worker) {
        if let Some(feed) = worker.feeds().iter().find(|f| f.kind == Kind::Keys) {
            self.shared.metrics.key_set_generation(envoy, feed.shared(&*STORE).meta().generation);
        }
        if let Some(keys) = worker.fetched_keys(&*STORE) {
            self.shared.metrics.key_set_size(envoy, keys);
        }
    }

    fn fetch(&self, envoy: &ConfigHandle, worker: &Worker, index: usize, etag: &str) {
        let Some(feed) = worker.feeds().get(index) else { return };
        let endpoint = &feed.endpoint;
        let owned = worker.request_headers(feed, etag);
        let page = worker.fetching_page(feed);
        let headers: Vec<(&str, &str)> = owned.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let timeout_ms = u64::try_from(endpoint.call_timeout().as_millis()).unwrap_or(u64::MAX).max(1);
        let callout = Callout { cluster: &endpoint.cluster, headers: &headers, body: &[], timeout_ms };
        match envoy.callout(&callout) {
            Some(id) => {
                if let Ok(mut pending) = self.shared.pending.lock() {
                    pending.insert(id, (index, super::now_ns(), page));
                }
            }
            None => {
                log::warn!("edge-auth: source {}: cannot call cluster {}", feed.id, endpoint.cluster);
                self.settle(envoy, worker, index, Outcome::Failed, None);
            }
        }
    }

    /// On the main thread: a fetch answered (or failed). A long poll goes
    /// straight back to the server.
    pub fn on_fetched(&self, envoy: &ConfigHandle, id: u64, answer: CalloutAnswer) {
        let pending = self.shared.pending.lock().ok().and_then(|mut pending| pending.remove(&id));
        let (Some((index, started_ns, page)), Some(worker)) = (pending, workers::worker(&self.shared)) else {
            return;
        };
        let Some(feed) = worker.feeds().get(index) else { return };
        // A page asked for by the worker of an earlier configuration: its
        // pages before are gone, so the load starts again.
        if page && !worker.fetching_page(feed) {
            self.settle(envoy, &worker, index, Outcome::Failed, None);
            return;
        }
        // No :status means the call failed (timeout, reset, no cluster).
        let status = if answer.ok { answer.header(":status").unwrap_or("none") } else { "none" }.to_owned();
        // RFC 7240: a server that held the call says so.
        // The last page of a whole set re-arms a long poll too.
        let applied = answer.header("preference-applied").is_some_and(|v| v.trim_start().starts_with("wait"))
            || worker.fetching_page(feed);
        let rearm = feed.endpoint.rearm(&status, applied, started_ns, super::now_ns());
        let etag = answer.header("etag").map(str::to_owned);
        let body = answer.ok.then_some(answer.body);
        let outcome = worker.assess(feed, Answer { status: &status, body, etag }, &*STORE);
        // A whole set coming page by page: the next page at once, under
        // the same lease.
        if outcome == Outcome::Page {
            if feed.shared(&*STORE).renew(self.shared.holder, super::now_ns(), feed.endpoint.lease()) {
                self.fetch(envoy, &worker, index, "");
            }
            return;
        }
        self.settle(envoy, &worker, index, outcome, rearm);
        worker.sync(&*STORE);
        self.gauges(envoy, &worker);
        if rearm.is_some() {
            self.fetch_due(envoy, &worker);
        }
    }

    fn settle(
        &self,
        envoy: &ConfigHandle,
        worker: &Worker,
        index: usize,
        outcome: Outcome,
        next_fetch_ns: Option<u64>,
    ) {
        let Some(feed) = worker.feeds().get(index) else { return };
        self.shared.metrics.refreshed(envoy, feed.kind, !matches!(outcome, Outcome::Failed | Outcome::Resync));
        let shared = feed.shared(&*STORE);
        shared.finish(self.shared.holder, super::now_ns(), feed.endpoint.refresh, outcome, next_fetch_ns);
    }
}

/// A module thread that wakes the main thread every period (and once at
/// once); dropping it stops and joins the thread, then deletes the
/// scheduler, so no wake-up outlives the configuration.
struct Ticker {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
    /// Dropped after the thread is joined, so deleted on the main thread.
    _scheduler: Arc<Scheduler>,
}

impl Ticker {
    fn start(scheduler: Scheduler, period: Duration) -> Self {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let flag = Arc::clone(&stop);
        let scheduler = Arc::new(scheduler);
        let waker = Arc::clone(&scheduler);
        let thread = std::thread::Builder::new()
            .name("edge-auth-tick".to_owned())
            .spawn(move || {
                let (lock, wake) = &*flag;
                let Ok(mut stopped) = lock.lock() else { return };
                while !*stopped {
                    waker.commit();
                    stopped = match wake.wait_timeout(stopped, period) {
                        Ok((guard, _)) => guard,
                        Err(_) => return,
                    };
                }
            })
            .ok();
        if thread.is_none() {
            log::error!("edge-auth: could not start the key-source ticker: sources will not refresh");
        }
        Self { stop, thread, _scheduler: scheduler }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        let (lock, wake) = &*self.stop;
        if let Ok(mut stopped) = lock.lock() {
            *stopped = true;
        }
        wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
