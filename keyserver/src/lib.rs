//! `edge-auth keys serve`: serves a key-set file to every Envoy at
//! `GET /v1/edge/keys`, with the protocol of `docs/key-server.md`.
//!
//! - The file is a key server's whole answer (`{"version", "keys",
//!   "revoked"}`, `version` optional), checked with the filter's own rules;
//!   an invalid file is refused (one log line, counted) and the last good
//!   version stays served. The served version is the file's `version` and a
//!   digest of the content; the `ETag` is that version, quoted. A reload
//!   costs one pass over the file plus work in proportion to the change.
//! - `If-None-Match` naming the current version with `Prefer: wait=<s>` is
//!   held until the set changes or the wait (capped by `--max-wait`) ends:
//!   200 the moment it changes, 304 after the wait. Held polls are tasks
//!   waiting on one channel, so thousands cost little.
//! - A filter holding a version among the last `--history` answers gets only
//!   the changes since it (`{"version", "base", "changes"}`), unless the
//!   whole set is smaller or the changes exceed 64 KiB; any other filter gets
//!   the whole set, in pages of `--page-keys` keys (`GET <path>?page=<cursor>`
//!   for the pages after the first).
//! - The file is watched (inotify through `notify`, and a stat every 250 ms
//!   for filesystems that miss events), so a change is served within
//!   milliseconds of the write.
//! - `GET /metrics`: Prometheus text. SIGINT/SIGTERM: held polls answer 304
//!   at once, connections drain (5 s at most).

mod answer;
mod args;
mod error;
mod file;
mod keyset;
mod loader;
mod metrics;
mod server;
mod watch;

pub use args::Options;
pub use error::Error;

use edge_auth::config::Environment;
use edge_auth::policy::Policy;
use keyset::History;
use loader::Loader;
use server::State;
use std::sync::Arc;
use tokio::signal::unix::{signal, SignalKind};

/// `edge-auth keys serve ARGS`: serves until SIGINT or SIGTERM.
pub fn main(args: &[&str]) -> Result<(), Error> {
    let options = Options::parse(args)?;
    let policy = policy(options.policy.as_deref())?;
    let file =
        std::fs::read(&options.file).map_err(|e| Error::File { path: options.file.clone(), why: e.to_string() })?;
    let mut loader = Loader::new(policy);
    let first = loader.load(file.into()).map_err(|e| Error::File { path: options.file.clone(), why: e.0 })?.snapshot;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(Error::Runtime)?;
    runtime.block_on(async {
        let mut interrupt = signal(SignalKind::interrupt()).map_err(Error::Runtime)?;
        let mut terminate = signal(SignalKind::terminate()).map_err(Error::Runtime)?;
        let listener = tokio::net::TcpListener::bind(options.listen)
            .await
            .map_err(|source| Error::Bind { addr: options.listen, source })?;
        let addr = listener.local_addr().unwrap_or(options.listen);
        eprintln!(
            "edge-auth keys serve: serving {} at http://{addr}{} (version {}, {} keys, {} revoked); metrics at /metrics",
            options.file.display(),
            options.path,
            first.version,
            first.keys,
            first.revoked
        );
        let (keys, revoked) = (first.keys, first.revoked);
        let history = History::new(first, options.history);
        let state = Arc::new(State::new(options.path.clone(), options.max_wait, options.page_keys, history));
        state.metrics.loaded(keys, revoked);
        let watcher = watch::start(options.file.clone(), loader, Arc::clone(&state));
        let stop = async {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
            eprintln!("edge-auth keys serve: signalled; draining");
        };
        server::serve(listener, state, stop).await;
        drop(watcher);
        eprintln!("edge-auth keys serve: stopped");
        Ok(())
    })
}

/// The policy whose rules the file is checked against: `--policy`, or the
/// defaults (default account pattern, no plans).
fn policy(path: Option<&std::path::Path>) -> Result<Policy, Error> {
    let json = match path {
        Some(path) => std::fs::read(path).map_err(|e| Error::Policy(format!("{}: {e}", path.display())))?,
        None => br#"{"api_keys":{}}"#.to_vec(),
    };
    Policy::from_json(&json, &AnyPepper).map_err(|e| Error::Policy(e.to_string()))
}

/// A stand-in for secrets: the server checks records, it never hashes keys.
struct AnyPepper;

impl Environment for AnyPepper {
    fn var(&self, _: &str) -> Option<String> {
        Some("keys-serve-placeholder-secret-0123456789abcdef".into())
    }
}
