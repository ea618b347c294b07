//! Per-request filter: reads the request headers, decides, applies the action.

use super::metrics::Metrics;
use super::shared::HostStore;
use super::signatures::EnvoySignatures;
use crate::action::{act, carries, spoofed, Action as Apply};
use crate::config::{Mode, Policy};
use crate::decision::{decide, Decision, Request, Runtime, Verdict};
use crate::denial::{Code, Denial, Reply};
use crate::fetched::Fetched;
use crate::jwt::TokenCache;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use std::borrow::Cow;
use std::cell::RefCell;
use std::rc::Rc;
use std::time::UNIX_EPOCH;

pub struct HttpFilter {
    context_id: u32,
    policy: Option<Rc<Policy>>,
    metrics: Option<Rc<Metrics>>,
    /// This worker's verified tokens, shared by its requests.
    tokens: Rc<RefCell<TokenCache>>,
    /// This worker's fetched key set and JWKS.
    fetched: Rc<RefCell<Option<Fetched>>>,
    signatures: Rc<EnvoySignatures>,
    /// Added to upstream's response (`x-ratelimit-*`).
    response_headers: Vec<(&'static str, String)>,
}

impl HttpFilter {
    pub fn new(
        context_id: u32,
        policy: Option<Rc<Policy>>,
        metrics: Option<Rc<Metrics>>,
        tokens: Rc<RefCell<TokenCache>>,
        fetched: Rc<RefCell<Option<Fetched>>>,
        signatures: Rc<EnvoySignatures>,
    ) -> Self {
        Self { context_id, policy, metrics, tokens, fetched, signatures, response_headers: Vec::new() }
    }

    fn send(&self, reply: &Reply) -> Action {
        let headers: Vec<(&str, &str)> = reply.headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        self.send_http_response(reply.status, headers, Some(reply.body.as_bytes()));
        Action::Pause
    }

    fn record(&self, policy: &Policy, decision: &Decision<'_>) {
        let Some(metrics) = &self.metrics else { return };
        if let Some(rate) = &decision.rate {
            metrics.rate_limit(rate);
        }
        let Verdict::Deny(denial) = &decision.verdict else {
            metrics.allowed();
            return;
        };
        let shadow = policy.mode == Mode::Shadow;
        if shadow {
            metrics.shadow_denied(denial.code);
        } else {
            metrics.denied(denial.code);
        }
        log::info!(
            "edge-auth: {} {} ctx={} route={} key={} reason={}",
            if shadow { "shadow-deny" } else { "deny" },
            denial.code.as_str(),
            self.context_id,
            decision.route.map_or_else(|| "default".to_owned(), |i| format!("routes[{i}]")),
            decision.key_id.unwrap_or("-"),
            decision.malformed.map_or_else(|| "-".to_owned(), |m| m.to_string()),
        );
    }
}

impl Context for HttpFilter {}

impl HttpContext for HttpFilter {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(policy) = self.policy.clone() else {
            // No policy means configuration failed: fail closed.
            return self.send(&Denial::from(Code::AuthUnavailable).reply());
        };
        // Byte getters: the string ones panic on non-UTF-8 values.
        let headers = self.get_http_request_headers_bytes();
        // Lossy, not empty: a path with stray bytes keeps its prefix, so it
        // still matches the route upstream will serve it under.
        let pseudo = |name: &str| {
            headers.iter().find(|(n, _)| n == name).map_or(Cow::Borrowed(""), |(_, v)| String::from_utf8_lossy(v))
        };
        let (method, path) = (pseudo(":method"), pseudo(":path"));
        let now_ns = self
            .get_current_time()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        let request = Request { method: &method, path: &path, headers: &headers };
        if let Some(fetched) = self.fetched.borrow_mut().as_mut() {
            if fetched.sync(&policy, &HostStore) {
                self.tokens.borrow_mut().clear();
            }
        }
        let fetched = self.fetched.borrow();
        let nothing = Fetched::empty();
        let runtime = Runtime {
            now_ns,
            store: &HostStore,
            tokens: &self.tokens,
            fetched: fetched.as_ref().unwrap_or(&nothing),
            signatures: self.signatures.as_ref(),
        };
        let decision = decide(&policy, &request, &runtime);
        self.record(&policy, &decision);

        for name in spoofed(&policy, &headers) {
            self.set_http_request_header(name, None);
        }
        match act(&policy, &decision) {
            Apply::Forward { set, remove, response } => {
                self.response_headers = response;
                for name in remove.iter().filter(|name| carries(&headers, name)) {
                    self.set_http_request_header(name, None);
                }
                for (name, value) in &set {
                    self.set_http_request_header(name, Some(value));
                }
                Action::Continue
            }
            Apply::Reply(reply) => self.send(&reply),
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        for (name, value) in std::mem::take(&mut self.response_headers) {
            self.set_http_response_header(name, Some(&value));
        }
        Action::Continue
    }
}
