//! One worker's state and one request through it, whatever the host.
//!
//! A host (the proxy-wasm glue, the native module) builds a [`Worker`] each
//! time the policy is configured and, for every request, hands
//! [`Worker::handle`] the request headers and its [`Host`] services; it then
//! removes the headers [`Handled::spoofed`] names and applies
//! [`Handled::effects`]. Nothing here knows which host it runs in.

use crate::config::Mode;
use crate::decision::{decide, BodyCheck, Decision, Detail, Identity, Request, Runtime, Verdict};
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
use crate::route::CredentialKind;
use crate::store::SharedStore;
use crate::webhook::WebhookError;
use std::borrow::Cow;
use std::cell::{OnceCell, RefCell};

/// Counters the host keeps (Envoy stats).
pub trait Stats {
    fn allowed(&self);
    /// A denial (or a would-be one in shadow mode) on the route `route`
    /// names (see [`crate::route::label`]).
    fn denied(&self, code: Code, shadow: bool, route: &str);
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

/// Where a request's decision is published for access logs (Envoy filter
/// state), when the policy asks for it.
pub trait AccessLog {
    /// Sets `edge_auth.<field>` for this request.
    fn set(&self, field: &str, value: &str);
}

/// Who a request proved to be, as far as the decision got: for access logs.
#[derive(Debug, Clone, Copy)]
struct Caller<'a> {
    org: Option<&'a str>,
    account: Option<&'a str>,
    key_id: Option<&'a str>,
}

impl<'a> Caller<'a> {
    fn of(decision: &'a Decision<'_>) -> Self {
        let identity = match &decision.verdict {
            Verdict::Allow(identity) => identity.as_ref(),
            Verdict::Deny(_) => None,
        };
        Self {
            org: identity.and_then(|i| i.org.as_deref()),
            account: identity.and_then(|i| i.account.as_deref()),
            key_id: decision.key_id.as_deref(),
        }
    }
}

/// What a request needs from its host.
pub struct Host<'a> {
    /// Unix nanoseconds.
    pub now_ns: u64,
    pub store: &'a dyn SharedStore,
    pub signatures: &'a dyn SignatureHost,
    pub stats: &'a dyn Stats,
    pub access_log: &'a dyn AccessLog,
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
        if self.fetched.borrow_mut().sync(store) {
            self.tokens.borrow_mut().clear();
        }
    }

    /// Takes what `feed`'s server answered (see [`Fetched::assess`]).
    pub fn assess(&self, feed: &Feed, answer: Answer, store: &dyn SharedStore) -> Outcome {
        let answer = (answer.status, answer.body, answer.etag);
        self.fetched.borrow_mut().assess(&self.policy, feed, answer, store)
    }

    /// Whether the answer awaited from `feed` is a page of a whole set
    /// (see [`Fetched::fetching_page`]).
    pub fn fetching_page(&self, feed: &Feed) -> bool {
        self.fetched.borrow().fetching_page(feed)
    }

    /// The request headers of `feed`'s next fetch (see [`Fetched::request_headers`]).
    pub fn request_headers(&self, feed: &Feed, etag: &str) -> Vec<(&'static str, String)> {
        self.fetched.borrow_mut().request_headers(feed, etag)
    }

    /// Keys in the fetched key set, once loaded.
    pub fn fetched_keys(&self, store: &dyn SharedStore) -> Option<u64> {
        let header = self.fetched.borrow().keys(store)?.header();
        header.loaded().then_some(header.keys)
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
        let mut decision = decide(&self.policy, request, &runtime);
        if let Some(rate) = &decision.rate {
            host.stats.rate_limit(rate);
        }
        let spoofed = effects::spoofed(&self.policy, request.headers);
        if let Some(check) = decision.body.take() {
            return Handled { spoofed, next: Next::Body(check) };
        }
        let effects = effects::of(&self.policy, &decision);
        let local = decision.quota();
        let global = decision.global.take();
        let caller = Caller::of(&decision);
        let next = match (global, &self.policy.engine) {
            (Some(Global::Ask(ask)), Some(engine)) => {
                host.stats.engine(EngineEvent::Asked);
                let pending = Pending {
                    forward: effects.into_owned(),
                    local,
                    route: decision.route,
                    org: caller.org.map(str::to_owned),
                    account: caller.account.map(str::to_owned),
                    key_id: caller.key_id.map(str::to_owned),
                };
                Next::Ask(Box::new(EngineCall::new(&self.policy, engine, ask, pending)))
            }
            (global, _) => {
                if global == Some(Global::Leased) {
                    host.stats.engine(EngineEvent::Leased);
                }
                let denial = match &decision.verdict {
                    Verdict::Allow(_) => None,
                    Verdict::Deny(denial) => Some(denial),
                };
                self.record(denial, decision.route, decision.key_id.as_deref(), decision.detail, host);
                if self.policy.access_log {
                    self.publish(denial, decision.route, &caller, host);
                }
                Next::Apply(effects)
            }
        };
        Handled { spoofed, next }
    }

    /// The headers a webhook call goes upstream with if its body passes:
    /// for hosts that must pass the headers on before the body is in (see
    /// [`Next::Body`]). Nothing is counted until [`Worker::settle_body`].
    pub fn webhook_headers(&self, check: &BodyCheck) -> Effects<'_> {
        let verdict = match self.policy.webhooks.get(check.hook) {
            Some(webhook) => Verdict::Allow(Some(webhook_identity(&webhook.name))),
            None => Verdict::Allow(None),
        };
        effects::of(&self.policy, &Decision { verdict, ..undecided(check.route) })
    }

    /// Finishes a webhook call once its body is in, or once it grew past
    /// [`BodyCheck::max_body_bytes`].
    pub fn settle_body(&self, check: BodyCheck, body: Body<'_>, host: &Host<'_>) -> Effects<'_> {
        let webhook = self.policy.webhooks.get(check.hook);
        let checked = match (webhook, body) {
            (Some(webhook), Body::Complete(bytes)) => {
                webhook.verify(&check.signature, bytes, host.now_ns / NANOS).map(|()| webhook)
            }
            (_, Body::TooLarge) | (None, _) => Err(WebhookError::TooLarge),
        };
        let verdict = match checked {
            Ok(webhook) => Verdict::Allow(Some(webhook_identity(&webhook.name))),
            Err(why) => {
                let denial =
                    Denial::from(if why.is_missing() { Code::MissingSignature } else { Code::InvalidSignature });
                self.record(Some(&denial), check.route, None, Some(Detail::Webhook(why)), host);
                return effects::denied(&self.policy, &denial, None);
            }
        };
        self.record(None, check.route, None, None, host);
        effects::of(&self.policy, &Decision { verdict, ..undecided(check.route) })
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
                self.settled(None, &pending, host);
                Settled::Done(with_quota(pending.forward, quota))
            }
            Some(response) if response.overall == rls_wire::Code::OverLimit && ask.hits > 1 => {
                // A lease that no longer fits may still leave room for this request.
                let again = Ask { hits: 1, ..ask };
                host.stats.engine(EngineEvent::Asked);
                Settled::Again(Box::new(EngineCall::new(&self.policy, engine, again, pending)))
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
                        self.settled(None, &pending, host);
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
        self.settled(Some(&denial), pending, host);
        effects::denied(&self.policy, &denial, quota)
    }

    /// Records how a request that waited on the engine ended.
    fn settled(&self, denial: Option<&Denial>, pending: &Pending, host: &Host<'_>) {
        self.record(denial, pending.route, pending.key_id.as_deref(), None, host);
        if self.policy.access_log {
            let caller = Caller {
                org: pending.org.as_deref(),
                account: pending.account.as_deref(),
                key_id: pending.key_id.as_deref(),
            };
            self.publish(denial, pending.route, &caller, host);
        }
    }

    /// Publishes the decision for the access log: `decision` (`allowed`,
    /// `denied`, `shadow_denied`), `code`, `route`, and what is known of the
    /// caller (`org`, `account`, `key_id`). Never a credential.
    fn publish(&self, denial: Option<&Denial>, route: Option<usize>, caller: &Caller<'_>, host: &Host<'_>) {
        let log = host.access_log;
        match denial {
            None => log.set("decision", "allowed"),
            Some(denial) => {
                log.set("decision", if self.policy.mode == Mode::Shadow { "shadow_denied" } else { "denied" });
                log.set("code", denial.code.as_str());
            }
        }
        log.set("route", &crate::route::label(&self.policy.routes, route));
        for (field, value) in [("org", caller.org), ("account", caller.account), ("key_id", caller.key_id)] {
            if let Some(value) = value {
                log.set(field, value);
            }
        }
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
        let route = crate::route::label(&self.policy.routes, route);
        host.stats.denied(denial.code, shadow, &route);
        log::info!(
            "edge-auth: {} {} ctx={} route={} key={} reason={}",
            if shadow { "shadow-deny" } else { "deny" },
            denial.code.as_str(),
            host.context_id,
            route,
            key_id.unwrap_or("-"),
            detail.map_or_else(|| "-".to_owned(), |d| d.to_string()),
        );
    }
}

const NANOS: u64 = 1_000_000_000;

/// A verified webhook sender, as upstream sees it.
fn webhook_identity(name: &str) -> Identity<'_> {
    Identity {
        org: None,
        account: None,
        subject: Cow::Borrowed(name),
        scopes: Cow::Borrowed(""),
        kind: CredentialKind::Webhook,
    }
}

/// A decision on `route` with nothing decided yet (the verdict is a refusal).
fn undecided<'p>(route: Option<usize>) -> Decision<'p> {
    Decision::new(route, Verdict::Deny(Code::InvalidSignature.into()))
}

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
    /// A signed webhook: buffer the body (refusing as soon as it passes
    /// `max_body_bytes`) and hand it to [`Worker::settle_body`]. A host that
    /// can hold the headers meanwhile applies only what `settle_body` says;
    /// one that cannot (proxy-wasm: a paused filter gets no body callbacks)
    /// passes them on with [`Worker::webhook_headers`] and holds the body,
    /// so a refusal resets the upstream stream before the request is complete.
    Body(BodyCheck),
    /// Pause the request, make this engine call, and hand its answer to
    /// [`Worker::settle`].
    Ask(Box<EngineCall>),
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
    /// The caller (for logs).
    org: Option<String>,
    account: Option<String>,
    key_id: Option<String>,
}

/// A webhook call's body as the host buffered it.
#[derive(Debug, Clone, Copy)]
pub enum Body<'b> {
    /// The whole body (empty for a request without one).
    Complete(&'b [u8]),
    /// More than the webhook's `max_body_bytes` arrived.
    TooLarge,
}

/// An engine call that produced no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallFailed;

/// How a request that waited on the engine ends.
pub enum Settled {
    Done(Effects<'static>),
    /// Ask again (a lease the engine refused; now for the request alone).
    Again(Box<EngineCall>),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwt::NoSignatureHost;
    use crate::store::MemoryStore;
    use crate::testing::OnlyVars;
    use crate::webhook::sign;
    use std::cell::RefCell;

    #[derive(Default)]
    struct Counted(RefCell<Vec<String>>);

    impl Stats for Counted {
        fn allowed(&self) {
            self.0.borrow_mut().push("allowed".into());
        }
        fn denied(&self, code: Code, shadow: bool, _route: &str) {
            self.0.borrow_mut().push(format!("{}{}", if shadow { "shadow " } else { "" }, code.as_str()));
        }
        fn rate_limit(&self, _: &ChargeResult) {}
        fn engine(&self, _: EngineEvent) {}
    }

    impl AccessLog for Counted {
        fn set(&self, _: &str, _: &str) {}
    }

    const SECRET: &str = "kaie-webhook-secret-0123456789";
    const ENV: OnlyVars = OnlyVars(&[("EDGE_AUTH_PEPPER", "p"), ("KAIE", SECRET)]);
    const NOW_S: u64 = 1_800_000_000;

    fn worker(mode: &str) -> Worker {
        let json = format!(
            r#"{{"mode":"{mode}","api_keys":{{}},
                "webhooks":[{{"name":"kaie","header":"x-kaie-signature","secret_env":"KAIE","max_body_bytes":16}}],
                "errors":{{"invalid_signature":{{"code":"unauthorized"}}}},
                "routes":[{{"prefix":"/webhooks/kaie","methods":["POST"],"webhook":"kaie"}}]}}"#
        );
        Worker::new(Policy::from_json(json.as_bytes(), &ENV).unwrap())
    }

    /// The request's headers through `handle`, then its body, if asked for.
    fn call(worker: &Worker, headers: &[(&str, &str)], body: Body<'_>, stats: &Counted) -> Effects<'static> {
        let store = MemoryStore::default();
        let host = Host {
            now_ns: NOW_S * NANOS,
            store: &store,
            signatures: &NoSignatureHost,
            stats,
            access_log: stats,
            context_id: 1,
        };
        let request = Request { method: "POST", path: "/webhooks/kaie", headers };
        match worker.handle(&request, &host).next {
            Next::Apply(effects) => effects.into_owned(),
            Next::Body(check) => worker.settle_body(check, body, &host).into_owned(),
            Next::Ask(_) => panic!("no engine here"),
        }
    }

    fn status(effects: &Effects<'_>) -> Result<Vec<(String, String)>, (u32, String)> {
        match effects {
            Effects::Forward { set, .. } => Ok(set.iter().map(|(n, v)| (n.to_string(), v.clone())).collect()),
            Effects::Reply(reply) => Err((reply.status, reply.body.clone())),
        }
    }

    #[test]
    fn a_signed_webhook_reaches_upstream_named_and_a_forged_one_does_not() {
        let (w, stats) = (worker("enforce"), Counted::default());
        let good = sign(crate::config::SignatureFormatDoc::Hex, SECRET.as_bytes(), b"{\"a\":1}", 0).unwrap();
        let forwarded = call(&w, &[("x-kaie-signature", &good)], Body::Complete(b"{\"a\":1}"), &stats);
        assert_eq!(
            status(&forwarded),
            Ok(vec![("x-auth-subject".into(), "kaie".into()), ("x-auth-method".into(), "webhook".into())])
        );
        let forged = call(&w, &[("x-kaie-signature", &good)], Body::Complete(b"{\"a\":2}"), &stats);
        assert_eq!(status(&forged).unwrap_err().0, 401);
        // The errors map restates it; logs and metrics keep the table's code.
        assert!(status(&forged).unwrap_err().1.contains(r#""code":"unauthorized""#));
        let missing = call(&w, &[], Body::Complete(b""), &stats);
        assert!(status(&missing).unwrap_err().1.contains("missing_signature"));
        let big = call(&w, &[("x-kaie-signature", &good), ("content-length", "17")], Body::Complete(b""), &stats);
        assert_eq!(status(&big).unwrap_err().0, 401);
        let streamed = call(&w, &[("x-kaie-signature", &good)], Body::TooLarge, &stats);
        assert_eq!(status(&streamed).unwrap_err().0, 401);
        assert_eq!(
            *stats.0.borrow(),
            ["allowed", "invalid_signature", "missing_signature", "invalid_signature", "invalid_signature"]
        );
    }

    #[test]
    fn shadow_mode_forwards_a_bad_webhook_with_the_tables_code() {
        let (w, stats) = (worker("shadow"), Counted::default());
        let forwarded = call(&w, &[("x-kaie-signature", &"0".repeat(64))], Body::Complete(b"x"), &stats);
        assert_eq!(status(&forwarded), Ok(vec![("x-edge-auth-shadow".into(), "401 invalid_signature".into())]));
        assert_eq!(*stats.0.borrow(), ["shadow invalid_signature"]);
    }
}
