//! A fetched document in shared data: one fetch per Envoy process, shared by
//! every worker.
//!
//! Each document has a small `meta` entry, a `body` entry and a ring of
//! [`RING`] `changes` entries. Workers tick; the one that wins a
//! compare-and-swap on `meta` holds the fetch lease and sets the next fetch
//! time, so one fetch per interval (or one long poll at a time) reaches the
//! server however many workers there are. A good answer is published under
//! a new generation in `meta`; every worker compares that generation with
//! its own on each request and tick.
//!
//! A new generation carries what changed since the one before in its ring
//! slot (`generation % RING`), tagged with that generation: a worker a few
//! generations behind applies only those changes. The body holds a whole
//! document, tagged with the generation it is; a worker that joins late, or
//! finds a slot overwritten, re-reads it and applies the changes after it.
//! Shared data cannot be deleted, so the keys are fixed and reused: a body
//! of at most [`MAX_BODY`] and [`RING`] slots of at most [`MAX_DELTA`] per
//! source. When the body falls [`RING`]` / 2` generations behind, the next
//! fetch asks for the whole document to bring it up to date.
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
/// Ring slots of changes per source.
pub const RING: u64 = 16;
/// Largest change kept in a ring slot; a larger one travels as a whole body.
pub const MAX_DELTA: usize = 64 * 1024;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Meta {
    /// Bumped at every published change; 0 means never loaded.
    pub generation: u64,
    /// The generation the body holds.
    pub body_generation: u64,
    pub lease_holder: u64,
    pub lease_until_ns: u64,
    pub next_fetch_ns: u64,
    pub early_refetch_ns: u64,
    /// `ETag` of the published document, for `If-None-Match`.
    pub etag: String,
}

impl Meta {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(48 + self.etag.len());
        for n in [
            self.generation,
            self.body_generation,
            self.lease_holder,
            self.lease_until_ns,
            self.next_fetch_ns,
            self.early_refetch_ns,
        ] {
            out.extend_from_slice(&n.to_le_bytes());
        }
        out.extend_from_slice(self.etag.as_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let mut numbers = [0u64; 6];
        let mut rest = bytes;
        for n in &mut numbers {
            let (head, tail) = rest.split_first_chunk::<8>()?;
            *n = u64::from_le_bytes(*head);
            rest = tail;
        }
        let [generation, body_generation, lease_holder, lease_until_ns, next_fetch_ns, early_refetch_ns] = numbers;
        let etag = String::from_utf8(rest.to_vec()).ok()?;
        Some(Self { generation, body_generation, lease_holder, lease_until_ns, next_fetch_ns, early_refetch_ns, etag })
    }

    /// Whether the body is far enough behind that the next fetch should ask
    /// for the whole document.
    fn body_is_stale(&self) -> bool {
        self.generation.saturating_sub(self.body_generation) >= RING / 2
    }
}

/// One fetched document in shared data, named by `id` (e.g. `keys/<tag>`).
pub struct SharedDocument<'a> {
    store: &'a dyn SharedStore,
    meta_key: String,
    body_key: String,
    ring_prefix: String,
}

/// What a fetch attempt ended with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A whole new document, published as the next generation. `changes`,
    /// when given, is what differs from the current generation, so workers
    /// holding it need not re-read the whole.
    Fresh { body: Vec<u8>, etag: Option<String>, changes: Option<Vec<u8>> },
    /// The current generation's document, whole: it becomes the body.
    Rebased { body: Vec<u8>, etag: Option<String> },
    /// Already written where readers find it (a key set, in its index):
    /// published as the next generation, with no body to re-read.
    Applied { etag: Option<String> },
    /// One page of a whole set is in: the fetcher keeps its lease and asks
    /// for the next page at once (nothing is published yet).
    Page,
    /// Only what changed since generation `base`, published as the next one.
    Changes { changes: Vec<u8>, etag: Option<String>, base: u64 },
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
    /// Apply these changes, in order; the last one's generation is current.
    Changes(Vec<(u64, Vec<u8>)>),
    /// Re-read the whole document at `generation`, then apply `then`.
    Whole { generation: u64, body: Vec<u8>, then: Vec<(u64, Vec<u8>)> },
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
        Self {
            store,
            meta_key: format!("edge_auth/src/{id}/meta"),
            body_key: format!("edge_auth/src/{id}/body"),
            ring_prefix: format!("edge_auth/src/{id}/changes/"),
        }
    }

    pub fn meta(&self) -> Meta {
        self.store.get(&self.meta_key).and_then(|(bytes, _)| Meta::decode(&bytes)).unwrap_or_default()
    }

    fn slot_key(&self, generation: u64) -> String {
        format!("{}{}", self.ring_prefix, generation % RING)
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
    /// `ETag` to send: empty when the whole document is wanted.
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
        .map(|meta| if meta.body_is_stale() { String::new() } else { meta.etag })
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
        // The entries first, then the generation that announces them.
        let (etag, generation, body_generation) = match &outcome {
            Outcome::Fresh { body, etag, changes } => {
                // An empty slot says "re-read the body": no stale slot of an
                // earlier life of this shared data is ever taken for this one.
                let changes = changes.as_deref().filter(|c| c.len() <= MAX_DELTA).unwrap_or_default();
                let written = self.store.set(&self.slot_key(next), &tagged(next, changes), Cas::Any).is_ok()
                    && self.store.set(&self.body_key, &tagged(next, body), Cas::Any).is_ok();
                if !written {
                    return self.finish(holder, now_ns, refresh, Outcome::Failed, None);
                }
                (etag.clone(), next, next)
            }
            Outcome::Rebased { body, etag } => {
                let at = current.generation;
                if self.store.set(&self.body_key, &tagged(at, body), Cas::Any).is_err() {
                    return self.finish(holder, now_ns, refresh, Outcome::Failed, None);
                }
                (etag.clone(), at, at)
            }
            Outcome::Changes { changes, etag, base } => {
                // The ring must still hold every change after the body.
                let fits = next.saturating_sub(current.body_generation) <= RING;
                if *base != current.generation || !fits || changes.len() > MAX_DELTA || changes.is_empty() {
                    return self.finish(holder, now_ns, refresh, Outcome::Resync, None);
                }
                if self.store.set(&self.slot_key(next), &tagged(next, changes), Cas::Any).is_err() {
                    return self.finish(holder, now_ns, refresh, Outcome::Failed, None);
                }
                (etag.clone(), next, current.body_generation)
            }
            Outcome::Applied { etag } => (etag.clone(), next, next),
            Outcome::Unchanged | Outcome::Page | Outcome::Failed | Outcome::Resync => {
                (None, current.generation, current.body_generation)
            }
        };
        let published = self.update(|meta| {
            if meta.lease_holder == holder {
                meta.lease_until_ns = 0;
            }
            match &outcome {
                Outcome::Fresh { .. } | Outcome::Rebased { .. } | Outcome::Changes { .. } | Outcome::Applied { .. } => {
                    meta.generation = generation;
                    meta.body_generation = body_generation;
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
    /// current. Changes are offered only to a worker at most [`RING`]
    /// generations behind whose slots all survive.
    pub fn since(&self, known: u64) -> Published {
        let generation = self.meta().generation;
        if generation == known || generation == 0 {
            return Published::Current;
        }
        if known != 0 && known < generation && generation - known <= RING {
            if let Some(changes) = self.changes(known, generation) {
                return Published::Changes(changes);
            }
        }
        let Some((at, body)) = self.store.get(&self.body_key).and_then(|(value, _)| untag(value)) else {
            return Published::Current;
        };
        // Changes after the body, if the ring still has them all; if not,
        // the body alone, and the rest at a later look.
        let then = if at < generation && generation - at <= RING { self.changes(at, generation) } else { None };
        Published::Whole { generation: at, body, then: then.unwrap_or_default() }
    }

    /// The changes of generations `after + 1 ..= upto`, if every slot still
    /// holds its own and none says "re-read the body".
    fn changes(&self, after: u64, upto: u64) -> Option<Vec<(u64, Vec<u8>)>> {
        (after.saturating_add(1)..=upto)
            .map(|g| {
                let (tag, changes) = self.store.get(&self.slot_key(g)).and_then(|(value, _)| untag(value))?;
                (tag == g && !changes.is_empty()).then_some((g, changes))
            })
            .collect()
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
        Outcome::Fresh { body: body.to_vec(), etag: etag.map(str::to_owned), changes: None }
    }

    fn change(doc: &SharedDocument<'_>, now: u64, bytes: &[u8]) -> u64 {
        let base = doc.meta().generation;
        doc.try_lease(1, now, REFRESH, LEASE).unwrap();
        let outcome = Outcome::Changes { changes: bytes.to_vec(), etag: Some("\"1\"".into()), base };
        doc.finish(1, now, REFRESH, outcome, Some(now))
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
    fn workers_follow_changes_and_failures_keep_the_last_document() {
        let store = MemoryStore::default();
        let source = SharedDocument::new(&store, "keys");
        assert_eq!(source.since(0), Published::Current, "never loaded");
        source.try_lease(1, T0, REFRESH, LEASE).unwrap();
        source.finish(1, T0, REFRESH, fresh(b"v1", None), None);
        let whole = |generation, body: &[u8], then| Published::Whole { generation, body: body.to_vec(), then };
        assert_eq!(source.since(0), whole(1, b"v1", vec![]));
        assert_eq!(source.since(1), Published::Current);
        assert_eq!(change(&source, T0 + S, b"d2"), 2);
        assert_eq!(change(&source, T0 + 2 * S, b"d3"), 3);
        assert_eq!(source.since(1), Published::Changes(vec![(2, b"d2".to_vec()), (3, b"d3".to_vec())]));
        assert_eq!(source.since(2), Published::Changes(vec![(3, b"d3".to_vec())]));
        assert_eq!(source.since(0), whole(1, b"v1", vec![(2, b"d2".to_vec()), (3, b"d3".to_vec())]));
        source.try_lease(1, T0 + 3 * S, REFRESH, LEASE).unwrap();
        source.finish(1, T0 + 3 * S, REFRESH, Outcome::Failed, None);
        source.try_lease(2, T0 + 4 * S, REFRESH, LEASE).unwrap();
        source.finish(2, T0 + 4 * S, REFRESH, Outcome::Unchanged, None);
        assert_eq!(source.meta().generation, 3);
        assert_eq!(source.meta().lease_until_ns, 0);
        // A whole document with what changed: holders of 3 apply the change.
        source.try_lease(2, T0 + 5 * S, REFRESH, LEASE).unwrap();
        let outcome = Outcome::Fresh { body: b"v4".to_vec(), etag: None, changes: Some(b"d4".to_vec()) };
        assert_eq!(source.finish(2, T0 + 5 * S, REFRESH, outcome, None), 4);
        assert_eq!(source.since(3), Published::Changes(vec![(4, b"d4".to_vec())]));
        assert_eq!(source.since(2), Published::Changes(vec![(3, b"d3".to_vec()), (4, b"d4".to_vec())]));
        assert_eq!(source.since(0), whole(4, b"v4", vec![]));
    }

    #[test]
    fn the_ring_is_bounded_and_the_body_is_brought_up_to_date() {
        let store = MemoryStore::default();
        let source = SharedDocument::new(&store, "keys");
        source.try_lease(1, T0, REFRESH, LEASE).unwrap();
        source.finish(1, T0, REFRESH, fresh(b"v1", Some("\"1\"")), None);
        for g in 2..=RING / 2 {
            assert_eq!(change(&source, T0 + g * S, format!("d{g}").as_bytes()), g);
        }
        assert_eq!(source.meta().body_generation, 1);
        assert_eq!(source.meta().generation, RING / 2);
        assert_eq!(source.try_lease(1, T0 + 100 * S, REFRESH, LEASE), Some("\"1\"".into()));
        source.finish(1, T0 + 100 * S, REFRESH, Outcome::Unchanged, None);
        change(&source, T0 + 200 * S, b"d9");
        // RING / 2 behind: the next fetch asks for the whole document.
        assert_eq!(source.try_lease(1, T0 + 300 * S, REFRESH, LEASE), Some(String::new()));
        source.finish(1, T0 + 300 * S, REFRESH, Outcome::Rebased { body: b"v9".to_vec(), etag: None }, None);
        assert_eq!(source.meta().body_generation, 9);
        assert_eq!(source.since(0), Published::Whole { generation: 9, body: b"v9".to_vec(), then: vec![] });
        // Changes that would outrun the ring are refused, and the whole asked for.
        for g in 10..=9 + RING {
            assert_eq!(change(&source, T0 + (300 + g) * S, b"d"), g);
        }
        assert_eq!(change(&source, T0 + 400 * S, b"d"), 9 + RING);
        assert_eq!(source.meta().etag, "");
        assert_eq!(store.len(), 2 + RING as usize, "meta, body and the ring: never more");
    }

    #[test]
    fn oversized_or_misplaced_changes_are_not_published() {
        let store = MemoryStore::default();
        let source = SharedDocument::new(&store, "keys");
        source.try_lease(1, T0, REFRESH, LEASE).unwrap();
        source.finish(1, T0, REFRESH, fresh(b"v1", Some("\"1\"")), None);
        source.try_lease(1, T0 + S, REFRESH, LEASE).unwrap();
        let outcome = Outcome::Changes { changes: b"d".to_vec(), etag: None, base: 7 };
        assert_eq!(source.finish(1, T0 + S, REFRESH, outcome, None), 1);
        assert_eq!(source.meta().etag, "", "resync: the next fetch asks for the whole");
        source.try_lease(1, T0 + 3 * S, REFRESH, LEASE).unwrap();
        let outcome = Outcome::Changes { changes: vec![b' '; MAX_DELTA + 1], etag: None, base: 1 };
        assert_eq!(source.finish(1, T0 + 3 * S, REFRESH, outcome, None), 1);
        // A whole document whose change is too large: everyone re-reads it.
        source.try_lease(1, T0 + 5 * S, REFRESH, LEASE).unwrap();
        let outcome = Outcome::Fresh { body: b"v2".to_vec(), etag: None, changes: Some(vec![b' '; MAX_DELTA + 1]) };
        assert_eq!(source.finish(1, T0 + 5 * S, REFRESH, outcome, None), 2);
        assert_eq!(source.since(1), Published::Whole { generation: 2, body: b"v2".to_vec(), then: vec![] });
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
            body_generation: 2,
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
