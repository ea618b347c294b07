//! A fetched document in shared data: one fetch per Envoy process, shared by
//! every worker.
//!
//! Each source has a small `meta` entry: workers tick, and the one that wins
//! a compare-and-swap on it holds the fetch lease and sets the next fetch
//! time, so one fetch per interval (or one long poll at a time) reaches the
//! server however many workers there are. A good answer is published under
//! a new generation in `meta`. A JWKS travels whole in a `body` entry (of at
//! most [`MAX_BODY`]) that every worker parses when the generation moves; a
//! key set is written by the fetcher into its own index
//! ([`crate::api_key::KeyIndex`]), and the generation only announces it.
//! Shared data cannot be deleted: these keys are fixed and reused.
//!
//! A failed or invalid answer only releases the lease: the last good
//! document stays.

use super::nanos;
use crate::store::{self, Cas, SharedStore};
use std::time::Duration;

/// Retry delay after a failure, unless the interval is shorter.
pub const RETRY: Duration = Duration::from_secs(2);
/// At most one early refetch (unknown `kid`) per source per this period.
pub const EARLY_REFETCH: Duration = Duration::from_secs(10);
/// Largest document accepted from a source.
pub const MAX_BODY: usize = 32 * 1024 * 1024;
/// Largest changes answer a key server should send; a larger change is
/// cheaper as a whole set.
pub const MAX_DELTA: usize = 64 * 1024;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Meta {
    /// Bumped at every published change; 0 means never loaded.
    pub generation: u64,
    pub lease_holder: u64,
    pub lease_until_ns: u64,
    pub next_fetch_ns: u64,
    pub early_refetch_ns: u64,
    /// `ETag` of the published document, for `If-None-Match`.
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
    /// A whole new document, published as the next generation.
    Fresh { body: Vec<u8>, etag: Option<String> },
    /// Already written where readers find it (a key set, in its index):
    /// published as the next generation, with no body.
    Applied { etag: Option<String> },
    /// One page of a whole set is in: the fetcher keeps its lease and asks
    /// for the next page at once (nothing is published yet).
    Page,
    /// 304 Not Modified: the published document is current.
    Unchanged,
    /// Anything else: keep the last good document.
    Failed,
    /// Failed, and the next fetch asks for the whole document (changes the
    /// fetcher could not place on what it holds).
    Resync,
}

/// What a worker must do to reach the published generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Published {
    /// Nothing new.
    Current,
    /// Re-read the whole document at `generation`.
    Whole { generation: u64, body: Vec<u8> },
}

const ATTEMPTS: u32 = 16;
const TAG: usize = 8;

fn tagged(generation: u64, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(TAG + bytes.len());
    out.extend_from_slice(&generation.to_le_bytes());
    out.extend_from_slice(bytes);
    out
}

fn untag(mut value: Vec<u8>) -> Option<(u64, Vec<u8>)> {
    let (tag, _) = value.split_first_chunk::<TAG>()?;
    let generation = u64::from_le_bytes(*tag);
    value.drain(..TAG);
    Some((generation, value))
}

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

    /// Takes the fetch lease for `lease` if a fetch is due and nobody holds
    /// it. The winner must call [`SharedDocument::finish`]. Returns the
    /// `ETag` to send (empty: the whole document is wanted).
    pub fn try_lease(&self, holder: u64, now_ns: u64, refresh: Duration, lease: Duration) -> Option<String> {
        self.update(|meta| {
            if now_ns < meta.next_fetch_ns || now_ns < meta.lease_until_ns {
                return false;
            }
            meta.lease_holder = holder;
            meta.lease_until_ns = now_ns.saturating_add(nanos(lease));
            // On the schedule, not from whenever a tick noticed the fetch was
            // due; after a long pause, from now.
            let scheduled = meta.next_fetch_ns.saturating_add(nanos(refresh));
            meta.next_fetch_ns = if scheduled > now_ns { scheduled } else { now_ns.saturating_add(nanos(refresh)) };
            true
        })
        .map(|meta| meta.etag)
    }

    /// Ends `holder`'s fetch: publishes what it brought, or keeps the last
    /// document. The caller has validated it; an invalid answer is passed as
    /// [`Outcome::Failed`]. `next_fetch_ns`, when given, moves the next fetch
    /// (a long poll re-armed). Returns the generation now published.
    pub fn finish(
        &self,
        holder: u64,
        now_ns: u64,
        refresh: Duration,
        outcome: Outcome,
        next_fetch_ns: Option<u64>,
    ) -> u64 {
        let current = self.meta();
        let next = current.generation.saturating_add(1);
        // The entry first, then the generation that announces it.
        let (etag, generation) = match &outcome {
            Outcome::Fresh { body, etag } => {
                if self.store.set(&self.body_key, &tagged(next, body), Cas::Any).is_err() {
                    return self.finish(holder, now_ns, refresh, Outcome::Failed, None);
                }
                (etag.clone(), next)
            }
            Outcome::Applied { etag } => (etag.clone(), next),
            Outcome::Unchanged | Outcome::Page | Outcome::Failed | Outcome::Resync => (None, current.generation),
        };
        let published = self.update(|meta| {
            if meta.lease_holder == holder {
                meta.lease_until_ns = 0;
            }
            match &outcome {
                Outcome::Fresh { .. } | Outcome::Applied { .. } => {
                    meta.generation = generation;
                    meta.etag = etag.clone().unwrap_or_default();
                }
                Outcome::Unchanged | Outcome::Page => {}
                Outcome::Failed | Outcome::Resync => {
                    meta.next_fetch_ns = meta.next_fetch_ns.min(now_ns.saturating_add(nanos(RETRY.min(refresh))));
                    if outcome == Outcome::Resync {
                        meta.etag.clear();
                    }
                }
            }
            if let Some(at) = next_fetch_ns {
                meta.next_fetch_ns = at;
            }
            true
        });
        published.map_or(current.generation, |meta| meta.generation)
    }

    /// Extends `holder`'s lease by `lease` from now (a whole set coming
    /// page by page); false if the lease is no longer its own.
    pub fn renew(&self, holder: u64, now_ns: u64, lease: Duration) -> bool {
        let renewed = self.update(|meta| {
            if meta.lease_holder != holder || meta.lease_until_ns < now_ns {
                return false;
            }
            meta.lease_until_ns = now_ns.saturating_add(nanos(lease));
            true
        });
        renewed.is_some()
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

    /// What a worker holding generation `known` (0: nothing) must do to be
    /// current.
    pub fn since(&self, known: u64) -> Published {
        let generation = self.meta().generation;
        if generation == known || generation == 0 {
            return Published::Current;
        }
        match self.store.get(&self.body_key).and_then(|(value, _)| untag(value)) {
            Some((generation, body)) if generation != known => Published::Whole { generation, body },
            _ => Published::Current,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    const S: u64 = 1_000_000_000;
    const T0: u64 = 1_800_000_000 * S;
    const REFRESH: Duration = Duration::from_secs(1);
    const LEASE: Duration = Duration::from_secs(10);

    fn fresh(body: &[u8], etag: Option<&str>) -> Outcome {
        Outcome::Fresh { body: body.to_vec(), etag: etag.map(str::to_owned) }
    }

    #[test]
    fn one_lease_per_interval_whoever_asks() {
        let store = MemoryStore::default();
        let source = SharedDocument::new(&store, "keys");
        assert_eq!(source.try_lease(1, T0, REFRESH, LEASE), Some(String::new()));
        assert_eq!(source.try_lease(2, T0, REFRESH, LEASE), None, "leased");
        source.finish(1, T0, REFRESH, fresh(b"v1", Some("\"e1\"")), None);
        assert_eq!(source.try_lease(2, T0 + S / 2, REFRESH, LEASE), None, "not due");
        // Noticed late, the next fetch stays on the schedule.
        assert_eq!(source.try_lease(2, T0 + S + S / 10, REFRESH, LEASE), Some("\"e1\"".into()));
        assert_eq!(source.try_lease(1, T0 + S + S / 10, REFRESH, LEASE), None);
        source.finish(2, T0 + S + S / 10, REFRESH, Outcome::Unchanged, None);
        assert!(source.try_lease(1, T0 + 2 * S, REFRESH, LEASE).is_some());
    }

    #[test]
    fn a_long_poll_re_arms_at_once_and_keeps_its_lease_while_held() {
        let store = MemoryStore::default();
        let source = SharedDocument::new(&store, "keys");
        let lease = Duration::from_secs(30);
        source.try_lease(1, T0, Duration::from_secs(30), lease).unwrap();
        source.finish(1, T0, REFRESH, fresh(b"v1", Some("\"1\"")), Some(T0));
        assert_eq!(source.try_lease(1, T0, Duration::from_secs(30), lease), Some("\"1\"".into()));
        assert_eq!(source.try_lease(2, T0 + 25 * S, Duration::from_secs(30), lease), None, "held");
        assert!(source.try_lease(2, T0 + 30 * S, Duration::from_secs(30), lease).is_some(), "lost");
    }

    #[test]
    fn workers_follow_published_documents_and_failures_keep_the_last() {
        let store = MemoryStore::default();
        let source = SharedDocument::new(&store, "jwks0/t");
        assert_eq!(source.since(0), Published::Current, "never loaded");
        source.try_lease(1, T0, REFRESH, LEASE).unwrap();
        source.finish(1, T0, REFRESH, fresh(b"v1", None), None);
        assert_eq!(source.since(0), Published::Whole { generation: 1, body: b"v1".to_vec() });
        assert_eq!(source.since(1), Published::Current);
        source.try_lease(1, T0 + S, REFRESH, LEASE).unwrap();
        source.finish(1, T0 + S, REFRESH, Outcome::Failed, None);
        source.try_lease(2, T0 + 2 * S, REFRESH, LEASE).unwrap();
        source.finish(2, T0 + 2 * S, REFRESH, Outcome::Unchanged, None);
        assert_eq!((source.meta().generation, source.meta().lease_until_ns), (1, 0));
        source.try_lease(2, T0 + 3 * S, REFRESH, LEASE).unwrap();
        assert_eq!(source.finish(2, T0 + 3 * S, REFRESH, fresh(b"v2", Some("\"2\"")), None), 2);
        assert_eq!(source.since(1), Published::Whole { generation: 2, body: b"v2".to_vec() });
        // A resync forgets the ETag: the next fetch asks for the whole.
        source.try_lease(2, T0 + 4 * S, REFRESH, LEASE).unwrap();
        source.finish(2, T0 + 4 * S, REFRESH, Outcome::Resync, None);
        assert_eq!(source.meta().etag, "");
        assert_eq!(store.len(), 2, "meta and body: never more");
    }

    #[test]
    fn an_applied_key_set_is_announced_without_a_body_and_pages_keep_the_lease() {
        let store = MemoryStore::default();
        let source = SharedDocument::new(&store, "keys/t");
        source.try_lease(1, T0, REFRESH, LEASE).unwrap();
        assert!(source.renew(1, T0 + 9 * S, LEASE), "a page in: the lease runs on");
        assert!(!source.renew(2, T0 + 9 * S, LEASE), "not its lease");
        assert_eq!(source.try_lease(2, T0 + 15 * S, REFRESH, LEASE), None, "renewed");
        let applied = Outcome::Applied { etag: Some("\"7\"".into()) };
        assert_eq!(source.finish(1, T0 + 15 * S, REFRESH, applied, None), 1);
        assert_eq!(source.since(0), Published::Current, "nothing to re-read");
        assert_eq!(source.try_lease(1, T0 + 16 * S, REFRESH, LEASE), Some("\"7\"".into()));
        assert!(!source.renew(1, T0 + 16 * S + nanos(LEASE) + 1, LEASE), "expired");
    }

    #[test]
    fn a_stuck_fetch_loses_its_lease() {
        let store = MemoryStore::default();
        let source = SharedDocument::new(&store, "jwks/0");
        source.try_lease(1, T0, REFRESH, LEASE).unwrap();
        assert_eq!(source.try_lease(2, T0 + 5 * S, REFRESH, LEASE), None);
        assert!(source.try_lease(2, T0 + nanos(LEASE), REFRESH, LEASE).is_some());
    }

    #[test]
    fn early_refetch_is_rate_limited() {
        let store = MemoryStore::default();
        let source = SharedDocument::new(&store, "jwks/0");
        let refresh = Duration::from_secs(300);
        source.try_lease(1, T0, refresh, LEASE).unwrap();
        source.finish(1, T0, refresh, fresh(b"{}", None), None);
        assert!(source.request_early(T0 + S));
        assert!(source.try_lease(1, T0 + S, refresh, LEASE).is_some());
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
