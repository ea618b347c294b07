//! Per-request glue: reads the request headers, lets the worker decide, and
//! applies what it says, calling the fleet-wide engine when it asks to.

use super::metrics::Metrics;
use super::shared::HostStore;
use super::signatures::EnvoySignatures;
use crate::decision::{BodyCheck, Request};
use crate::denial::{Code, Denial, ErrorFaces, Reply};
use crate::effects::{carries, Effects};
use crate::rate_limit::global::{METHOD, SERVICE};
use crate::worker::{AccessLog, Body, CallFailed, EngineCall, Host, Next, Settled, Worker};
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use std::borrow::Cow;
use std::rc::Rc;

pub struct HttpFilter {
    context_id: u32,
    worker: Option<Rc<Worker>>,
    metrics: Option<Rc<Metrics>>,
    signatures: Rc<EnvoySignatures>,
    /// Credential headers the request carries (for `strip_credentials`).
    credentials: Vec<&'static str>,
    /// The engine call in flight, with its gRPC token.
    waiting: Option<(u32, EngineCall)>,
    /// Added to upstream's response (`x-ratelimit-*`).
    response_headers: Vec<(&'static str, String)>,
    /// A webhook call whose body is being buffered, and how much is in.
    body_check: Option<BodyCheck>,
    body_size: usize,
    /// The headers of a webhook call went upstream ahead of its body.
    headers_sent: bool,
    /// Allocations and bytes when the request's headers came in.
    #[cfg(feature = "count-allocs")]
    allocs_at_start: (u64, u64),
}

impl HttpFilter {
    pub fn new(
        context_id: u32,
        worker: Option<Rc<Worker>>,
        metrics: Option<Rc<Metrics>>,
        signatures: Rc<EnvoySignatures>,
    ) -> Self {
        Self {
            context_id,
            worker,
            metrics,
            signatures,
            credentials: Vec::new(),
            waiting: None,
            response_headers: Vec::new(),
            body_check: None,
            body_size: 0,
            headers_sent: false,
            #[cfg(feature = "count-allocs")]
            allocs_at_start: (0, 0),
        }
    }

    fn send(&self, reply: &Reply) -> Action {
        let headers: Vec<(&str, &str)> = reply.headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        self.send_http_response(reply.status, headers, Some(reply.body.as_bytes()));
        Action::Pause
    }

    fn host<'a>(&'a self, metrics: &'a Metrics) -> Host<'a> {
        Host {
            now_ns: super::now_ns(),
            store: &HostStore,
            signatures: self.signatures.as_ref(),
            stats: metrics,
            access_log: &FilterState,
            context_id: self.context_id,
        }
    }

    fn apply(&mut self, effects: Effects<'_>) -> Action {
        match effects {
            Effects::Forward { set, remove, response } => {
                self.response_headers = response;
                for name in remove.iter().filter(|name| self.credentials.contains(name)) {
                    self.set_http_request_header(name, None);
                }
                // Every header set is one the filter owns, and those the
                // request carried were removed with the spoofed ones: adding
                // spares Envoy the search a replace makes (900 instructions
                // against 2,300 each, by callgrind).
                for (name, value) in &set {
                    self.add_http_request_header(name, value);
                }
                Action::Continue
            }
            Effects::Reply(reply) => self.send(&reply),
        }
    }

    /// Sends an engine call and pauses the request until it is answered.
    fn ask(&mut self, worker: &Worker, metrics: &Metrics, call: EngineCall) -> Action {
        let sent = self.dispatch_grpc_call(&call.cluster, SERVICE, METHOD, vec![], Some(&call.message), call.timeout);
        match sent {
            Ok(token) => {
                self.waiting = Some((token, call));
                Action::Pause
            }
            Err(status) => {
                log::warn!("edge-auth: rate-limit engine {}: cannot call: {status:?}", call.cluster);
                let settled = worker.settle(call, Err(CallFailed), &self.host(metrics));
                self.finish(worker, metrics, settled)
            }
        }
    }

    /// Ends a webhook call's wait for its body.
    fn settle_body(&mut self, body: Body<'_>) -> Action {
        let (Some(worker), Some(metrics), Some(check)) =
            (self.worker.clone(), self.metrics.clone(), self.body_check.take())
        else {
            return Action::Continue;
        };
        match worker.settle_body(check, body, &self.host(&metrics)) {
            // Set when the headers went on (`webhook_headers`); already upstream.
            Effects::Forward { .. } if self.headers_sent => Action::Continue,
            effects => self.apply(effects),
        }
    }

    /// The buffered body once it is complete (at its end, or at trailers).
    fn complete_body(&mut self, body_size: usize) -> Action {
        let Some(limit) = self.body_check.as_ref().map(|c| c.max_body_bytes) else { return Action::Continue };
        if !u64::try_from(body_size).is_ok_and(|size| size <= limit) {
            return self.settle_body(Body::TooLarge);
        }
        let body = if body_size == 0 { None } else { self.get_http_request_body(0, body_size) };
        self.settle_body(Body::Complete(body.as_deref().unwrap_or_default()))
    }

    fn finish(&mut self, worker: &Worker, metrics: &Metrics, settled: Settled) -> Action {
        match settled {
            Settled::Done(effects) => self.apply(effects),
            Settled::Again(call) => self.ask(worker, metrics, *call),
        }
    }
}

impl Context for HttpFilter {
    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        let (Some(worker), Some(metrics)) = (self.worker.clone(), self.metrics.clone()) else { return };
        let Some((token, call)) = self.waiting.take() else { return };
        if token != token_id {
            self.waiting = Some((token, call));
            return;
        }
        // gRPC status 0 is OK; anything else is the engine failing.
        let body = if status_code == 0 { self.get_grpc_call_response_body(0, response_size) } else { None };
        let answer = body.as_deref().ok_or(CallFailed);
        let settled = worker.settle(call, answer, &self.host(&metrics));
        if self.finish(&worker, &metrics, settled) == Action::Continue {
            self.resume_http_request();
        }
    }
}

impl HttpContext for HttpFilter {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        #[cfg(feature = "count-allocs")]
        {
            self.allocs_at_start = super::alloc_count::now();
        }
        let (Some(worker), Some(metrics)) = (self.worker.clone(), self.metrics.clone()) else {
            // No policy means configuration failed: fail closed.
            return self.send(&Denial::from(Code::AuthUnavailable).reply(&ErrorFaces::default()));
        };
        // Byte getters: the string ones panic on non-UTF-8 values.
        let headers = self.get_http_request_headers_bytes();
        // Lossy: stray bytes become U+FFFD, which the path check refuses.
        let pseudo = |name: &str| {
            headers.iter().find(|(n, _)| n == name).map_or(Cow::Borrowed(""), |(_, v)| String::from_utf8_lossy(v))
        };
        let (method, path) = (pseudo(":method"), pseudo(":path"));
        let request = Request { method: &method, path: &path, headers: &headers };
        let handled = worker.handle(&request, &self.host(&metrics));
        for name in &handled.spoofed {
            self.set_http_request_header(name, None);
        }
        self.credentials =
            crate::effects::CREDENTIAL_HEADERS.iter().copied().filter(|n| carries(&headers, n)).collect();
        match handled.next {
            Next::Apply(effects) => self.apply(effects),
            Next::Ask(call) => self.ask(&worker, &metrics, *call),
            Next::Body(check) => {
                let held = worker.webhook_headers(&check);
                self.body_check = Some(check);
                if end_of_stream {
                    // No body will follow: check the empty one now.
                    return self.settle_body(Body::Complete(&[]));
                }
                // Proxy-wasm hosts give a filter that pauses at the headers no
                // body callbacks (they pause everything), so the headers go on
                // and the body is held; a refusal resets the upstream stream
                // before the request is complete.
                self.headers_sent = true;
                self.apply(held)
            }
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Some(limit) = self.body_check.as_ref().map(|c| c.max_body_bytes) else { return Action::Continue };
        // Refused as soon as it grows past the limit, not at its end.
        if !u64::try_from(body_size).is_ok_and(|size| size <= limit) {
            return self.settle_body(Body::TooLarge);
        }
        self.body_size = body_size;
        if end_of_stream {
            return self.complete_body(body_size);
        }
        // Buffer until the end.
        Action::Pause
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        if self.body_check.is_none() {
            return Action::Continue;
        }
        self.complete_body(self.body_size)
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        for (name, value) in std::mem::take(&mut self.response_headers) {
            self.set_http_response_header(name, Some(&value));
        }
        Action::Continue
    }

    #[cfg(feature = "count-allocs")]
    fn on_log(&mut self) {
        let ((allocs, bytes), (start_allocs, start_bytes)) = (super::alloc_count::now(), self.allocs_at_start);
        log::info!(
            "edge-auth: request {}: {} allocations, {} bytes",
            self.context_id,
            allocs.wrapping_sub(start_allocs),
            bytes.wrapping_sub(start_bytes)
        );
    }
}

/// The request's filter state: `set_property` stores `edge_auth.<field>` as
/// `wasm.edge_auth.<field>`, which access logs read with `%FILTER_STATE(…:PLAIN)%`.
struct FilterState;

impl AccessLog for FilterState {
    fn set(&self, field: &str, value: &str) {
        let name = format!("edge_auth.{field}");
        // A log field that cannot be set must not fail the request.
        let _ = proxy_wasm::hostcalls::set_property(vec![name.as_str()], Some(value.as_bytes()));
    }
}
