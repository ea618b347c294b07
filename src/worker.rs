//! One worker's state and one request through it, whatever the host.
//!
//! A host (the proxy-wasm glue, the native module) builds a [`Worker`] each
//! time the policy is configured and, for every request, hands
//! [`Worker::handle`] the request headers and its [`Host`] services; it then
//! removes the headers [`Handled::spoofed`] names and applies
//! [`Handled::effects`]. Nothing here knows which host it runs in.

use crate::config::Mode;
use crate::decision::{decide, Decision, Request, Runtime, Verdict};
use crate::denial::Code;
use crate::effects::{self, Effects};
use crate::fetched::{self, Feed, Fetched};
use crate::jwt::{SignatureHost, TokenCache};
use crate::policy::Policy;
use crate::rate_limit::{ChargeResult, Placement};
use crate::store::SharedStore;
use std::cell::{OnceCell, RefCell};

/// Counters the host keeps (Envoy stats).
pub trait Stats {
    fn allowed(&self);
    fn denied(&self, code: Code, shadow: bool);
    fn rate_limit(&self, result: &ChargeResult);
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
    pub effects: Effects<'w>,
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
        self.record(&decision, host);
        Handled {
            spoofed: effects::spoofed(&self.policy, request.headers),
            effects: effects::of(&self.policy, &decision),
        }
    }

    fn record(&self, decision: &Decision<'_>, host: &Host<'_>) {
        if let Some(rate) = &decision.rate {
            host.stats.rate_limit(rate);
        }
        let Verdict::Deny(denial) = &decision.verdict else {
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
            decision.route.map_or_else(|| "default".to_owned(), |i| format!("routes[{i}]")),
            decision.key_id.unwrap_or("-"),
            decision.detail.map_or_else(|| "-".to_owned(), |d| d.to_string()),
        );
    }
}
