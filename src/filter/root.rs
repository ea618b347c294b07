//! The root context: compiles the policy once per VM; hands it to each request.

use super::http::HttpFilter;
use super::metrics::Metrics;
use crate::config::{self, Policy, ProcessEnv};
use crate::jwt::TokenCache;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;
use std::cell::RefCell;
use std::rc::Rc;

#[derive(Default)]
pub struct Root {
    policy: Option<Rc<Policy>>,
    metrics: Option<Rc<Metrics>>,
    /// Verified tokens of this worker; emptied with every new policy.
    tokens: Rc<RefCell<TokenCache>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_vm_start(&mut self, _vm_configuration_size: usize) -> bool {
        log::info!("edge-auth {} starting", crate::VERSION);
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
        self.policy = Some(Rc::new(policy));
        self.tokens.borrow_mut().clear();
        self.metrics = Some(Rc::new(metrics));
        true
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(HttpFilter::new(context_id, self.policy.clone(), self.metrics.clone(), Rc::clone(&self.tokens))))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
