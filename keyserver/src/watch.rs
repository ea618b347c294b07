//! Reloads the file when it changes: inotify events (through `notify`) for
//! milliseconds, a stat every second as the fallback.

use crate::keyset::Snapshot;
use crate::server::State;
use edge_auth::policy::Policy;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Writes come in bursts (truncate, write, close): the reload waits this
/// long after the first event for the rest.
const SETTLE: Duration = Duration::from_millis(2);
const POLL: Duration = Duration::from_secs(1);

/// Watches `file` (first read as `first`) until the handle is dropped.
pub struct Watcher {
    _events: Option<notify::RecommendedWatcher>,
    task: JoinHandle<()>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn start(file: PathBuf, first: Vec<u8>, policy: Policy, state: Arc<State>) -> Watcher {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let events = events(&file, tx);
    if events.is_none() {
        eprintln!("edge-auth keys serve: cannot watch {} for events; checking it every second", file.display());
    }
    let policy = Arc::new(policy);
    let task = tokio::spawn(async move {
        let mut last = Seen { digest: Sha256::digest(&first).into(), stat: stat(&file).await };
        let mut poll = tokio::time::interval(POLL);
        loop {
            tokio::select! {
                Some(()) = rx.recv() => {
                    tokio::time::sleep(SETTLE).await;
                    while rx.try_recv().is_ok() {}
                }
                _ = poll.tick() => {
                    if stat(&file).await == last.stat {
                        continue;
                    }
                }
            }
            last.stat = stat(&file).await;
            reload(&file, &policy, &state, &mut last).await;
        }
    });
    Watcher { _events: events, task }
}

struct Seen {
    digest: [u8; 32],
    stat: Option<(SystemTime, u64)>,
}

async fn stat(file: &Path) -> Option<(SystemTime, u64)> {
    let meta = tokio::fs::metadata(file).await.ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Events in the file's directory that name the file (editors and atomic
/// writers replace it by renaming).
fn events(file: &Path, tx: mpsc::UnboundedSender<()>) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher as _;
    let name = file.file_name()?.to_owned();
    let dir = file.parent().filter(|d| !d.as_os_str().is_empty()).map_or_else(|| PathBuf::from("."), PathBuf::from);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            if event.paths.iter().any(|p| p.file_name() == Some(name.as_os_str())) {
                let _ = tx.send(());
            }
        }
    })
    .ok()?;
    watcher.watch(&dir, notify::RecursiveMode::NonRecursive).ok()?;
    Some(watcher)
}

async fn reload(file: &Path, policy: &Arc<Policy>, state: &State, last: &mut Seen) {
    let bytes = match tokio::fs::read(file).await {
        Ok(bytes) => bytes,
        Err(e) => {
            state.metrics.refused();
            let current = state.current().map(|s| s.version.clone()).unwrap_or_default();
            eprintln!("edge-auth keys serve: cannot read {}: {e}; still serving version {current}", file.display());
            return;
        }
    };
    let digest: [u8; 32] = Sha256::digest(&bytes).into();
    if digest == last.digest {
        return;
    }
    last.digest = digest;
    // Parsing a large set takes milliseconds of CPU: off the async threads.
    let policy = Arc::clone(policy);
    let page_keys = state.page_keys;
    let loaded = tokio::task::spawn_blocking(move || Snapshot::load(&bytes, &policy, page_keys)).await;
    match loaded {
        Ok(Ok(snapshot)) => {
            let (version, keys, revoked) = (snapshot.version.clone(), snapshot.keys, snapshot.revoked);
            if state.publish(snapshot) {
                eprintln!("edge-auth keys serve: loaded version {version} ({keys} keys, {revoked} revoked)");
            }
        }
        Ok(Err(refused)) => {
            state.metrics.refused();
            let current = state.current().map(|s| s.version.clone()).unwrap_or_default();
            eprintln!(
                "edge-auth keys serve: refused {}: {}; still serving version {current}",
                file.display(),
                refused.0
            );
        }
        Err(e) => eprintln!("edge-auth keys serve: reload failed: {e}"),
    }
}
