//! Reloads the file when it changes: inotify events (through `notify`) for
//! milliseconds, a stat every 250 ms as the fallback.

use crate::loader::{Loader, Next};
use crate::server::State;
use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// A file written in place (truncate, write, close) is read once it is
/// closed, or once writes stop for this long (a writer that never closes).
const SETTLE: Duration = Duration::from_millis(20);
const POLL: Duration = Duration::from_millis(250);

/// What an event says of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    /// Complete: renamed into place, or closed after writing.
    Now,
    /// Being written.
    Settle,
}

/// Watches the file until the handle is dropped.
pub struct Watcher {
    _events: Option<notify::RecommendedWatcher>,
    task: JoinHandle<()>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Watches `file`, whose last good content `loader` holds.
pub fn start(file: PathBuf, loader: Loader, state: Arc<State>) -> Watcher {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let events = events(&file, tx);
    if events.is_none() {
        eprintln!("edge-auth keys serve: cannot watch {} for events; checking it every 250 ms", file.display());
    }
    let loader = Arc::new(Mutex::new(loader));
    let task = tokio::spawn(async move {
        let mut last = stat(&file).await;
        let mut poll = tokio::time::interval(POLL);
        loop {
            tokio::select! {
                Some(mut trigger) = rx.recv() => {
                    while trigger == Trigger::Settle {
                        match tokio::time::timeout(SETTLE, rx.recv()).await {
                            Ok(Some(next)) => trigger = next,
                            _ => break,
                        }
                    }
                    while rx.try_recv().is_ok() {}
                }
                _ = poll.tick() => {
                    if stat(&file).await == last {
                        continue;
                    }
                }
            }
            last = stat(&file).await;
            reload(&file, &loader, &state).await;
        }
    });
    Watcher { _events: events, task }
}

async fn stat(file: &Path) -> Option<(SystemTime, u64)> {
    let meta = tokio::fs::metadata(file).await.ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Events in the file's directory that name the file (editors and atomic
/// writers replace it by renaming).
fn events(file: &Path, tx: mpsc::UnboundedSender<Trigger>) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher as _;
    let name = file.file_name()?.to_owned();
    let dir = file.parent().filter(|d| !d.as_os_str().is_empty()).map_or_else(|| PathBuf::from("."), PathBuf::from);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        let Some(trigger) = trigger(event.kind) else { return };
        if event.paths.iter().any(|p| p.file_name() == Some(name.as_os_str())) {
            let _ = tx.send(trigger);
        }
    })
    .ok()?;
    watcher.watch(&dir, notify::RecursiveMode::NonRecursive).ok()?;
    Some(watcher)
}

/// What an event on the file calls for; reads (ours too) call for nothing.
fn trigger(kind: EventKind) -> Option<Trigger> {
    match kind {
        EventKind::Create(_) | EventKind::Modify(ModifyKind::Name(_)) => Some(Trigger::Now),
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => Some(Trigger::Now),
        EventKind::Modify(_) | EventKind::Remove(_) | EventKind::Any | EventKind::Other => Some(Trigger::Settle),
        EventKind::Access(_) => None,
    }
}

async fn reload(file: &Path, loader: &Arc<Mutex<Loader>>, state: &State) {
    let started = Instant::now();
    // Reading and checking a large set takes milliseconds: off the async threads.
    let (path, loader) = (file.to_owned(), Arc::clone(loader));
    let loaded = tokio::task::spawn_blocking(move || {
        let bytes = std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let mut loader = loader.lock().map_err(|_| "the last reload failed midway".to_owned())?;
        loader.load(bytes.into()).map_err(|refused| format!("refused {}: {}", path.display(), refused.0))
    })
    .await;
    match loaded {
        Ok(Ok(Next { snapshot, changes, took: (parse, check) })) => {
            let (version, keys, revoked) = (snapshot.version.clone(), snapshot.keys, snapshot.revoked);
            let changed = changes.upsert.len() + changes.remove.len() + changes.revoke.len() + changes.unrevoke.len();
            if state.publish(snapshot, changes) {
                eprintln!(
                    "edge-auth keys serve: loaded version {version} ({keys} keys, {revoked} revoked; {changed} changed) \
                     in {:.1} ms (parse {:.1} ms, compare and check {:.1} ms)",
                    ms(started.elapsed()),
                    ms(parse),
                    ms(check)
                );
            }
        }
        Ok(Err(why)) => {
            state.metrics.refused();
            let current = state.current().map(|s| s.version.clone()).unwrap_or_default();
            eprintln!("edge-auth keys serve: {why}; still serving version {current}");
        }
        Err(e) => eprintln!("edge-auth keys serve: reload failed: {e}"),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{CreateKind, DataChange, RenameMode};

    #[test]
    fn complete_files_are_read_at_once_and_reads_ignored() {
        assert_eq!(trigger(EventKind::Modify(ModifyKind::Name(RenameMode::To))), Some(Trigger::Now));
        assert_eq!(trigger(EventKind::Create(CreateKind::File)), Some(Trigger::Now));
        assert_eq!(trigger(EventKind::Access(AccessKind::Close(AccessMode::Write))), Some(Trigger::Now));
        assert_eq!(trigger(EventKind::Modify(ModifyKind::Data(DataChange::Any))), Some(Trigger::Settle));
        assert_eq!(trigger(EventKind::Access(AccessKind::Close(AccessMode::Read))), None);
        assert_eq!(trigger(EventKind::Access(AccessKind::Open(AccessMode::Any))), None);
    }
}
