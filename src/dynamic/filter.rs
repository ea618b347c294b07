//! Per-request glue: reads the request headers, lets this thread's worker
//! decide, and applies what it says, asking the fleet-wide engine when it
//! must (a gRPC call made as an HTTP/2 callout). A signed webhook's headers
//! are held while Envoy buffers its body, so nothing of a refused call
//! reaches upstream.

use super::config::{Config, Shared};
use super::ffi::{Callout, CalloutAnswer, FilterHandle};
use super::grpc;
use super::metrics::FilterStats;
use super::store::STORE;
use super::workers;
use crate::decision::{BodyCheck, Request};
use crate::denial::{Code, Denial, ErrorFaces, Reply};
use crate::effects::{carries, Effects, CREDENTIAL_HEADERS};
use crate::jwt::NoSignatureHost;
use crate::rate_limit::global::{METHOD, SERVICE};
use crate::worker::{AccessLog, Body, CallFailed, EngineCall, Host, Next, Settled, Worker};
use std::borrow::Cow;
use std::rc::Rc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

/// The largest engine answer read (a `RateLimitResponse` is small).
pub const MAX_ANSWER: usize = 64 * 1024;

/// Names requests in logs, as proxy-wasm's context ids do.
static NEXT_CONTEXT: AtomicU32 = AtomicU32::new(1);

/// Whether the request waits (Envoy's StopIteration) or goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Paused {
    Yes,
    No,
}

/// What the request-body hook tells Envoy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyStatus {
    Continue,
    /// Keep the data and wait (StopIterationAndBuffer).
    Buffer,
    /// The request was answered: buffer nothing more.
    Refused,
}

pub struct Filter {
    context_id: u32,
    shared: Arc<Shared>,
    /// This thread's worker; `None` if the policy no longer compiles here.
    worker: Option<Rc<Worker>>,
    /// Which of [`CREDENTIAL_HEADERS`] the request carries (for
    /// `strip_credentials`).
    credentials: [bool; CREDENTIAL_HEADERS.len()],
    /// The engine call in flight, with its callout id.
    waiting: Option<(u64, EngineCall)>,
    /// Added to upstream's response (`x-ratelimit-*`).
    response_headers: Vec<(&'static str, String)>,
    /// A webhook call whose headers are held until its body is checked.
    body_check: Option<BodyCheck>,
}

/// Answers 503 `auth_unavailable`: what a request gets when the filter
/// cannot decide (no policy, a panic).
pub fn fail_closed(envoy: &mut FilterHandle) {
    send(envoy, &Denial::from(Code::AuthUnavailable).reply(&ErrorFaces::default()));
}

fn send(envoy: &mut FilterHandle, reply: &Reply) {
    let headers: Vec<(&str, &str)> = reply.headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    envoy.send_response(reply.status, &headers, &reply.body, "edge_auth");
}

impl Filter {
    pub fn new(config: &Config) -> Self {
        Self {
            context_id: NEXT_CONTEXT.fetch_add(1, Ordering::Relaxed),
            shared: Arc::clone(&config.shared),
            worker: workers::worker(&config.shared),
            credentials: [false; CREDENTIAL_HEADERS.len()],
            waiting: None,
            response_headers: Vec::new(),
            body_check: None,
        }
    }

    pub fn waiting(&self) -> bool {
        self.waiting.is_some()
    }

    fn host<'a>(&'a self, stats: &'a FilterStats<'a>) -> Host<'a> {
        Host {
            now_ns: super::now_ns(),
            store: &*STORE,
            // Off wasm, RS256 and ES256 are verified in software.
            signatures: &NoSignatureHost,
            stats,
            access_log: &NoAccessLog,
            context_id: self.context_id,
        }
    }

    pub fn on_request_headers(&mut self, envoy: &mut FilterHandle, end_of_stream: bool) -> Paused {
        let Some(worker) = self.worker.clone() else {
            // No policy means it could not compile here: fail closed.
            fail_closed(envoy);
            return Paused::Yes;
        };
        let handled = {
            let headers = envoy.request_headers();
            // Lossy: stray bytes become U+FFFD, which the path check refuses.
            let pseudo = |name: &str| {
                headers.iter().find(|(n, _)| n == name).map_or(Cow::Borrowed(""), |(_, v)| String::from_utf8_lossy(v))
            };
            let (method, path) = (pseudo(":method"), pseudo(":path"));
            let request = Request { method: &method, path: &path, headers: &headers };
            for (carried, name) in self.credentials.iter_mut().zip(CREDENTIAL_HEADERS) {
                *carried = carries(&headers, name);
            }
            let stats = self.shared.metrics.stats(envoy);
            worker.handle(&request, &self.host(&stats))
        };
        for name in &handled.spoofed {
            envoy.remove_request_header(name);
        }
        match handled.next {
            Next::Apply(effects) => self.apply(envoy, effects),
            Next::Ask(call) => self.ask(envoy, &worker, *call),
            Next::Body(check) => {
                self.body_check = Some(check);
                if end_of_stream {
                    // No body will follow: check the empty one now.
                    return self.settle_body(envoy, Body::Complete(&[]));
                }
                // Held: Envoy still hands this filter the body.
                Paused::Yes
            }
        }
    }

    /// A webhook call's body is buffered (refused the moment it passes the
    /// limit) and checked at its end; other requests' bodies wait only for
    /// an engine call.
    pub fn on_request_body(&mut self, envoy: &mut FilterHandle, end_of_stream: bool) -> BodyStatus {
        if self.waiting() {
            return BodyStatus::Buffer;
        }
        let Some(limit) = self.body_check.as_ref().map(|c| c.max_body_bytes) else { return BodyStatus::Continue };
        let paused = if !fits(envoy.request_body_size(), limit) {
            self.settle_body(envoy, Body::TooLarge)
        } else if end_of_stream {
            self.complete_body(envoy)
        } else {
            return BodyStatus::Buffer;
        };
        match paused {
            Paused::No => BodyStatus::Continue,
            Paused::Yes => BodyStatus::Refused,
        }
    }

    /// Trailers end the body: a webhook call's is checked now.
    pub fn on_request_trailers(&mut self, envoy: &mut FilterHandle) -> Paused {
        if self.waiting() {
            return Paused::Yes;
        }
        if self.body_check.is_none() {
            return Paused::No;
        }
        self.complete_body(envoy)
    }

    /// The whole body is in (what Envoy buffered plus what just arrived).
    fn complete_body(&mut self, envoy: &mut FilterHandle) -> Paused {
        let Some(limit) = self.body_check.as_ref().map(|c| c.max_body_bytes) else { return Paused::No };
        let body = envoy.request_body();
        if !fits(body.len(), limit) {
            return self.settle_body(envoy, Body::TooLarge);
        }
        self.settle_body(envoy, Body::Complete(&body))
    }

    /// Ends a webhook call's wait: its held headers go on with the
    /// identity set, or it is answered.
    fn settle_body(&mut self, envoy: &mut FilterHandle, body: Body<'_>) -> Paused {
        let (Some(worker), Some(check)) = (self.worker.clone(), self.body_check.take()) else {
            fail_closed(envoy);
            return Paused::Yes;
        };
        let stats = self.shared.metrics.stats(envoy);
        let effects = worker.settle_body(check, body, &self.host(&stats));
        self.apply(envoy, effects)
    }

    /// Upstream seldom sends `x-ratelimit-*` itself: unless it did, the
    /// headers are added, which costs Envoy a third of a set (a set looks
    /// for copies to remove first; 2,300 against 900 instructions each).
    pub fn on_response_headers(&mut self, envoy: &mut FilterHandle) {
        let ours = std::mem::take(&mut self.response_headers);
        if ours.is_empty() {
            return;
        }
        let upstream_sent = {
            let upstream = envoy.response_headers();
            ours.iter().any(|(name, _)| carries(&upstream, name))
        };
        for (name, value) in ours {
            if upstream_sent {
                envoy.set_response_header(name, &value);
            } else {
                envoy.add_response_header(name, &value);
            }
        }
    }

    fn apply(&mut self, envoy: &mut FilterHandle, effects: Effects<'_>) -> Paused {
        match effects {
            Effects::Forward { set, remove, response } => {
                self.response_headers = response;
                let carried = CREDENTIAL_HEADERS.iter().zip(self.credentials).filter_map(|(name, c)| c.then_some(name));
                for name in carried.filter(|name| remove.contains(name)) {
                    envoy.remove_request_header(name);
                }
                // Every header set is one the filter owns, and those the
                // request carried were removed with the spoofed ones.
                for (name, value) in &set {
                    envoy.add_request_header(name, value);
                }
                Paused::No
            }
            Effects::Reply(reply) => {
                send(envoy, &reply);
                Paused::Yes
            }
        }
    }

    /// Sends an engine call (gRPC over an HTTP/2 callout) and pauses the
    /// request until it is answered.
    fn ask(&mut self, envoy: &mut FilterHandle, worker: &Worker, call: EngineCall) -> Paused {
        let path = format!("/{SERVICE}/{METHOD}");
        let headers = [
            (":method", "POST"),
            (":path", path.as_str()),
            (":authority", call.cluster.as_str()),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ];
        let body = grpc::frame(&call.message);
        let timeout_ms = u64::try_from(call.timeout.as_millis()).unwrap_or(u64::MAX).max(1);
        let callout = Callout { cluster: &call.cluster, headers: &headers, body: &body, timeout_ms };
        match envoy.callout(&callout) {
            Some(id) => {
                self.waiting = Some((id, call));
                Paused::Yes
            }
            None => {
                log::warn!("edge-auth: rate-limit engine {}: cannot call", call.cluster);
                let settled = self.settle(envoy, worker, call, Err(CallFailed));
                self.finish(envoy, worker, settled)
            }
        }
    }

    fn settle(
        &self,
        envoy: &FilterHandle,
        worker: &Worker,
        call: EngineCall,
        answer: Result<&[u8], CallFailed>,
    ) -> Settled {
        let stats = self.shared.metrics.stats(envoy);
        worker.settle(call, answer, &self.host(&stats))
    }

    fn finish(&mut self, envoy: &mut FilterHandle, worker: &Worker, settled: Settled) -> Paused {
        match settled {
            Settled::Done(effects) => self.apply(envoy, effects),
            Settled::Again(call) => self.ask(envoy, worker, *call),
        }
    }

    /// The engine answered: a gRPC answer is a 200 whose body is one frame,
    /// with no error `grpc-status` in its headers (a trailers-only error).
    pub fn on_callout_done(&mut self, envoy: &mut FilterHandle, id: u64, answer: &CalloutAnswer) {
        let Some(worker) = self.worker.clone() else { return };
        let Some((token, call)) = self.waiting.take() else { return };
        if token != id {
            self.waiting = Some((token, call));
            return;
        }
        let granted = answer.ok
            && answer.header(":status") == Some("200")
            && answer.header("grpc-status").is_none_or(|status| status == "0");
        let message = if granted { grpc::unframe(&answer.body) } else { None };
        let settled = self.settle(envoy, &worker, call, message.ok_or(CallFailed));
        if self.finish(envoy, &worker, settled) == Paused::No {
            envoy.continue_decoding();
        }
    }
}

/// Whether `size` bytes are within a webhook's `max_body_bytes`.
fn fits(size: usize, limit: u64) -> bool {
    u64::try_from(size).is_ok_and(|size| size <= limit)
}

/// The access-log fields are the wasm build's (filter state); this build
/// does not publish them yet.
struct NoAccessLog;

impl AccessLog for NoAccessLog {
    fn set(&self, _: &str, _: &str) {}
}
