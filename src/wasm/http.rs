//! Per-request glue: reads the request headers, lets the worker decide, and
//! applies what it says.

use super::metrics::Metrics;
use super::shared::HostStore;
use super::signatures::EnvoySignatures;
use crate::decision::Request;
use crate::denial::{Code, Denial, Reply};
use crate::effects::{carries, Effects};
use crate::worker::{Host, Worker};
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use std::borrow::Cow;
use std::rc::Rc;

pub struct HttpFilter {
    context_id: u32,
    worker: Option<Rc<Worker>>,
    metrics: Option<Rc<Metrics>>,
    signatures: Rc<EnvoySignatures>,
    /// Added to upstream's response (`x-ratelimit-*`).
    response_headers: Vec<(&'static str, String)>,
}

impl HttpFilter {
    pub fn new(
        context_id: u32,
        worker: Option<Rc<Worker>>,
        metrics: Option<Rc<Metrics>>,
        signatures: Rc<EnvoySignatures>,
    ) -> Self {
        Self { context_id, worker, metrics, signatures, response_headers: Vec::new() }
    }

    fn send(&self, reply: &Reply) -> Action {
        let headers: Vec<(&str, &str)> = reply.headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        self.send_http_response(reply.status, headers, Some(reply.body.as_bytes()));
        Action::Pause
    }
}

impl Context for HttpFilter {}

impl HttpContext for HttpFilter {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let (Some(worker), Some(metrics)) = (self.worker.clone(), self.metrics.clone()) else {
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
        let request = Request { method: &method, path: &path, headers: &headers };
        let host = Host {
            now_ns: super::now_ns(),
            store: &HostStore,
            signatures: self.signatures.as_ref(),
            stats: metrics.as_ref(),
            context_id: self.context_id,
        };
        let handled = worker.handle(&request, &host);
        for name in &handled.spoofed {
            self.set_http_request_header(name, None);
        }
        match handled.effects {
            Effects::Forward { set, remove, response } => {
                self.response_headers = response;
                for name in remove.iter().filter(|name| carries(&headers, name)) {
                    self.set_http_request_header(name, None);
                }
                for (name, value) in &set {
                    self.set_http_request_header(name, Some(value));
                }
                Action::Continue
            }
            Effects::Reply(reply) => self.send(&reply),
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        for (name, value) in std::mem::take(&mut self.response_headers) {
            self.set_http_response_header(name, Some(&value));
        }
        Action::Continue
    }
}
