//! A fetched document in shared data: one fetch per Envoy process, shared by
//! every worker.
//!
//! Each document has a small `meta` entry and a `body` entry. Workers tick;
//! the one that wins a compare-and-swap on `meta` holds the fetch lease and
//! sets the next fetch time, so one fetch per interval reaches the server
//! however many workers there are. A good answer is written to `body` and
//! the generation in `meta` is bumped; every worker compares that generation
//! with its own on each request and re-parses only when it changed. A failed
//! or invalid answer only releases the lease: the last good body stays.

use crate::store::{self, Cas, SharedStore};
use std::time::Duration;

/// How long a lease holder may take before another worker may fetch.
pub const LEASE: Duration = Duration::from_secs(10);
/// Retry delay after a failure, unless the interval is shorter.
pub const RETRY: Duration = Duration::from_secs(2);
/// At most one early refetch (unknown `kid`) per source per this period.
pub const EARLY_REFETCH: Duration = Duration::from_secs(10);
/// Largest document accepted from a source.
pub const MAX_BODY: usize = 32 * 1024 * 1024;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Meta {
    /// Bumped at every published body; 0 means never loaded.
    pub generation: u64,
    pub lease_holder: u64,
    pub lease_until_ns: u64,
    pub next_fetch_ns: u64,
    pub early_refetch_ns: u64,
    /// `ETag` of the published body, for `If-None-Match`.
    pub etag: String,
}

impl Meta {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(40 + self.etag.len());
        for n in [self.generation, self.lease_holder, self.lease_until_ns, self.next_fetch_ns, self.early_refetch_ns] {
            out.extend_from_slice(&n.to_le_bytes());
        }
        out.extend_from_slice(self.etag.as_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let mut numbers = [0u64; 5];
        let mut rest = bytes;
        for n in &mut numbers {
            let (head, tail) = rest.split_first_chunk::<8>()?;
            *n = u64::from_le_bytes(*head);
            rest = tail;
        }
        let [generation, lease_holder, lease_until_ns, next_fetch_ns, early_refetch_ns] = numbers;
        let etag = String::from_utf8(rest.to_vec()).ok()?;
        Some(Self { generation, lease_holder, lease_until_ns, next_fetch_ns, early_refetch_ns, etag })
    }
}

/// One fetched document in shared data, named by `id` (e.g. `keys/<tag>`).
pub struct SharedDocument<'a> {
    store: &'a dyn SharedStore,
    meta_key: String,
    body_key: String,
}

/// What a fetch attempt ended with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A new body to publish, with its `ETag` if the server sent one.
    Fresh { body: Vec<u8>, etag: Option<String> },
    /// 304 Not Modified: the published body is current.
    Unchanged,
    /// Anything else: keep the last good body.
    Failed,
}

const ATTEMPTS: u32 = 16;

impl<'a> SharedDocument<'a> {
    pub fn new(store: &'a dyn SharedStore, id: &str) -> Self {
        Self { store, meta_key: format!("edge_auth/src/{id}/meta"), body_key: format!("edge_auth/src/{id}/body") }
    }

    pub fn meta(&self) -> Meta {
        self.store.get(&self.meta_key).and_then(|(bytes, _)| Meta::decode(&bytes)).unwrap_or_default()
    }

    /// Applies `change` to the meta entry under compare-and-swap; `change`
    /// returns false to give up. Returns the entry written, if one was.
    fn update(&self, change: impl Fn(&mut Meta) -> bool) -> Option<Meta> {
        let written = store::update(self.store, &self.meta_key, ATTEMPTS, |current| {
            let mut meta = current.and_then(Meta::decode).unwrap_or_default();
            change(&mut meta).then(|| meta.encode())
        })?;
        Meta::decode(&written)
    }

    /// Takes the fetch lease if a fetch is due and nobody holds it. The
    /// winner must call [`SharedDocument::finish`]. Returns the `ETag` to send.
    pub fn try_lease(&self, holder: u64, now_ns: u64, refresh: Duration) -> Option<String> {
        self.update(|meta| {
            if now_ns < meta.next_fetch_ns || now_ns < meta.lease_until_ns {
                return false;
            }
            meta.lease_holder = holder;
            meta.lease_until_ns = now_ns.saturating_add(nanos(LEASE));
            // On the schedule, not from whenever a tick noticed the fetch was
            // due; after a long pause, from now.
            let scheduled = meta.next_fetch_ns.saturating_add(nanos(refresh));
            meta.next_fetch_ns = if scheduled > now_ns { scheduled } else { now_ns.saturating_add(nanos(refresh)) };
            true
        })
        .map(|meta| meta.etag)
    }

    /// Ends `holder`'s fetch: publishes a fresh body, or keeps the last one.
    /// `valid` has already been checked by the caller; an invalid body is
    /// passed as [`Outcome::Failed`].
    pub fn finish(&self, holder: u64, now_ns: u64, refresh: Duration, outcome: Outcome) {
        if let Outcome::Fresh { body, .. } = &outcome {
            // The body first, then the generation that announces it.
            if self.store.set(&self.body_key, body, Cas::Any).is_err() {
                return self.finish(holder, now_ns, refresh, Outcome::Failed);
            }
        }
        self.update(|meta| {
            if meta.lease_holder == holder {
                meta.lease_until_ns = 0;
            }
            match &outcome {
                Outcome::Fresh { etag, .. } => {
                    meta.generation = meta.generation.saturating_add(1);
                    meta.etag = etag.clone().unwrap_or_default();
                }
                Outcome::Unchanged => {}
                Outcome::Failed => {
                    meta.next_fetch_ns = meta.next_fetch_ns.min(now_ns.saturating_add(nanos(RETRY.min(refresh))));
                }
            }
            true
        });
    }

    /// Asks for a fetch at the next tick (unknown `kid`), at most once per
    /// [`EARLY_REFETCH`].
    pub fn request_early(&self, now_ns: u64) -> bool {
        let requested = self.update(|meta| {
            if now_ns < meta.early_refetch_ns.saturating_add(nanos(EARLY_REFETCH)) && meta.early_refetch_ns != 0 {
                return false;
            }
            meta.early_refetch_ns = now_ns;
            meta.next_fetch_ns = now_ns;
            true
        });
        requested.is_some()
    }

    /// The published body if its generation differs from `known`.
    pub fn newer_than(&self, known: u64) -> Option<(u64, Vec<u8>)> {
        let generation = self.meta().generation;
        if generation == known || generation == 0 {
            return None;
        }
        let (body, _) = self.store.get(&self.body_key)?;
        Some((generation, body))
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    const S: u64 = 1_000_000_000;
    const T0: u64 = 1_800_000_000 * S;
    const REFRESH: Duration = Duration::from_secs(1);

    #[test]
    fn one_lease_per_interval_whoever_asks() {
        let store = MemoryStore::default();
        let source = SharedDocument::new(&store, "keys");
        assert_eq!(source.try_lease(1, T0, REFRESH), Some(String::new()));
        assert_eq!(source.try_lease(2, T0, REFRESH), None, "leased");
        source.finish(1, T0, REFRESH, Outcome::Fresh { body: b"v1".to_vec(), etag: Some("\"e1\"".into()) });
        assert_eq!(source.try_lease(2, T0 + S / 2, REFRESH), None, "not due");
        // Noticed late, the next fetch stays on the schedule.
        assert_eq!(source.try_lease(2, T0 + S + S / 10, REFRESH), Some("\"e1\"".into()));
        assert_eq!(source.try_lease(1, T0 + S + S / 10, REFRESH), None);
        source.finish(2, T0 + S + S / 10, REFRESH, Outcome::Unchanged);
        assert!(source.try_lease(1, T0 + 2 * S, REFRESH).is_some());
    }

    #[test]
    fn workers_see_new_generations_and_failures_keep_the_last_body() {
        let store = MemoryStore::default();
        let source = SharedDocument::new(&store, "keys");
        assert_eq!(source.newer_than(0), None, "never loaded");
        source.try_lease(1, T0, REFRESH).unwrap();
        source.finish(1, T0, REFRESH, Outcome::Fresh { body: b"v1".to_vec(), etag: None });
        assert_eq!(source.newer_than(0), Some((1, b"v1".to_vec())));
        assert_eq!(source.newer_than(1), None);
        source.try_lease(1, T0 + S, REFRESH).unwrap();
        source.finish(1, T0 + S, REFRESH, Outcome::Failed);
        assert_eq!(source.newer_than(0), Some((1, b"v1".to_vec())));
        source.try_lease(2, T0 + 2 * S, REFRESH).unwrap();
        source.finish(2, T0 + 2 * S, REFRESH, Outcome::Unchanged);
        assert_eq!(source.meta().generation, 1);
        assert_eq!(source.meta().lease_until_ns, 0);
    }

    #[test]
    fn a_stuck_fetch_loses_its_lease() {
        let store = MemoryStore::default();
        let source = SharedDocument::new(&store, "jwks/0");
        source.try_lease(1, T0, REFRESH).unwrap();
        assert_eq!(source.try_lease(2, T0 + 5 * S, REFRESH), None);
        assert!(source.try_lease(2, T0 + nanos(LEASE), REFRESH).is_some());
    }

    #[test]
    fn early_refetch_is_rate_limited() {
        let store = MemoryStore::default();
        let source = SharedDocument::new(&store, "jwks/0");
        source.try_lease(1, T0, Duration::from_secs(300)).unwrap();
        source.finish(1, T0, Duration::from_secs(300), Outcome::Fresh { body: b"{}".to_vec(), etag: None });
        assert!(source.request_early(T0 + S));
        assert!(source.try_lease(1, T0 + S, Duration::from_secs(300)).is_some());
        assert!(!source.request_early(T0 + 5 * S));
        assert!(source.request_early(T0 + 12 * S));
    }

    #[test]
    fn meta_round_trips() {
        let meta = Meta {
            generation: 3,
            lease_holder: 4,
            lease_until_ns: 5,
            next_fetch_ns: 6,
            early_refetch_ns: 7,
            etag: "\"x\"".into(),
        };
        assert_eq!(Meta::decode(&meta.encode()), Some(meta));
        assert_eq!(Meta::decode(b"short"), None);
    }
}
