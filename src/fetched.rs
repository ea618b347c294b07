//! A worker's view of the fetched documents: the key set and each provider's
//! JWKS, brought up to date when the shared generation changes — by
//! applying the changes published since the generation held, or by
//! re-parsing the whole document when too far behind.

use crate::api_key::{KeySet, RecordRules};
use crate::config::{ConfigError, JwkSetDoc, KeyChangesDoc, KeyRecordDoc};
use crate::jwt::{verify_keys, VerifyKey};
use crate::policy::Policy;
use crate::remote::{Endpoint, Meta, Outcome, Published, SharedDocument, MAX_BODY};
use crate::store::SharedStore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What a key server answers: the whole set (`keys`, `revoked`), or what
/// changed since the version the filter holds (`base`, `changes`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySetAnswer {
    pub version: String,
    pub keys: Option<Vec<KeyRecordDoc>>,
    pub revoked: Option<Vec<String>>,
    pub base: Option<String>,
    pub changes: Option<KeyChangesDoc>,
}

/// A changes-only answer, as written to the ring for other workers.
#[derive(Serialize)]
struct ChangesAnswer<'a> {
    version: &'a str,
    base: &'a str,
    changes: &'a KeyChangesDoc,
}

/// An answer once parsed.
pub enum Parsed {
    /// A whole key set, validated, and the records it was built from.
    Keys {
        version: String,
        keys: KeySet,
        records: Vec<KeyRecordDoc>,
    },
    /// Changes, checked only for shape: records are checked against the
    /// set they change ([`KeySet::check`]).
    Changes {
        version: String,
        base: String,
        changes: KeyChangesDoc,
    },
    Jwks(Vec<VerifyKey>),
}

/// What a source holds once parsed.
pub enum Document {
    /// A key set and the server's name for it (`version`).
    Keys(KeySet, String),
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

    /// This feed's document in shared data.
    pub fn shared<'a>(&self, store: &'a dyn SharedStore) -> SharedDocument<'a> {
        SharedDocument::new(store, &self.id)
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
            let KeySetAnswer { version, keys, revoked, base, changes } = answer;
            match (keys, revoked, base, changes) {
                (Some(records), revoked, None, None) => {
                    let revoked = revoked.unwrap_or_default();
                    let keys = with_rules(policy, |rules| KeySet::build(&records, &revoked, rules, "key set"))?;
                    Ok(Parsed::Keys { version, keys, records })
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
fn with_rules<T>(policy: &Policy, f: impl FnOnce(&RecordRules<'_>) -> T) -> T {
    f(&RecordRules { account_ok: &|a| policy.accounts.is_valid(a), plans: &policy.plans })
}

/// One feed as a worker last saw it.
struct Loaded {
    feed: Feed,
    generation: u64,
    document: Option<Document>,
}

impl Loaded {
    /// Applies published changes in order; false (and left at the last one
    /// applied) if one does not apply.
    fn apply(&mut self, policy: &Policy, published: &[(u64, Vec<u8>)]) -> bool {
        for (generation, bytes) in published {
            let Some(Document::Keys(keys, version)) = &mut self.document else { return false };
            let Ok(Parsed::Changes { version: next, changes, .. }) = parse(policy, Kind::Keys, bytes) else {
                return false;
            };
            match with_rules(policy, |rules| keys.check(&changes, rules, "key set.changes")) {
                Ok(checked) => keys.apply(checked),
                Err(_) => return false,
            }
            *version = next;
            self.generation = *generation;
        }
        true
    }

    /// Re-reads a whole document, then the changes after it. A body that
    /// fails to parse here (it was valid when published) leaves the last one
    /// in place. Returns whether a JWKS changed.
    fn whole(&mut self, policy: &Policy, generation: u64, body: &[u8], then: &[(u64, Vec<u8>)]) -> bool {
        self.generation = generation;
        let document = match parse(policy, self.feed.kind, body) {
            Ok(Parsed::Keys { version, keys, .. }) => Document::Keys(keys, version),
            Ok(Parsed::Jwks(keys)) => Document::Jwks(keys),
            Ok(Parsed::Changes { .. }) | Err(_) => return false,
        };
        let jwks = matches!(document, Document::Jwks(_));
        self.document = Some(document);
        self.apply(policy, then);
        jwks
    }

    /// The key set held, if it is the one published at `generation`.
    fn held_keys(&self, generation: u64) -> Option<(&KeySet, &str)> {
        match &self.document {
            Some(Document::Keys(keys, version)) if self.generation == generation => Some((keys, version)),
            _ => None,
        }
    }
}

/// The fetched documents of one worker.
pub struct Fetched {
    loaded: Vec<Loaded>,
}

impl Fetched {
    /// Nothing fetched and no sources (a policy without `source`s).
    pub const fn empty() -> Self {
        Self { loaded: Vec::new() }
    }

    /// Nothing loaded yet from `feeds`.
    pub fn new(feeds: &[Feed]) -> Self {
        Self { loaded: feeds.iter().map(|feed| Loaded { feed: feed.clone(), generation: 0, document: None }).collect() }
    }

    /// Brings every feed up to the generation published in shared data.
    /// Returns whether a JWKS changed: tokens verified with a key that is
    /// now gone must not outlive it in a cache.
    pub fn sync(&mut self, policy: &Policy, store: &dyn SharedStore) -> bool {
        let mut jwks_changed = false;
        for loaded in &mut self.loaded {
            let shared = loaded.feed.shared(store);
            match shared.since(loaded.generation) {
                Published::Current => {}
                Published::Changes(changes) => {
                    if !loaded.apply(policy, &changes) {
                        if let Published::Whole { generation, body, then } = shared.since(0) {
                            jwks_changed |= loaded.whole(policy, generation, &body, &then);
                        }
                    }
                }
                Published::Whole { generation, body, then } => {
                    jwks_changed |= loaded.whole(policy, generation, &body, &then);
                }
            }
        }
        jwks_changed
    }

    /// Judges what `feed`'s server answered (`status` is `none` when the
    /// call itself failed), logging why an answer is not used. This worker
    /// must be in sync first: changes are placed on the set it holds, and a
    /// whole set is published with what differs from it.
    pub fn assess(
        &self,
        policy: &Policy,
        feed: &Feed,
        status: &str,
        body: Option<Vec<u8>>,
        etag: Option<String>,
        meta: &Meta,
    ) -> Outcome {
        let body = match (status, body) {
            ("304", _) => return Outcome::Unchanged,
            ("200", Some(body)) if body.len() <= MAX_BODY => body,
            (status, _) => {
                log::warn!("edge-auth: source {}: HTTP {status}, keeping the last good answer", feed.id);
                return Outcome::Failed;
            }
        };
        let held = self.find(feed.kind).and_then(|l| l.held_keys(meta.generation));
        match parse(policy, feed.kind, &body) {
            Ok(Parsed::Jwks(keys)) => {
                log::info!("edge-auth: source {}: JWKS with {} keys", feed.id, keys.len());
                Outcome::Fresh { body, etag, changes: None }
            }
            Ok(Parsed::Keys { version, keys, records }) => {
                log::info!("edge-auth: source {}: key set version {version:?}, {} keys", feed.id, keys.len());
                let Some((old, base)) = held else { return Outcome::Fresh { body, etag, changes: None } };
                let changes = old.diff(&keys, &records);
                if changes.is_empty() && version == base {
                    let current = meta.body_generation == meta.generation && etag.as_deref().unwrap_or("") == meta.etag;
                    return if current { Outcome::Unchanged } else { Outcome::Rebased { body, etag } };
                }
                let changes = serde_json::to_vec(&ChangesAnswer { version: &version, base, changes: &changes }).ok();
                Outcome::Fresh { body, etag, changes }
            }
            Ok(Parsed::Changes { version, base, changes }) => match held {
                Some((old, held)) if held == base => match with_rules(policy, |r| {
                    old.check(&changes, r, "key set.changes")
                }) {
                    Ok(_) => {
                        log::info!(
                            "edge-auth: source {}: key set version {version:?} (changes on {base:?}: {} upserted, \
                             {} removed, {} revoked, {} unrevoked)",
                            feed.id,
                            changes.upsert.len(),
                            changes.remove.len(),
                            changes.revoke.len(),
                            changes.unrevoke.len()
                        );
                        Outcome::Changes { changes: body, etag, base: meta.generation }
                    }
                    Err(err) => {
                        log::warn!("edge-auth: source {}: invalid changes, keeping the last good set: {err}", feed.id);
                        Outcome::Failed
                    }
                },
                _ => {
                    let held = held.map_or("nothing", |(_, v)| v);
                    log::warn!(
                        "edge-auth: source {}: changes on version {base:?} but {held:?} is held; asking for the whole set",
                        feed.id
                    );
                    Outcome::Resync
                }
            },
            Err(err) => {
                log::warn!("edge-auth: source {}: invalid answer, keeping the last good one: {err}", feed.id);
                Outcome::Failed
            }
        }
    }

    fn find(&self, kind: Kind) -> Option<&Loaded> {
        self.loaded.iter().find(|l| l.feed.kind == kind)
    }

    /// The fetched key set: `Err` if a source is configured and never loaded.
    pub fn keys(&self) -> Result<Option<&KeySet>, NeverLoaded> {
        match self.find(Kind::Keys) {
            None => Ok(None),
            Some(Loaded { document: Some(doc), .. }) => match doc {
                Document::Keys(keys, _) => Ok(Some(keys)),
                Document::Jwks(_) => Ok(None),
            },
            Some(_) => Err(NeverLoaded),
        }
    }

    /// Provider `n`'s fetched keys: `Err` if its source never loaded.
    pub fn jwks(&self, n: usize) -> Result<&[VerifyKey], NeverLoaded> {
        match self.find(Kind::Jwks(n)) {
            None => Ok(&[]),
            Some(Loaded { document: Some(doc), .. }) => match doc {
                Document::Jwks(keys) => Ok(keys),
                Document::Keys(..) => Ok(&[]),
            },
            Some(_) => Err(NeverLoaded),
        }
    }

    /// Provider `n`'s JWKS feed, if it has one.
    pub fn jwks_feed(&self, n: usize) -> Option<&Feed> {
        self.find(Kind::Jwks(n)).map(|l| &l.feed)
    }
}

/// A source that has never produced a valid document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NeverLoaded;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api_key::KeyHasher;
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

    /// One fetch by `fetcher`: its answer assessed and published.
    fn fetch(policy: &Policy, fetcher: &mut Fetched, store: &MemoryStore, body: &str, etag: &str) -> Outcome {
        fetcher.sync(policy, store);
        let feed = feeds(policy).remove(0);
        let shared = feed.shared(store);
        let now = T0 + shared.meta().generation;
        shared.try_lease(1, now, Duration::from_secs(1), Duration::from_secs(30));
        let outcome = fetcher.assess(policy, &feed, "200", Some(body.into()), Some(etag.into()), &shared.meta());
        shared.finish(1, now, Duration::from_secs(1), outcome.clone(), Some(now));
        outcome
    }

    fn state(fetched: &Fetched, ids: &[&str]) -> Vec<(bool, bool)> {
        let hasher = KeyHasher::new(b"pepper").unwrap();
        let keys = fetched.keys().unwrap().unwrap();
        ids.iter().map(|id| (keys.find(&hasher.hash(id)).is_some(), keys.is_revoked(id))).collect()
    }

    #[test]
    fn changes_reach_every_worker_without_a_whole_re_read() {
        let policy = policy();
        let store = MemoryStore::default();
        let feeds = feeds(&policy);
        let (mut fetcher, mut worker) = (Fetched::new(&feeds), Fetched::new(&feeds));
        let whole = format!(r#"{{"version":"1","keys":[{},{}]}}"#, record("a"), record("b"));
        assert!(matches!(fetch(&policy, &mut fetcher, &store, &whole, "\"1\""), Outcome::Fresh { changes: None, .. }));
        worker.sync(&policy, &store);
        assert_eq!(state(&worker, &["a", "b", "c"]), [(true, false), (true, false), (false, false)]);

        let delta = format!(r#"{{"version":"2","base":"1","changes":{{"upsert":[{}],"revoke":["a"]}}}}"#, record("c"));
        assert!(matches!(fetch(&policy, &mut fetcher, &store, &delta, "\"2\""), Outcome::Changes { base: 1, .. }));
        let feed = &feeds[0];
        assert!(matches!(feed.shared(&store).since(1), Published::Changes(_)), "one slot to apply");
        worker.sync(&policy, &store);
        assert_eq!(state(&worker, &["a", "b", "c"]), [(true, true), (true, false), (true, false)]);

        // A whole set from a polling server travels as its difference too.
        let whole = format!(r#"{{"version":"3","keys":[{},{}],"revoked":["a"]}}"#, record("a"), record("c"));
        let Outcome::Fresh { changes: Some(changes), .. } = fetch(&policy, &mut fetcher, &store, &whole, "\"3\"")
        else {
            panic!("no changes")
        };
        assert!(changes.len() < 100, "{}", String::from_utf8_lossy(&changes));
        worker.sync(&policy, &store);
        assert_eq!(state(&worker, &["a", "b", "c"]), [(true, true), (false, false), (true, false)]);
        // The same set again publishes nothing.
        assert_eq!(fetch(&policy, &mut fetcher, &store, &whole, "\"3\""), Outcome::Unchanged);

        // A late joiner reads the whole body, then the changes after it.
        let mut late = Fetched::new(&feeds);
        late.sync(&policy, &store);
        assert_eq!(state(&late, &["a", "b", "c"]), [(true, true), (false, false), (true, false)]);
    }

    #[test]
    fn bad_changes_keep_the_last_good_set() {
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
        let mut worker = Fetched::new(&feeds);
        worker.sync(&policy, &store);
        assert_eq!(state(&worker, &["a"]), [(true, false)]);
    }
}
