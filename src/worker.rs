//! One worker's state and one request through it, whatever the host.
//!
//! A host (the proxy-wasm glue, the native module) builds a [`Worker`] each
//! time the policy is configured and, for every request, hands
//! [`Worker::handle`] the request headers and its [`Host`] services; it then
//! removes the headers [`Handled::spoofed`] names and applies
//! [`Handled::effects`]. Nothing here knows which host it runs in.

use crate::api_key::KeySet;
use crate::config::Mode;
use crate::decision::{decide, Detail, Request, Runtime, Verdict};
use crate::denial::{Code, Denial};
use crate::effects::{self, Effects};
use crate::fetched::{self, Feed, Fetched};
use crate::jwt::{SignatureHost, TokenCache};
use crate::policy::Policy;
use crate::rate_limit::global::{self, Ask, Global};
use crate::rate_limit::lease;
use crate::rate_limit::rls_wire::{self, DescriptorStatus, RateLimitResponse};
use crate::rate_limit::{self, ChargeResult, Engine, FailureMode, Placement, Quota};
use crate::remote::Outcome;
use crate::store::SharedStore;
use std::cell::{OnceCell, RefCell};

/// Counters the host keeps (Envoy stats).
pub trait Stats {
    fn allowed(&self);
    fn denied(&self, code: Code, shadow: bool);
    fn rate_limit(&self, result: &ChargeResult);
    fn engine(&self, event: EngineEvent);
}

/// What happened on the way to the fleet-wide engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineEvent {
    /// A call was made.
    Asked,
    /// A leased token was spent instead of a call.
    Leased,
    /// A call failed (the failure mode decided).
    Failed,
    /// Granted tokens that could not be leased.
    Stranded(u64),
}

/// What a request needs from its host.
pub struct Host<'a> {
    /// Unix nanoseconds.
    pub now_ns: u64,
    pub store: &'a dyn SharedStore,
    pub signatures: &'a dyn SignatureHost,
    pub stats: &'a dyn Stats,
    /// Names the request in logs.
    pub context_id: u32,
}

/// A worker's state, rebuilt whenever the policy is configured: the policy,
/// its fetched documents as this worker last read them, and the tokens this
/// worker has verified.
pub struct Worker {
    policy: Policy,
    feeds: Vec<Feed>,
    fetched: RefCell<Fetched>,
    tokens: RefCell<TokenCache>,
    /// The process's placement secret, read from shared data once a plan
    /// needs it.
    placement: OnceCell<Placement>,
}

/// What the host does with a request.
pub struct Handled<'w> {
    /// Filter-owned headers the client sent, as it spelled them: remove
    /// them first.
    pub spoofed: Vec<String>,
    pub next: Next<'w>,
}

impl Worker {
    pub fn new(policy: Policy) -> Self {
        let feeds = fetched::feeds(&policy);
        let fetched = RefCell::new(Fetched::new(&feeds));
        Self { policy, feeds, fetched, tokens: RefCell::default(), placement: OnceCell::new() }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The documents this policy fetches, in a stable order.
    pub fn feeds(&self) -> &[Feed] {
        &self.feeds
    }

    /// Reads what other workers fetched since this one last looked. Tokens
    /// verified with a key that is now gone must not outlive it in a cache,
    /// so a changed JWKS empties the token cache.
    pub fn sync(&self, store: &dyn SharedStore) {
        if self.fetched.borrow_mut().sync(&self.policy, store) {
            self.tokens.borrow_mut().clear();
        }
    }

    /// Judges what `feed`'s server answered, against the documents this
    /// worker holds (see [`Fetched::assess`]); syncs first.
    pub fn assess(&self, feed: &Feed, answer: Answer, store: &dyn SharedStore) -> Outcome {
        self.sync(store);
        let meta = feed.shared(store).meta();
        self.fetched.borrow().assess(&self.policy, feed, answer.status, answer.body, answer.etag, &meta)
    }

    /// Keys in the fetched key set, once loaded.
    pub fn fetched_keys(&self) -> Option<usize> {
        self.fetched.borrow().keys().ok().flatten().map(KeySet::len)
    }

    /// Decides a request, counts and logs the decision, and says what to do.
    pub fn handle<N, V>(&self, request: &Request<'_, N, V>, host: &Host<'_>) -> Handled<'_>
    where
        N: AsRef<str>,
        V: AsRef<[u8]>,
    {
        self.sync(host.store);
        if self.placement.get().is_none() && self.policy.plans.any() {
            if let Some(placement) = Placement::shared(host.store) {
                let _ = self.placement.set(placement);
            }
        }
        let fetched = self.fetched.borrow();
        let runtime = Runtime {
            now_ns: host.now_ns,
            store: host.store,
            tokens: &self.tokens,
            fetched: &fetched,
            signatures: host.signatures,
            placement: self.placement.get(),
        };
        let decision = decide(&self.policy, request, &runtime);
        if let Some(rate) = &decision.rate {
            host.stats.rate_limit(rate);
        }
        let spoofed = effects::spoofed(&self.policy, request.headers);
        let effects = effects::of(&self.policy, &decision);
        let local = decision.quota();
        let next = match (decision.global, &self.policy.engine) {
            (Some(Global::Ask(ask)), Some(engine)) => {
                host.stats.engine(EngineEvent::Asked);
                let pending = Pending {
                    forward: effects.into_owned(),
                    local,
                    route: decision.route,
                    key_id: decision.key_id.map(str::to_owned),
                };
                Next::Ask(EngineCall::new(&self.policy, engine, ask, pending))
            }
            (global, _) => {
                if global == Some(Global::Leased) {
                    host.stats.engine(EngineEvent::Leased);
                }
                let denial = match &decision.verdict {
                    Verdict::Allow(_) => None,
                    Verdict::Deny(denial) => Some(denial),
                };
                self.record(denial, decision.route, decision.key_id, decision.detail, host);
                Next::Apply(effects)
            }
        };
        Handled { spoofed, next }
    }

    /// Finishes a request once the engine answered (`Err` when the call
    /// failed: timeout, reset, an error status).
    pub fn settle(&self, call: EngineCall, answer: Result<&[u8], CallFailed>, host: &Host<'_>) -> Settled {
        let EngineCall { ask, pending, .. } = call;
        // Both exist: a call is made only for a plan with global buckets,
        // which compiles only with an engine.
        let (Some(plan), Some(engine)) = (self.policy.plans.get(ask.plan), &self.policy.engine) else {
            return Settled::Done(self.refuse(&pending, Code::RateLimitUnavailable.into(), None, host));
        };
        let response = answer.ok().and_then(|bytes| RateLimitResponse::decode(bytes).ok());
        match response {
            Some(response) if response.overall == rls_wire::Code::Ok => {
                let stranded = lease::grant(host.store, plan, ask.caller, ask.hits, host.now_ns);
                if stranded > 0 {
                    host.stats.engine(EngineEvent::Stranded(stranded));
                }
                // Leased tokens are still the caller's to spend.
                let leased = u64::from(ask.hits).saturating_sub(1);
                let global = response.statuses.iter().map(|s| quota_of(s, s.remaining.saturating_add(leased)));
                let quota = pending.local.into_iter().chain(global).min_by_key(|q| q.remaining);
                self.record(None, pending.route, pending.key_id.as_deref(), None, host);
                Settled::Done(with_quota(pending.forward, quota))
            }
            Some(response) if response.overall == rls_wire::Code::OverLimit && ask.hits > 1 => {
                // A lease that no longer fits may still leave room for this request.
                let again = Ask { hits: 1, ..ask };
                host.stats.engine(EngineEvent::Asked);
                Settled::Again(EngineCall::new(&self.policy, engine, again, pending))
            }
            Some(response) if response.overall == rls_wire::Code::OverLimit => {
                let over = response.statuses.iter().filter(|s| s.code == rls_wire::Code::OverLimit);
                let retry_ns = over.clone().map(|s| s.until_reset_ns).max().unwrap_or(0);
                let quota = over.map(|s| quota_of(s, 0)).next();
                rate_limit::refund(host.store, plan, ask.caller, host.now_ns);
                let denial = Denial::rate_limited(retry_ns.div_ceil(NANOS));
                Settled::Done(self.refuse(&pending, denial, quota, host))
            }
            // No answer, an error, or one that says nothing: the failure mode decides.
            _ => {
                host.stats.engine(EngineEvent::Failed);
                match engine.failure_mode {
                    FailureMode::Allow => {
                        self.record(None, pending.route, pending.key_id.as_deref(), None, host);
                        Settled::Done(pending.forward)
                    }
                    FailureMode::Deny => {
                        rate_limit::refund(host.store, plan, ask.caller, host.now_ns);
                        Settled::Done(self.refuse(&pending, Code::RateLimitUnavailable.into(), None, host))
                    }
                }
            }
        }
    }

    fn refuse(&self, pending: &Pending, denial: Denial, quota: Option<Quota>, host: &Host<'_>) -> Effects<'static> {
        self.record(Some(&denial), pending.route, pending.key_id.as_deref(), None, host);
        effects::denied(&self.policy, &denial, quota)
    }

    /// Counts a decision and logs a denial (one line, never the credential).
    fn record(
        &self,
        denial: Option<&Denial>,
        route: Option<usize>,
        key_id: Option<&str>,
        detail: Option<Detail>,
        host: &Host<'_>,
    ) {
        let Some(denial) = denial else {
            host.stats.allowed();
            return;
        };
        let shadow = self.policy.mode == Mode::Shadow;
        host.stats.denied(denial.code, shadow);
        log::info!(
            "edge-auth: {} {} ctx={} route={} key={} reason={}",
            if shadow { "shadow-deny" } else { "deny" },
            denial.code.as_str(),
            host.context_id,
            route.map_or_else(|| "default".to_owned(), |i| format!("routes[{i}]")),
            key_id.unwrap_or("-"),
            detail.map_or_else(|| "-".to_owned(), |d| d.to_string()),
        );
    }
}

const NANOS: u64 = 1_000_000_000;

/// A global bucket's state as the engine reported it, with `remaining` tokens.
fn quota_of(status: &DescriptorStatus, remaining: u64) -> Quota {
    Quota { limit: status.limit, remaining, reset_s: status.until_reset_ns.div_ceil(NANOS) }
}

/// Forwarding effects with the `x-ratelimit-*` of `quota` instead of theirs.
fn with_quota(effects: Effects<'static>, quota: Option<Quota>) -> Effects<'static> {
    match effects {
        Effects::Forward { set, remove, .. } => {
            Effects::Forward { set, remove, response: quota.map(effects::quota_headers).unwrap_or_default() }
        }
        reply @ Effects::Reply(_) => reply,
    }
}

/// A source's answer to a fetch.
pub struct Answer<'a> {
    /// `none` when the call itself failed.
    pub status: &'a str,
    pub body: Option<Vec<u8>>,
    pub etag: Option<String>,
}

/// What the host does next with a request.
pub enum Next<'w> {
    /// Apply these effects now.
    Apply(Effects<'w>),
    /// Pause the request, make this engine call, and hand its answer to
    /// [`Worker::settle`].
    Ask(EngineCall),
}

/// A gRPC call to the fleet-wide engine, and the request waiting on it.
pub struct EngineCall {
    pub cluster: String,
    pub timeout: std::time::Duration,
    /// The serialised `RateLimitRequest`.
    pub message: Vec<u8>,
    ask: Ask,
    pending: Pending,
}

impl EngineCall {
    fn new(policy: &Policy, engine: &Engine, ask: Ask, pending: Pending) -> Self {
        let message = policy.plans.get(ask.plan).map(|plan| global::request(plan, &ask.name, ask.hits));
        Self {
            cluster: engine.cluster.clone(),
            timeout: engine.timeout,
            message: message.unwrap_or_default(),
            ask,
            pending,
        }
    }
}

/// What a request that waits on the engine carries.
struct Pending {
    /// The effects if the engine admits the request.
    forward: Effects<'static>,
    /// The caller's most constrained local bucket.
    local: Option<Quota>,
    route: Option<usize>,
    key_id: Option<String>,
}

/// An engine call that produced no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallFailed;

/// How a request that waited on the engine ends.
pub enum Settled {
    Done(Effects<'static>),
    /// Ask again (a lease the engine refused; now for the request alone).
    Again(EngineCall),
}
