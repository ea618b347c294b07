//! The key sets served: each version's whole answer, and what changed since
//! the versions seen before it.
//!
//! A file is checked with the filter's own parser ([`edge_auth::fetched::parse`])
//! under a policy's rules, so a file this server accepts is one every filter
//! with that policy accepts. Its served version is the file's `version` and a
//! digest of its content: an edit that forgets to change `version` still
//! makes a new version, and changes are never computed between two different
//! sets under one name.

use bytes::Bytes;
use edge_auth::config::{KeyChangesDoc, KeyRecordDoc};
use edge_auth::fetched::{self, Kind, Parsed};
use edge_auth::policy::Policy;
use edge_auth::remote::MAX_DELTA;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

/// The key-set file: a key server's whole answer, `version` optional.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDoc {
    version: Option<String>,
    keys: Vec<KeyRecordDoc>,
    #[serde(default)]
    revoked: Vec<String>,
}

#[derive(Serialize)]
struct WholeAnswer<'a> {
    version: &'a str,
    keys: &'a [KeyRecordDoc],
    revoked: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<String>,
}

#[derive(Serialize)]
struct ChangesAnswer<'a> {
    version: &'a str,
    base: &'a str,
    changes: &'a KeyChangesDoc,
}

/// One version of the set.
pub struct Snapshot {
    pub version: String,
    /// `"<version>"`: the filter sends it back as `If-None-Match`.
    pub etag: String,
    /// The whole answer in pages (`{"version","keys","revoked","next"}`):
    /// never empty; each but the last names the next.
    pub pages: Vec<Bytes>,
    /// The whole answer's size, were it one page.
    whole_len: usize,
    pub keys: usize,
    pub revoked: usize,
    records: HashMap<String, KeyRecordDoc>,
    revoked_ids: BTreeSet<String>,
    /// Changes answers from earlier versions, computed when first asked
    /// (the version just before is computed at load); `None` when the whole
    /// set is the better answer.
    changes: Mutex<HashMap<String, Option<Bytes>>>,
}

/// Why a file was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused(pub String);

impl Snapshot {
    /// Parses and checks a file's bytes; serves it in pages of at most
    /// `page_keys` keys.
    pub fn load(file: &[u8], policy: &Policy, page_keys: usize) -> Result<Self, Refused> {
        let doc: FileDoc = serde_json::from_slice(file).map_err(|e| Refused(format!("not a key-set file: {e}")))?;
        let content = serde_json::to_vec(&(&doc.keys, &doc.revoked)).map_err(|e| Refused(e.to_string()))?;
        let digest: String = Sha256::digest(&content).iter().take(6).map(|b| format!("{b:02x}")).collect();
        let version = match &doc.version {
            Some(v) if !v.is_empty() => format!("{v}.{digest}"),
            _ => digest,
        };
        if !version.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\') {
            return Err(Refused("version: visible ASCII without quotes or backslashes".into()));
        }
        let answer = WholeAnswer { version: &version, keys: &doc.keys, revoked: &doc.revoked, next: None };
        let whole = serde_json::to_vec(&answer).map_err(|e| Refused(e.to_string()))?;
        match fetched::parse(policy, Kind::Keys, &whole) {
            Ok(Parsed::Keys { .. }) => {}
            Ok(_) => return Err(Refused("not a whole key set".into())),
            Err(e) => return Err(Refused(e.to_string().replacen("key set", "file", 1))),
        }
        let whole_len = whole.len();
        drop(whole);
        let pages = pages(&version, &doc.keys, &doc.revoked, page_keys)?;
        let keys = doc.keys.len();
        let revoked_ids: BTreeSet<String> = doc.revoked.into_iter().collect();
        let records = doc.keys.into_iter().map(|r| (r.id.clone(), r)).collect();
        Ok(Self {
            etag: format!("\"{version}\""),
            version,
            pages,
            whole_len,
            keys,
            revoked: revoked_ids.len(),
            records,
            revoked_ids,
            changes: Mutex::default(),
        })
    }

    /// What changed from `base` to this version.
    /// The whole answer's first page.
    pub fn first(&self) -> Bytes {
        self.pages.first().cloned().unwrap_or_default()
    }

    fn diff(&self, base: &Snapshot) -> KeyChangesDoc {
        let mut upsert: Vec<KeyRecordDoc> =
            self.records.values().filter(|r| base.records.get(&r.id) != Some(*r)).cloned().collect();
        upsert.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        let mut remove: Vec<String> =
            base.records.keys().filter(|id| !self.records.contains_key(*id)).cloned().collect();
        remove.sort_unstable();
        KeyChangesDoc {
            upsert,
            remove,
            revoke: self.revoked_ids.difference(&base.revoked_ids).cloned().collect(),
            unrevoke: base.revoked_ids.difference(&self.revoked_ids).cloned().collect(),
        }
    }

    /// The changes answer from `base`, if it is small (a large change is
    /// cheaper to apply as a whole set) and smaller than the whole set.
    fn changes_from(&self, base: &Snapshot) -> Option<Bytes> {
        if let Ok(cached) = self.changes.lock() {
            if let Some(answer) = cached.get(&base.version) {
                return answer.clone();
            }
        }
        let changes = self.diff(base);
        let answer =
            serde_json::to_vec(&ChangesAnswer { version: &self.version, base: &base.version, changes: &changes })
                .ok()
                .filter(|a| a.len() <= MAX_DELTA && a.len() < self.whole_len)
                .map(Bytes::from);
        if let Ok(mut cached) = self.changes.lock() {
            cached.insert(base.version.clone(), answer.clone());
        }
        answer
    }
}

/// The whole answer `{"version","keys","revoked"}` in pages of `page_keys`
/// keys; every page but the last names the next (`<n>.<version>`), and the
/// revoked ids travel with the first.
fn pages(version: &str, keys: &[KeyRecordDoc], revoked: &[String], page_keys: usize) -> Result<Vec<Bytes>, Refused> {
    let chunks: Vec<&[KeyRecordDoc]> =
        if keys.is_empty() { vec![keys] } else { keys.chunks(page_keys.max(1)).collect() };
    let count = chunks.len();
    chunks
        .into_iter()
        .enumerate()
        .map(|(n, keys)| {
            let revoked = if n == 0 { revoked } else { &[] };
            let next = (n + 1 < count).then(|| format!("{}.{version}", n + 1));
            serde_json::to_vec(&WholeAnswer { version, keys, revoked, next }).map(Bytes::from)
        })
        .collect::<Result<_, _>>()
        .map_err(|e| Refused(e.to_string()))
}

/// What to answer a filter that holds a version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Whole(Bytes),
    Changes(Bytes),
    NotModified,
}

/// The current version and a bounded history of earlier ones.
pub struct History {
    versions: VecDeque<Arc<Snapshot>>,
    limit: usize,
}

impl History {
    pub fn new(first: Snapshot, limit: usize) -> Self {
        Self { versions: VecDeque::from([Arc::new(first)]), limit: limit.max(1) }
    }

    pub fn current(&self) -> Arc<Snapshot> {
        // Never empty: built with one, and `push` only adds.
        self.versions.back().cloned().unwrap_or_else(|| Arc::new(placeholder()))
    }

    /// Makes `next` current (unless it is the current set again); the
    /// oldest version beyond the limit is forgotten. Returns whether it was new.
    pub fn push(&mut self, next: Snapshot) -> bool {
        let current = self.current();
        if next.version == current.version {
            return false;
        }
        // A filter long-polling on the version just replaced asks next.
        let _ = next.changes_from(&current);
        self.versions.push_back(Arc::new(next));
        while self.versions.len() > self.limit {
            self.versions.pop_front();
        }
        true
    }

    /// The answer for a filter holding `held` (its `If-None-Match`).
    pub fn reply(&self, held: Option<&str>) -> (Arc<Snapshot>, Reply) {
        let current = self.current();
        let reply = match held.and_then(|v| self.versions.iter().find(|s| s.version == v)) {
            Some(base) if base.version == current.version => Reply::NotModified,
            Some(base) => current.changes_from(base).map_or_else(|| Reply::Whole(current.first()), Reply::Changes),
            None => Reply::Whole(current.first()),
        };
        (current, reply)
    }

    /// The page a cursor names (`<n>.<version>`): of that version while it
    /// is remembered, else the current version's first page (the filter
    /// sees another version and starts again). `None`: no such page.
    pub fn page(&self, cursor: &str) -> Option<(Arc<Snapshot>, Bytes)> {
        let (n, version) = cursor.split_once('.')?;
        let n: usize = n.parse().ok()?;
        match self.versions.iter().find(|s| s.version == version) {
            Some(snapshot) => snapshot.pages.get(n).cloned().map(|page| (Arc::clone(snapshot), page)),
            None => {
                let current = self.current();
                let first = current.first();
                Some((current, first))
            }
        }
    }
}

fn placeholder() -> Snapshot {
    Snapshot {
        version: String::new(),
        etag: String::new(),
        pages: Vec::new(),
        whole_len: 0,
        keys: 0,
        revoked: 0,
        records: HashMap::new(),
        revoked_ids: BTreeSet::new(),
        changes: Mutex::default(),
    }
}

/// The version named by an `If-None-Match` value (a weak tag counts too).
pub fn held_version(if_none_match: &str) -> Option<&str> {
    let tag = if_none_match.trim();
    let tag = tag.strip_prefix("W/").unwrap_or(tag);
    tag.strip_prefix('"')?.strip_suffix('"')
}

#[cfg(test)]
mod tests {
    use super::*;
    use edge_auth::testing::EveryVar;

    fn policy() -> Policy {
        Policy::from_json(br#"{"api_keys":{}}"#, &EveryVar("pepper")).unwrap()
    }

    fn record(id: &str, n: u8) -> String {
        format!(r#"{{"id":"{id}","hash":"{}","org":"o","account":"acme"}}"#, format!("{n:02x}").repeat(32))
    }

    fn load(keys: &[String], revoked: &str) -> Snapshot {
        let file = format!(r#"{{"version":"v","keys":[{}],"revoked":[{revoked}]}}"#, keys.join(","));
        Snapshot::load(file.as_bytes(), &policy(), 2).unwrap()
    }

    fn json(bytes: &Bytes) -> serde_json::Value {
        serde_json::from_slice(bytes).unwrap()
    }

    #[test]
    fn files_are_checked_like_the_filter_checks_answers() {
        let refused = |file: &str| Snapshot::load(file.as_bytes(), &policy(), 2).err().map(|e| e.0);
        assert_eq!(
            refused(&format!(r#"{{"keys":[{},{}]}}"#, record("a", 1), record("a", 2))),
            Some("file.keys[1].id: duplicate key id 'a'".into())
        );
        assert!(refused(r#"{"keys":[{"id":"a"}]}"#).unwrap().starts_with("not a key-set file"));
        assert!(refused(&format!(r#"{{"keys":[{}],"extra":1}}"#, record("a", 1))).is_some());
        let plan = record("a", 1).replace(r#""org""#, r#""plan":"gold","org""#);
        assert_eq!(refused(&format!(r#"{{"keys":[{plan}]}}"#)), Some("file.keys[0].plan: unknown plan 'gold'".into()));
        let snapshot = load(&[record("a", 1)], "");
        assert!(snapshot.version.starts_with("v."), "{}", snapshot.version);
        assert_eq!(snapshot.etag, format!("\"{}\"", snapshot.version));
        assert_eq!(json(&snapshot.first())["keys"][0]["id"], "a");
    }

    #[test]
    fn large_sets_are_served_in_pages_of_one_version() {
        let keys: Vec<String> = (1..=5).map(|n| record(&format!("k{n}"), n)).collect();
        let v1 = load(&keys, r#""gone""#);
        let (version, pages) = (v1.version.clone(), v1.pages.clone());
        assert_eq!(pages.len(), 3);
        let mut history = History::new(v1, 4);
        let first = json(&pages[0]);
        assert_eq!((first["keys"].as_array().unwrap().len(), &first["revoked"]), (2, &serde_json::json!(["gone"])));
        let next = first["next"].as_str().unwrap().to_owned();
        assert_eq!(next, format!("1.{version}"));
        let (_, second) = history.page(&next).unwrap();
        assert_eq!(json(&second)["keys"][0]["id"], "k3");
        assert_eq!(json(&second)["revoked"], serde_json::json!([]));
        let last = json(&history.page(&format!("2.{version}")).unwrap().1);
        assert_eq!((last["keys"][0]["id"].as_str(), last.get("next")), (Some("k5"), None));
        assert!(history.page(&format!("3.{version}")).is_none());
        assert!(history.page("x").is_none());
        // The set changed under the load: that version's pages while remembered.
        history.push(load(&keys[..4], ""));
        assert_eq!(json(&history.page(&next).unwrap().1)["version"], version.as_str());
        let (current, first) = history.page("1.forgotten").unwrap();
        assert_eq!(json(&first)["version"], current.version.as_str());
        assert!(json(&first).get("next").is_some());
        // An empty set is one page.
        assert_eq!(load(&[], "").pages.len(), 1);
    }

    #[test]
    fn holders_of_a_known_version_get_only_the_changes() {
        let v1 = load(&[record("a", 1), record("b", 2)], "");
        let first = v1.version.clone();
        let mut history = History::new(v1, 4);
        assert_eq!(history.reply(Some(&first)).1, Reply::NotModified);
        assert!(matches!(history.reply(None).1, Reply::Whole(_)));
        assert!(!history.push(load(&[record("a", 1), record("b", 2)], "")), "same set, same version");
        assert!(history.push(load(&[record("a", 1), record("c", 3)], r#""a""#)));
        let (current, Reply::Changes(changes)) = history.reply(Some(&first)) else { panic!("no changes") };
        let changes = json(&changes);
        assert_eq!(changes["base"], first.as_str());
        assert_eq!(changes["version"], current.version.as_str());
        assert_eq!(changes["changes"]["upsert"][0]["id"], "c");
        assert_eq!(changes["changes"]["remove"], serde_json::json!(["b"]));
        assert_eq!(changes["changes"]["revoke"], serde_json::json!(["a"]));
        assert!(matches!(history.reply(Some("unknown")).1, Reply::Whole(_)), "a gap: the whole set");
        for n in 4..9 {
            history.push(load(&[record("a", 1), record("c", n)], ""));
        }
        assert!(matches!(history.reply(Some(&first)).1, Reply::Whole(_)), "forgotten: the whole set");
    }

    #[test]
    fn if_none_match_names_a_version() {
        assert_eq!(held_version("\"v.1\""), Some("v.1"));
        assert_eq!(held_version(" W/\"v\" "), Some("v"));
        assert_eq!(held_version("v"), None);
    }
}
