//! A worker's view of the fetched documents. The key set lives once per
//! process in shared data ([`KeyIndex`]): the fetching worker writes it,
//! every worker reads it in place. Each provider's JWKS is small: workers
//! hold their own parse, brought up to date when the shared generation
//! changes.

use crate::api_key::{KeyIndex, RecordRules, Staged};
use crate::config::{ConfigError, JwkSetDoc, KeyChangesDoc, KeyRecordDoc};
use crate::jwt::{verify_keys, VerifyKey};
use crate::policy::Policy;
use crate::remote::{Endpoint, Outcome, Published, SharedDocument, MAX_BODY};
use crate::store::SharedStore;
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// The most pages one whole set may come in: a server that never stops
/// paging is refused rather than fetched forever.
pub const MAX_PAGES: usize = 4096;
/// The most keys plus revoked ids one set may hold (2^20 shards of 16): the
/// memory a server can make Envoy hold is bounded, whatever it sends.
pub const MAX_ENTRIES: usize = 1 << 24;

/// What a key server answers: the whole set (`keys`, `revoked`), perhaps
/// one page of it (`next` names the page after), or what changed since the
/// version the filter holds (`base`, `changes`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySetAnswer {
    pub version: String,
    pub keys: Option<Vec<KeyRecordDoc>>,
    pub revoked: Option<Vec<String>>,
    pub next: Option<String>,
    pub base: Option<String>,
    pub changes: Option<KeyChangesDoc>,
}

/// An answer once parsed.
pub enum Parsed {
    /// A whole key set, or one page of it, its records checked.
    Keys {
        version: String,
        page: Staged,
        next: Option<String>,
    },
    /// Changes, checked only for shape: records are checked against the
    /// set they change ([`KeyIndex::check`]).
    Changes {
        version: String,
        base: String,
        changes: KeyChangesDoc,
    },
    Jwks(Vec<VerifyKey>),
}

/// Which document a source fetches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Keys,
    /// The JWKS of provider `n`.
    Jwks(usize),
}

/// A document the policy fetches, named in shared data by where it comes
/// from, so a policy pointing elsewhere never reads another URL's document.
#[derive(Debug, Clone)]
pub struct Feed {
    pub id: String,
    pub kind: Kind,
    pub endpoint: Endpoint,
}

impl Feed {
    fn new(kind: Kind, endpoint: &Endpoint) -> Self {
        let digest = Sha256::digest(format!("{}\0{}", endpoint.cluster, endpoint.path));
        let tag: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
        let id = match kind {
            Kind::Keys => format!("keys/{tag}"),
            Kind::Jwks(n) => format!("jwks{n}/{tag}"),
        };
        Self { id, kind, endpoint: endpoint.clone() }
    }

    /// This feed's fetch schedule (and, for a JWKS, its document) in shared data.
    pub fn shared<'a>(&self, store: &'a dyn SharedStore) -> SharedDocument<'a> {
        SharedDocument::new(store, &self.id)
    }

    /// This feed's key set in shared data.
    pub fn index<'a>(&self, store: &'a dyn SharedStore) -> KeyIndex<'a> {
        KeyIndex::new(store, &self.id)
    }
}

/// Every document a policy fetches.
pub fn feeds(policy: &Policy) -> Vec<Feed> {
    let keys = policy.api_keys.as_ref().and_then(|k| k.source.as_ref()).map(|e| Feed::new(Kind::Keys, e));
    let jwks = policy
        .jwt_providers
        .iter()
        .enumerate()
        .filter_map(|(n, p)| p.jwks_source.as_ref().map(|e| Feed::new(Kind::Jwks(n), e)));
    keys.into_iter().chain(jwks).collect()
}

/// Parses a fetched body with the same rules as the inline policy.
pub fn parse(policy: &Policy, kind: Kind, body: &[u8]) -> Result<Parsed, ConfigError> {
    match kind {
        Kind::Keys => {
            let answer: KeySetAnswer =
                serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_slice(body))
                    .map_err(|e| ConfigError::new(format!("key set: {}", e.path()), e.into_inner().to_string()))?;
            let KeySetAnswer { version, keys, revoked, next, base, changes } = answer;
            match (keys, revoked, base, changes) {
                (Some(records), revoked, None, None) => {
                    let mut page = Staged::new(&version);
                    with_rules(policy, |rules| {
                        page.add(&records, revoked.as_deref().unwrap_or_default(), rules, "key set")
                    })?;
                    page.check_unique()?;
                    Ok(Parsed::Keys { version, page, next })
                }
                (None, None, Some(_), Some(_)) if next.is_some() => {
                    Err(ConfigError::new("key set.next", "changes are never paged"))
                }
                (None, None, Some(base), Some(changes)) => Ok(Parsed::Changes { version, base, changes }),
                (_, _, None, None) => Err(ConfigError::new("key set.keys", "missing field `keys`")),
                (None, None, _, _) => {
                    Err(ConfigError::new("key set", "changes need both `base` (the version held) and `changes`"))
                }
                _ => {
                    Err(ConfigError::new("key set", "a whole set (keys, revoked) or changes (base, changes), not both"))
                }
            }
        }
        Kind::Jwks(_) => {
            let set: JwkSetDoc = serde_json::from_slice(body).map_err(|e| ConfigError::new("jwks", e.to_string()))?;
            Ok(Parsed::Jwks(verify_keys(&set, "jwks", None)?))
        }
    }
}

/// Runs `f` with the rules the policy's records are checked against.
pub fn with_rules<T>(policy: &Policy, f: impl FnOnce(&RecordRules<'_>) -> T) -> T {
    f(&RecordRules { account_ok: &|a| policy.accounts.is_valid(a), plans: &policy.plans })
}

/// One JWKS feed as a worker last saw it.
struct Loaded {
    feed: Feed,
    generation: u64,
    keys: Option<Vec<VerifyKey>>,
}

/// The fetching worker's whole set on its way in, page by page.
#[derive(Default)]
enum Paging {
    #[default]
    Idle,
    /// The next fetch asks for page `cursor`; `pages` holds those before it.
    Next { cursor: String, pages: Staged, etag: Option<String> },
    /// A page was fetched: its answer continues `pages`.
    Fetching { pages: Staged, etag: Option<String> },
    /// The set changed between pages: the next fetch asks for the first
    /// page again, without `If-None-Match`.
    Restart,
}

/// The fetched documents of one worker.
pub struct Fetched {
    jwks: Vec<Loaded>,
    keys: Option<Feed>,
    paging: Paging,
}

impl Fetched {
    /// Nothing fetched and no sources (a policy without `source`s).
    pub const fn empty() -> Self {
        Self { jwks: Vec::new(), keys: None, paging: Paging::Idle }
    }

    /// Nothing loaded yet from `feeds`.
    pub fn new(feeds: &[Feed]) -> Self {
        let jwks = feeds
            .iter()
            .filter(|f| f.kind != Kind::Keys)
            .map(|feed| Loaded { feed: feed.clone(), generation: 0, keys: None })
            .collect();
        Self { jwks, keys: feeds.iter().find(|f| f.kind == Kind::Keys).cloned(), paging: Paging::Idle }
    }

    /// Brings every JWKS up to the generation published in shared data.
    /// Returns whether one changed: tokens verified with a key that is now
    /// gone must not outlive it in a cache.
    pub fn sync(&mut self, store: &dyn SharedStore) -> bool {
        let mut changed = false;
        for loaded in &mut self.jwks {
            let Published::Whole { generation, body } = loaded.feed.shared(store).since(loaded.generation) else {
                continue;
            };
            loaded.generation = generation;
            // A body that fails to parse here (it was valid when published)
            // leaves the last one in place.
            if let Ok(set) = serde_json::from_slice::<JwkSetDoc>(&body) {
                if let Ok(keys) = verify_keys(&set, "jwks", None) {
                    loaded.keys = Some(keys);
                    changed = true;
                }
            }
        }
        changed
    }

    /// The request headers of `feed`'s next fetch: the next page of a
    /// whole set on its way in, or an ordinary fetch (`If-None-Match` with
    /// `etag`, a long poll).
    pub fn request_headers(&mut self, feed: &Feed, etag: &str) -> Vec<(&'static str, String)> {
        if feed.kind != Kind::Keys {
            return feed.endpoint.request_headers(etag);
        }
        match std::mem::take(&mut self.paging) {
            Paging::Next { cursor, pages, etag } => {
                let headers = feed.endpoint.page_headers(Some(&cursor));
                self.paging = Paging::Fetching { pages, etag };
                headers
            }
            Paging::Restart => feed.endpoint.page_headers(None),
            Paging::Idle | Paging::Fetching { .. } => feed.endpoint.request_headers(etag),
        }
    }

    /// Whether the answer awaited is a page of a whole set (it goes back
    /// to a long poll once in, as a changed set would).
    pub fn fetching_page(&self, feed: &Feed) -> bool {
        feed.kind == Kind::Keys && matches!(self.paging, Paging::Fetching { .. })
    }

    /// Takes what `feed`'s server answered (`status` is `none` when the
    /// call itself failed), logging why an answer is not used. A key set is
    /// written into shared data here, by this worker alone (it holds the
    /// fetch lease); a JWKS is published by the caller.
    pub fn assess(
        &mut self,
        policy: &Policy,
        feed: &Feed,
        answer: (&str, Option<Vec<u8>>, Option<String>),
        store: &dyn SharedStore,
    ) -> Outcome {
        let (status, body, etag) = answer;
        // A key set's pages so far belong to this answer only.
        let pages = if feed.kind == Kind::Keys { std::mem::take(&mut self.paging) } else { Paging::Idle };
        let body = match (status, body) {
            ("304", _) => return Outcome::Unchanged,
            ("200", Some(body)) if body.len() <= MAX_BODY => body,
            (status, _) => {
                log::warn!("edge-auth: source {}: HTTP {status}, keeping the last good answer", feed.id);
                return Outcome::Failed;
            }
        };
        match parse(policy, feed.kind, &body) {
            Ok(Parsed::Jwks(keys)) => {
                log::info!("edge-auth: source {}: JWKS with {} keys", feed.id, keys.len());
                Outcome::Fresh { body, etag }
            }
            Ok(Parsed::Keys { version, page, next }) => self.whole(feed, pages, (version, page, next), etag, store),
            Ok(Parsed::Changes { version, base, changes }) => {
                let index = feed.index(store);
                let held = index.header();
                if !held.loaded() || held.version != base {
                    let held = if held.loaded() { held.version.as_str() } else { "nothing" };
                    log::warn!(
                        "edge-auth: source {}: changes on version {base:?} but {held:?} is held; asking for the whole set",
                        feed.id
                    );
                    return Outcome::Resync;
                }
                let checked = match with_rules(policy, |r| index.check(&changes, r, "key set.changes")) {
                    Ok(checked) => checked,
                    Err(err) => {
                        log::warn!("edge-auth: source {}: invalid changes, keeping the last good set: {err}", feed.id);
                        return Outcome::Failed;
                    }
                };
                if index.apply(&checked, &version).is_err() {
                    log::warn!(
                        "edge-auth: source {}: shared data refused the changes; asking for the whole set",
                        feed.id
                    );
                    return Outcome::Resync;
                }
                log::info!(
                    "edge-auth: source {}: key set version {version:?} (changes on {base:?}: {} upserted, \
                     {} removed, {} revoked, {} unrevoked)",
                    feed.id,
                    changes.upsert.len(),
                    changes.remove.len(),
                    changes.revoke.len(),
                    changes.unrevoke.len()
                );
                Outcome::Applied { etag }
            }
            Err(err) => {
                log::warn!("edge-auth: source {}: invalid answer, keeping the last good one: {err}", feed.id);
                Outcome::Failed
            }
        }
    }

    /// A whole set, or one page of it: the next page is asked for, or the
    /// set goes live once its last page is in.
    fn whole(
        &mut self,
        feed: &Feed,
        pages: Paging,
        (version, page, next): (String, Staged, Option<String>),
        etag: Option<String>,
        store: &dyn SharedStore,
    ) -> Outcome {
        let (set, etag) = match pages {
            Paging::Fetching { mut pages, etag: first } if pages.version == version => {
                pages.append(page);
                (pages, first)
            }
            Paging::Fetching { pages, .. } => {
                log::warn!(
                    "edge-auth: source {}: version {version:?} in a page of {:?}; starting again",
                    feed.id,
                    pages.version
                );
                self.paging = Paging::Restart;
                return Outcome::Page;
            }
            Paging::Idle | Paging::Next { .. } | Paging::Restart => (page, etag),
        };
        if set.pages() > MAX_PAGES || set.len().saturating_add(set.revoked_len()) > MAX_ENTRIES {
            log::warn!(
                "edge-auth: source {}: a whole set over {MAX_PAGES} pages or {MAX_ENTRIES} keys and revoked ids; \
                 keeping the last good one",
                feed.id
            );
            return Outcome::Failed;
        }
        if let Some(cursor) = next {
            self.paging = Paging::Next { cursor, pages: set, etag };
            return Outcome::Page;
        }
        let index = feed.index(store);
        let held = index.header();
        if held.loaded() && held.version == set.version && set.pages() == 1 {
            return Outcome::Applied { etag };
        }
        match index.load(&set) {
            Ok(live) => {
                log::info!(
                    "edge-auth: source {}: key set version {:?}, {} keys, {} revoked, {} pages",
                    feed.id,
                    live.version,
                    live.keys,
                    set.revoked_len(),
                    set.pages()
                );
                Outcome::Applied { etag }
            }
            Err(err) => {
                log::warn!("edge-auth: source {}: invalid answer, keeping the last good one: {err}", feed.id);
                Outcome::Failed
            }
        }
    }

    /// The fetched key set, if the policy has a source.
    pub fn keys<'s>(&self, store: &'s dyn SharedStore) -> Option<KeyIndex<'s>> {
        self.keys.as_ref().map(|feed| feed.index(store))
    }

    fn find(&self, n: usize) -> Option<&Loaded> {
        self.jwks.iter().find(|l| l.feed.kind == Kind::Jwks(n))
    }

    /// Provider `n`'s fetched keys: `Err` if its source never loaded.
    pub fn jwks(&self, n: usize) -> Result<&[VerifyKey], NeverLoaded> {
        match self.find(n) {
            None => Ok(&[]),
            Some(Loaded { keys: Some(keys), .. }) => Ok(keys),
            Some(_) => Err(NeverLoaded),
        }
    }

    /// Provider `n`'s JWKS feed, if it has one.
    pub fn jwks_feed(&self, n: usize) -> Option<&Feed> {
        self.find(n).map(|l| &l.feed)
    }
}

/// A source that has never produced a valid document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NeverLoaded;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api_key::{KeyHasher, Lookup};
    use crate::store::MemoryStore;
    use crate::testing::EveryVar;
    use std::time::Duration;

    const T0: u64 = 1_800_000_000_000_000_000;

    fn policy() -> Policy {
        Policy::from_json(br#"{"api_keys":{"source":{"cluster":"ks","path":"/keys"}}}"#, &EveryVar("pepper")).unwrap()
    }

    fn record(id: &str) -> String {
        let hash = KeyHasher::new(b"pepper").unwrap().hash(id).to_hex();
        format!(r#"{{"id":"{id}","hash":"{hash}","org":"o","account":"acme"}}"#)
    }

    /// One fetch by `fetcher`: its answer taken and published.
    fn fetch(policy: &Policy, fetcher: &mut Fetched, store: &MemoryStore, body: &str, etag: &str) -> Outcome {
        let feed = feeds(policy).remove(0);
        let shared = feed.shared(store);
        let now = T0 + shared.meta().generation;
        shared.try_lease(1, now, Duration::from_secs(1), Duration::from_secs(30));
        let outcome = fetcher.assess(policy, &feed, ("200", Some(body.into()), Some(etag.into())), store);
        if outcome != Outcome::Page {
            shared.finish(1, now, Duration::from_secs(1), outcome.clone(), Some(now));
        }
        outcome
    }

    /// (known, revoked) for each key, as any worker reads the shared set.
    fn state(policy: &Policy, store: &MemoryStore, ids: &[&str]) -> Vec<(bool, bool)> {
        let hasher = KeyHasher::new(b"pepper").unwrap();
        let index = Fetched::new(&feeds(policy)).keys(store).unwrap();
        ids.iter()
            .map(|id| match with_rules(policy, |rules| index.find(&hasher.hash(id), rules)) {
                Lookup::Found(held) => (true, held.revoked),
                Lookup::Missing => (false, index.is_revoked(id).unwrap()),
                Lookup::Unavailable => panic!("not loaded"),
            })
            .collect()
    }

    #[test]
    fn changes_reach_every_worker_through_shared_data() {
        let policy = policy();
        let store = MemoryStore::default();
        let mut fetcher = Fetched::new(&feeds(&policy));
        let hasher = KeyHasher::new(b"pepper").unwrap();
        let index = fetcher.keys(&store).unwrap();
        assert_eq!(with_rules(&policy, |r| index.find(&hasher.hash("a"), r)), Lookup::Unavailable, "never loaded");
        let whole = format!(r#"{{"version":"1","keys":[{},{}]}}"#, record("a"), record("b"));
        assert_eq!(
            fetch(&policy, &mut fetcher, &store, &whole, "\"1\""),
            Outcome::Applied { etag: Some("\"1\"".into()) }
        );
        assert_eq!(state(&policy, &store, &["a", "b", "c"]), [(true, false), (true, false), (false, false)]);

        let delta = format!(r#"{{"version":"2","base":"1","changes":{{"upsert":[{}],"revoke":["a"]}}}}"#, record("c"));
        assert!(matches!(fetch(&policy, &mut fetcher, &store, &delta, "\"2\""), Outcome::Applied { .. }));
        assert_eq!(state(&policy, &store, &["a", "b", "c"]), [(true, true), (true, false), (true, false)]);
        assert_eq!(index.header().version, "2");
        assert_eq!(index.header().keys, 3);

        // A whole set from a polling server replaces the set at once.
        let whole = format!(r#"{{"version":"3","keys":[{},{}],"revoked":["a","z"]}}"#, record("a"), record("c"));
        assert!(matches!(fetch(&policy, &mut fetcher, &store, &whole, "\"3\""), Outcome::Applied { .. }));
        assert_eq!(
            state(&policy, &store, &["a", "b", "c", "z"]),
            [(true, true), (false, false), (true, false), (false, true)]
        );
        let meta = feeds(&policy)[0].shared(&store).meta();
        assert_eq!((meta.generation, meta.etag.as_str()), (3, "\"3\""), "no whole body to refresh, ever");
        // Unrevoking a key not in the set drops its record.
        let delta = r#"{"version":"4","base":"3","changes":{"unrevoke":["z","a"],"remove":["c"]}}"#;
        assert!(matches!(fetch(&policy, &mut fetcher, &store, delta, "\"4\""), Outcome::Applied { .. }));
        assert_eq!(state(&policy, &store, &["a", "c", "z"]), [(true, false), (false, false), (false, false)]);
        assert_eq!(index.header().keys, 1);
    }

    #[test]
    fn bad_answers_keep_the_last_good_set() {
        let policy = policy();
        let store = MemoryStore::default();
        let feeds = feeds(&policy);
        let mut fetcher = Fetched::new(&feeds);
        let whole = format!(r#"{{"version":"1","keys":[{}]}}"#, record("a"));
        fetch(&policy, &mut fetcher, &store, &whole, "\"1\"");
        let duplicate = format!(r#"{{"version":"2","base":"1","changes":{{"upsert":[{}]}}}}"#, record("a"));
        let duplicate = duplicate.replace(r#""id":"a""#, r#""id":"z""#);
        assert_eq!(fetch(&policy, &mut fetcher, &store, &duplicate, "\"2\""), Outcome::Failed);
        let elsewhere = r#"{"version":"9","base":"8","changes":{"revoke":["a"]}}"#;
        assert_eq!(fetch(&policy, &mut fetcher, &store, elsewhere, "\"9\""), Outcome::Resync);
        assert_eq!(feeds[0].shared(&store).meta().etag, "", "the next fetch asks for the whole set");
        let mixed = format!(r#"{{"version":"2","base":"1","keys":[{}],"changes":{{}}}}"#, record("a"));
        assert_eq!(fetch(&policy, &mut fetcher, &store, &mixed, "\"2\""), Outcome::Failed);
        let twice = format!(r#"{{"version":"2","keys":[{},{}]}}"#, record("b"), record("b"));
        assert_eq!(fetch(&policy, &mut fetcher, &store, &twice, "\"2\""), Outcome::Failed);
        let paged_changes = r#"{"version":"2","base":"1","changes":{},"next":"x"}"#;
        assert_eq!(fetch(&policy, &mut fetcher, &store, paged_changes, "\"2\""), Outcome::Failed);
        assert_eq!(state(&policy, &store, &["a", "b"]), [(true, false), (false, false)]);
    }

    #[test]
    fn a_paged_set_goes_live_after_its_last_page() {
        let policy = policy();
        let store = MemoryStore::default();
        let feeds = feeds(&policy);
        let feed = &feeds[0];
        let mut fetcher = Fetched::new(&feeds);
        let path = |f: &mut Fetched, etag: &str| {
            let headers = f.request_headers(feed, etag);
            let get = |name: &str| headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.clone());
            (get(":path").unwrap(), get("if-none-match"), get("prefer").is_some())
        };
        assert_eq!(path(&mut fetcher, ""), ("/keys".to_owned(), None, true));
        let first = format!(r#"{{"version":"1","keys":[{}],"next":"p 2"}}"#, record("a"));
        assert_eq!(fetch(&policy, &mut fetcher, &store, &first, "\"1\""), Outcome::Page);
        assert!(!fetcher.keys(&store).unwrap().header().loaded(), "not live before its last page");
        assert_eq!(path(&mut fetcher, "\"0\""), ("/keys?page=p%202".to_owned(), None, false));
        let second = format!(r#"{{"version":"1","keys":[{}],"revoked":["a"],"next":"3"}}"#, record("b"));
        assert_eq!(fetch(&policy, &mut fetcher, &store, &second, ""), Outcome::Page);
        path(&mut fetcher, "");
        let last = format!(r#"{{"version":"1","keys":[{}]}}"#, record("c"));
        assert_eq!(fetch(&policy, &mut fetcher, &store, &last, ""), Outcome::Applied { etag: Some("\"1\"".into()) });
        assert_eq!(state(&policy, &store, &["a", "b", "c"]), [(true, true), (true, false), (true, false)]);

        // The set changed between pages: the first page again, whole.
        let first = format!(r#"{{"version":"2","keys":[{}],"next":"2"}}"#, record("a"));
        assert_eq!(path(&mut fetcher, "\"1\""), ("/keys".to_owned(), Some("\"1\"".to_owned()), true));
        assert_eq!(fetch(&policy, &mut fetcher, &store, &first, "\"2\""), Outcome::Page);
        path(&mut fetcher, "");
        let moved = format!(r#"{{"version":"3","keys":[{}]}}"#, record("d"));
        assert_eq!(fetch(&policy, &mut fetcher, &store, &moved, ""), Outcome::Page);
        assert_eq!(path(&mut fetcher, "\"1\""), ("/keys".to_owned(), None, false));
        // A key in two pages is refused when the set is complete.
        let first = format!(r#"{{"version":"3","keys":[{}],"next":"2"}}"#, record("d"));
        assert_eq!(fetch(&policy, &mut fetcher, &store, &first, "\"3\""), Outcome::Page);
        path(&mut fetcher, "");
        assert_eq!(fetch(&policy, &mut fetcher, &store, &moved, ""), Outcome::Failed);
        assert_eq!(fetcher.keys(&store).unwrap().header().version, "1");
        // A failed page: the next fetch starts over.
        assert_eq!(path(&mut fetcher, "\"1\""), ("/keys".to_owned(), Some("\"1\"".to_owned()), true));
    }

    #[test]
    fn a_server_that_never_stops_paging_is_refused() {
        let policy = policy();
        let store = MemoryStore::default();
        let feeds = feeds(&policy);
        let mut fetcher = Fetched::new(&feeds);
        let endless = r#"{"version":"1","keys":[],"next":"more"}"#;
        for _ in 0..MAX_PAGES {
            assert_eq!(fetch(&policy, &mut fetcher, &store, endless, ""), Outcome::Page);
            fetcher.request_headers(&feeds[0], "");
        }
        assert_eq!(fetch(&policy, &mut fetcher, &store, endless, ""), Outcome::Failed);
        assert!(!fetcher.keys(&store).unwrap().header().loaded());
        assert!(!fetcher.fetching_page(&feeds[0]), "the pages held are dropped");
    }
}
