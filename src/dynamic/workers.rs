//! One [`Worker`] per Envoy thread and filter configuration.
//!
//! A worker keeps per-thread caches in `RefCell`s (verified tokens, the
//! fetched documents as this thread last read them), exactly as a
//! proxy-wasm VM does on each Envoy worker. Rather than lock them, each
//! thread compiles its own worker from the configuration's policy document
//! the first time it serves that configuration; what must be shared (rate
//! limits, fetched documents, the placement secret) lives in the
//! process-wide store. Entries of destroyed configurations are dropped the
//! next time the thread looks.

use super::config::Shared;
use crate::config::ProcessEnv;
use crate::policy::Policy;
use crate::worker::Worker;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::{Arc, Weak};

thread_local! {
    static WORKERS: RefCell<Vec<(Weak<Shared>, Rc<Worker>)>> = const { RefCell::new(Vec::new()) };
}

/// This thread's worker for `shared`, compiled on first use; `None` if the
/// policy no longer compiles here (the environment changed): fail closed.
pub fn worker(shared: &Arc<Shared>) -> Option<Rc<Worker>> {
    WORKERS.with_borrow_mut(|workers| {
        workers.retain(|(config, _)| config.strong_count() > 0);
        if let Some((_, worker)) = workers.iter().find(|(config, _)| std::ptr::eq(config.as_ptr(), Arc::as_ptr(shared)))
        {
            return Some(Rc::clone(worker));
        }
        let policy = match Policy::from_json(&shared.json, &ProcessEnv) {
            Ok(policy) => policy,
            Err(err) => {
                log::error!("edge-auth: config: {err}");
                return None;
            }
        };
        let worker = Rc::new(Worker::new(policy));
        workers.push((Arc::downgrade(shared), Rc::clone(&worker)));
        Some(worker)
    })
}
