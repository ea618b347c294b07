//! The versions served: the current one, whose whole answer is written
//! once when first asked for, and a bounded history of earlier versions with
//! what changed from each to the next, so a filter holding one of them gets
//! only the changes since.

use crate::answer;
use crate::file::Content;
use bytes::Bytes;
use edge_auth::config::{KeyChangesDoc, KeyRecordDoc};
use edge_auth::remote::MAX_DELTA;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};

/// One version of the set.
pub struct Snapshot {
    pub version: String,
    /// `"<version>"`: the filter sends it back as `If-None-Match`.
    pub etag: String,
    pub keys: usize,
    pub revoked: usize,
    content: Arc<Content>,
    /// The whole answer in pages, written once when first asked for.
    pages: OnceLock<Vec<Bytes>>,
    /// Changes answers from earlier versions, written when first asked for
    /// (from the version just before: when this one is published), shared
    /// by every filter asking; `None` when the whole set is the better answer.
    changes: Mutex<HashMap<String, Option<Bytes>>>,
}

impl Snapshot {
    pub fn new(version: String, content: Arc<Content>, keys: usize, revoked: usize) -> Self {
        Self {
            etag: format!("\"{version}\""),
            version,
            keys,
            revoked,
            content,
            pages: OnceLock::new(),
            changes: Mutex::default(),
        }
    }

    /// Page `n` of the whole answer (`{"version","keys","revoked"}`, one
    /// page when it fits) in pages of `page_keys` keys (the same
    /// for the life of the process), written once.
    pub fn page(&self, n: usize, page_keys: usize) -> Option<Bytes> {
        let pages = self.pages.get_or_init(|| answer::pages(&self.version, &self.content, page_keys));
        pages.get(n).cloned()
    }
}

/// What to answer a filter that holds a version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// The whole set: [`Snapshot::page`] 0.
    Whole,
    Changes(Bytes),
    NotModified,
}

/// An earlier version, and what turned it into the next one.
struct Past {
    version: String,
    changes: KeyChangesDoc,
}

/// The current version and a bounded history of earlier ones.
pub struct History {
    current: Arc<Snapshot>,
    past: VecDeque<Past>,
    limit: usize,
}

impl History {
    pub fn new(first: Snapshot, limit: usize) -> Self {
        Self { current: Arc::new(first), past: VecDeque::new(), limit: limit.max(1) }
    }

    pub fn current(&self) -> Arc<Snapshot> {
        Arc::clone(&self.current)
    }

    /// Makes `next` current (unless it is the current set again), `changes`
    /// being what turned the current set into it; the oldest version beyond
    /// the limit is forgotten. Returns whether it was new.
    pub fn push(&mut self, next: Snapshot, changes: KeyChangesDoc) -> bool {
        if next.version == self.current.version {
            return false;
        }
        let previous = std::mem::replace(&mut self.current, Arc::new(next));
        self.past.push_back(Past { version: previous.version.clone(), changes });
        while self.past.len() >= self.limit {
            self.past.pop_front();
        }
        // Filters long-polling on the version just replaced ask next: their
        // answer is written now, once for all of them.
        let _ = self.changes_from(&previous.version);
        true
    }

    /// The page a cursor names (`<n>.<version>`) in pages of `page_keys`
    /// keys: of the current version, or, for a version gone by, the current
    /// version's first page (the filter sees another version and starts
    /// again). `None`: no such page.
    pub fn page(&self, cursor: &str, page_keys: usize) -> Option<(Arc<Snapshot>, Bytes)> {
        let (n, version) = cursor.split_once('.')?;
        let n: usize = if version == self.current.version { n.parse().ok()? } else { 0 };
        let page = self.current.page(n, page_keys)?;
        Some((self.current(), page))
    }

    /// The answer for a filter holding `held` (its `If-None-Match`).
    pub fn reply(&self, held: Option<&str>) -> (Arc<Snapshot>, Reply) {
        let reply = match held {
            Some(v) if v == self.current.version => Reply::NotModified,
            Some(v) => self.changes_from(v).map_or(Reply::Whole, Reply::Changes),
            None => Reply::Whole,
        };
        (self.current(), reply)
    }

    /// The changes answer from `base` to the current version, if `base` is
    /// remembered and the answer is small (64 KiB) and smaller than
    /// the whole set.
    fn changes_from(&self, base: &str) -> Option<Bytes> {
        let current = &self.current;
        if let Some(answer) = current.changes.lock().ok()?.get(base) {
            return answer.clone();
        }
        let from = self.past.iter().position(|p| p.version == base)?;
        let changes = compose(self.past.iter().skip(from).map(|p| &p.changes));
        let answer = answer::changes(&current.version, base, &changes)
            .filter(|a| a.len() <= MAX_DELTA && a.len() < answer::whole_len(&current.version, &current.content));
        if let Ok(mut cached) = current.changes.lock() {
            cached.insert(base.to_owned(), answer.clone());
        }
        answer
    }
}

/// Successive changes as one: each key id touched ends upserted (with its
/// last record) or removed, each revoked id touched ends revoked or not.
fn compose<'a>(all: impl Iterator<Item = &'a KeyChangesDoc>) -> KeyChangesDoc {
    let mut keys: BTreeMap<&str, Option<&KeyRecordDoc>> = BTreeMap::new();
    let mut revoked: BTreeMap<&str, bool> = BTreeMap::new();
    for changes in all {
        keys.extend(changes.remove.iter().map(|id| (id.as_str(), None)));
        keys.extend(changes.upsert.iter().map(|r| (r.id.as_str(), Some(r))));
        revoked.extend(changes.revoke.iter().map(|id| (id.as_str(), true)));
        revoked.extend(changes.unrevoke.iter().map(|id| (id.as_str(), false)));
    }
    let ids = |revoke: bool| revoked.iter().filter(|(_, r)| **r == revoke).map(|(id, _)| (*id).to_owned()).collect();
    KeyChangesDoc {
        upsert: keys.values().flatten().map(|r| (*r).clone()).collect(),
        remove: keys.iter().filter(|(_, r)| r.is_none()).map(|(id, _)| (*id).to_owned()).collect(),
        revoke: ids(true),
        unrevoke: ids(false),
    }
}

/// The version named by an `If-None-Match` value (a weak tag counts too).
pub fn held_version(if_none_match: &str) -> Option<&str> {
    let tag = if_none_match.trim();
    let tag = tag.strip_prefix("W/").unwrap_or(tag);
    tag.strip_prefix('"')?.strip_suffix('"')
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use crate::loader::{Loader, Next};
    use edge_auth::policy::Policy;
    use edge_auth::testing::EveryVar;

    pub fn policy() -> Policy {
        Policy::from_json(br#"{"api_keys":{}}"#, &EveryVar("pepper")).unwrap()
    }

    pub fn record(id: &str, n: u8) -> String {
        format!(r#"{{"id":"{id}","hash":"{}","org":"o","account":"acme"}}"#, format!("{n:02x}").repeat(32))
    }

    pub fn file(keys: &[String], revoked: &str) -> Bytes {
        Bytes::from(format!(r#"{{"version":"v","keys":[{}],"revoked":[{revoked}]}}"#, keys.join(",")))
    }

    pub fn json(bytes: &Bytes) -> serde_json::Value {
        serde_json::from_slice(bytes).unwrap()
    }

    fn push(history: &mut History, loader: &mut Loader, keys: &[String], revoked: &str) -> bool {
        let Next { snapshot, changes, .. } = loader.load(file(keys, revoked)).unwrap();
        history.push(snapshot, changes)
    }

    #[test]
    fn holders_of_a_known_version_get_only_the_changes() {
        let mut loader = Loader::new(policy());
        let v1 = loader.load(file(&[record("a", 1), record("b", 2)], "")).unwrap().snapshot;
        let first = v1.version.clone();
        let mut history = History::new(v1, 4);
        assert_eq!(history.reply(Some(&first)).1, Reply::NotModified);
        let (current, reply) = history.reply(None);
        assert_eq!(reply, Reply::Whole);
        let whole = json(&current.page(0, 1000).unwrap());
        assert_eq!((whole["version"].as_str(), whole["keys"][1]["id"].as_str()), (Some(first.as_str()), Some("b")));
        assert_eq!(current.page(0, 1000).unwrap().len(), answer::whole_len(&current.version, &current.content));
        assert!(!push(&mut history, &mut loader, &[record("a", 1), record("b", 2)], ""), "same set, same version");
        assert!(push(&mut history, &mut loader, &[record("a", 1), record("c", 3)], r#""a""#));
        let (current, Reply::Changes(changes)) = history.reply(Some(&first)) else { panic!("no changes") };
        let changes = json(&changes);
        assert_eq!(changes["base"], first.as_str());
        assert_eq!(changes["version"], current.version.as_str());
        assert_eq!(changes["changes"]["upsert"][0]["id"], "c");
        assert_eq!(changes["changes"]["remove"], serde_json::json!(["b"]));
        assert_eq!(changes["changes"]["revoke"], serde_json::json!(["a"]));
        assert_eq!(history.reply(Some("unknown")).1, Reply::Whole, "a gap: the whole set");
        for n in 4..9 {
            push(&mut history, &mut loader, &[record("a", 1), record("c", n)], "");
        }
        assert_eq!(history.reply(Some(&first)).1, Reply::Whole, "forgotten: the whole set");
    }

    #[test]
    fn changes_from_further_back_are_the_changes_composed() {
        let mut loader = Loader::new(policy());
        let keys: Vec<String> = (0..40).map(|n| record(&format!("k{n}"), n)).collect();
        let v1 = loader.load(file(&keys, "")).unwrap().snapshot;
        let first = v1.version.clone();
        let mut history = History::new(v1, 8);
        let mut next = keys.clone();
        next[3] = record("k3", 200);
        push(&mut history, &mut loader, &next, r#""k1""#);
        next.remove(5);
        push(&mut history, &mut loader, &next, r#""k2""#);
        next[3] = record("k3", 201);
        push(&mut history, &mut loader, &next, r#""k2""#);
        let (_, Reply::Changes(changes)) = history.reply(Some(&first)) else { panic!("no changes") };
        let changes = &json(&changes)["changes"];
        assert_eq!(changes["upsert"].as_array().map(Vec::len), Some(1));
        assert_eq!(changes["upsert"][0]["hash"], "c9".repeat(32), "the last record of k3");
        assert_eq!(changes["remove"], serde_json::json!(["k5"]));
        assert_eq!(changes["revoke"], serde_json::json!(["k2"]));
        // k1 was revoked and unrevoked since: not revoked at the base either,
        // so the unrevoke is idempotent.
        assert_eq!(changes["unrevoke"], serde_json::json!(["k1"]));
    }

    #[test]
    fn large_sets_are_served_in_pages_of_one_version() {
        let mut loader = Loader::new(policy());
        let keys: Vec<String> = (1..=5).map(|n| record(&format!("k{n}"), n)).collect();
        let v1 = loader.load(file(&keys, r#""gone""#)).unwrap().snapshot;
        let version = v1.version.clone();
        let mut history = History::new(v1, 4);
        let first = json(&history.current().page(0, 2).unwrap());
        assert_eq!((first["keys"].as_array().unwrap().len(), &first["revoked"]), (2, &serde_json::json!(["gone"])));
        let next = first["next"].as_str().unwrap().to_owned();
        assert_eq!(next, format!("1.{version}"));
        let second = json(&history.page(&next, 2).unwrap().1);
        assert_eq!((second["keys"][0]["id"].as_str(), &second["revoked"]), (Some("k3"), &serde_json::json!([])));
        let last = json(&history.page(&format!("2.{version}"), 2).unwrap().1);
        assert_eq!((last["keys"][0]["id"].as_str(), last.get("next")), (Some("k5"), None));
        assert!(history.page(&format!("3.{version}"), 2).is_none());
        assert!(history.page("x", 2).is_none());
        // The set changed under the load: the new version's first page.
        push(&mut history, &mut loader, &keys[..4], "");
        let (current, restart) = history.page(&next, 2).unwrap();
        assert_eq!(json(&restart)["version"], current.version.as_str());
        assert_eq!(json(&restart)["keys"][0]["id"], "k1");
        // A set that fits one page is the whole answer.
        assert_eq!(current.page(0, 10).unwrap(), current.page(0, 1000).unwrap());
    }

    #[test]
    fn if_none_match_names_a_version() {
        assert_eq!(held_version("\"v.1\""), Some("v.1"));
        assert_eq!(held_version(" W/\"v\" "), Some("v"));
        assert_eq!(held_version("v"), None);
    }
}
