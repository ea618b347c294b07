//! Turns each new file into the next version: the records that differ from
//! the last good file's (byte for byte) are parsed and checked with the
//! filter's own rules against the set they change ([`KeySet::check`], the
//! rules of a whole set), so a reload costs one pass over the file plus work
//! in proportion to the change. A file this server accepts is one every
//! filter with the same policy accepts; a refused file changes nothing.

use crate::file::{Content, Window};
use crate::keyset::Snapshot;
use bytes::Bytes;
use edge_auth::api_key::{KeySet, RecordRules};
use edge_auth::config::{ConfigError, KeyChangesDoc, KeyRecordDoc};
use edge_auth::policy::Policy;
use sha2::{Digest, Sha256};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Why a file was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused(pub String);

/// The last good file, and the set it makes.
pub struct Loader {
    policy: Policy,
    content: Arc<Content>,
    keys: KeySet,
    revoked: BTreeSet<String>,
    /// The sum of the records' digests: the served version names the set's
    /// content, and only the records that change are hashed again.
    sum: Sum,
}

/// A new version and what changed since the last.
pub struct Next {
    pub snapshot: Snapshot,
    pub changes: KeyChangesDoc,
    /// Parsing the file; comparing and checking the records.
    pub took: (Duration, Duration),
}

impl Loader {
    /// Nothing loaded yet: the first file is all change.
    pub fn new(policy: Policy) -> Self {
        Self { policy, content: Arc::default(), keys: KeySet::default(), revoked: BTreeSet::new(), sum: Sum::default() }
    }

    /// Checks a file's bytes; on success it is the last good file.
    pub fn load(&mut self, bytes: Bytes) -> Result<Next, Refused> {
        let started = Instant::now();
        let content = Content::parse_after(&self.content, bytes).map_err(Refused)?;
        let parsed = started.elapsed();
        let window = Window::between(&self.content, &content);
        let old: HashMap<String, &[u8]> = self
            .content
            .records()
            .skip(window.start)
            .take(window.old_end.saturating_sub(window.start))
            .map(|raw| Ok((record(raw, None)?.id, raw)))
            .collect::<Result<_, Refused>>()?;
        let mut upsert = Vec::new();
        let mut placed = Vec::new();
        let mut sum = self.sum;
        let mut seen = HashSet::new();
        for raw in old.values() {
            sum.remove(raw);
        }
        let window_new =
            content.records().enumerate().skip(window.start).take(window.new_end.saturating_sub(window.start));
        for (at, raw) in window_new {
            sum.add(raw);
            let doc = record(raw, Some(at))?;
            let elsewhere = self.keys.find_id(&doc.id).is_some() && !old.contains_key(&doc.id);
            if elsewhere || !seen.insert(doc.id.clone()) {
                return Err(Refused(format!("file.keys[{at}].id: duplicate key id '{}'", doc.id)));
            }
            if old.get(&doc.id) != Some(&raw) {
                upsert.push(doc);
                placed.push(at);
            }
        }
        let mut remove: Vec<String> = old.into_keys().filter(|id| !seen.contains(id)).collect();
        remove.sort_unstable();
        let revoked: BTreeSet<String> = content.revoked.iter().cloned().collect();
        let changes = KeyChangesDoc {
            upsert,
            remove,
            revoke: revoked.difference(&self.revoked).cloned().collect(),
            unrevoke: self.revoked.difference(&revoked).cloned().collect(),
        };
        let rules = RecordRules { account_ok: &|a| self.policy.accounts.is_valid(a), plans: &self.policy.plans };
        let checked =
            self.keys.check(&changes, &rules, "file").map_err(|e| Refused(in_file(e, &placed, &content.revoked)))?;
        let version = version(content.version.as_deref(), &sum, &content.revoked)?;
        self.keys.apply(checked);
        let content = Arc::new(content);
        self.content = Arc::clone(&content);
        self.revoked = revoked;
        self.sum = sum;
        let snapshot = Snapshot::new(version, content, self.keys.len(), self.revoked.len());
        Ok(Next { snapshot, changes, took: (parsed, started.elapsed().saturating_sub(parsed)) })
    }
}

/// A record of the file; `at` is its place, for errors (`None`: a record of
/// the last good file, parsed before).
fn record(raw: &[u8], at: Option<usize>) -> Result<KeyRecordDoc, Refused> {
    serde_json::from_slice(raw).map_err(|e| match at {
        Some(at) => Refused(format!("not a key-set file: keys[{at}]: {e}")),
        None => Refused(format!("the last good file no longer parses: {e}")),
    })
}

/// The served version: the file's `version` and a digest of the content, so
/// an edit that forgets to change `version` still makes a new version, and
/// changes are never computed between two different sets under one name.
fn version(named: Option<&str>, sum: &Sum, revoked: &[String]) -> Result<String, Refused> {
    let mut hasher = Sha256::new();
    for lane in sum.0 {
        hasher.update(lane.to_le_bytes());
    }
    for id in revoked {
        hasher.update(id.len().to_le_bytes());
        hasher.update(id);
    }
    let digest: String = hasher.finalize().iter().take(6).map(|b| format!("{b:02x}")).collect();
    let version = match named {
        Some(v) if !v.is_empty() => format!("{v}.{digest}"),
        _ => digest,
    };
    if !version.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\') {
        return Err(Refused("version: visible ASCII without quotes or backslashes".into()));
    }
    Ok(version)
}

/// `check` names a change (`file.upsert[3].hash`); the file's author wants
/// its place in the file (`file.keys[1207].hash`).
fn in_file(e: ConfigError, upserts: &[usize], revoked: &[String]) -> String {
    let place = |list: &str, name: &str, locate: &dyn Fn(usize) -> Option<usize>| {
        let rest = e.path.strip_prefix(&format!("file.{list}["))?;
        let (n, tail) = rest.split_once(']')?;
        Some(format!("file.{name}[{}]{tail}", locate(n.parse().ok()?)?))
    };
    let path = place("upsert", "keys", &|n| upserts.get(n).copied())
        .or_else(|| place("revoke", "revoked", &|_| revoked.iter().position(String::is_empty)))
        .unwrap_or_else(|| e.path.clone());
    ConfigError::new(path, e.message).to_string()
}

/// A digest of a multiset of records: the lane-wise sum of their SHA-256,
/// so a record is added or taken out without hashing the others again.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
struct Sum([u64; 4]);

impl Sum {
    fn lanes(raw: &[u8]) -> [u64; 4] {
        let digest: [u8; 32] = Sha256::digest(raw).into();
        let mut lanes = [0u64; 4];
        for (lane, chunk) in lanes.iter_mut().zip(digest.chunks_exact(8)) {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(chunk);
            *lane = u64::from_le_bytes(bytes);
        }
        lanes
    }

    fn add(&mut self, raw: &[u8]) {
        for (sum, lane) in self.0.iter_mut().zip(Self::lanes(raw)) {
            *sum = sum.wrapping_add(lane);
        }
    }

    fn remove(&mut self, raw: &[u8]) {
        for (sum, lane) in self.0.iter_mut().zip(Self::lanes(raw)) {
            *sum = sum.wrapping_sub(lane);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keyset::tests::{file, policy, record};

    fn loaded(n: u8) -> (Loader, Vec<String>, String) {
        let mut loader = Loader::new(policy());
        let keys: Vec<String> = (0..n).map(|i| record(&format!("k{i}"), i)).collect();
        let version = loader.load(file(&keys, "")).unwrap().snapshot.version;
        (loader, keys, version)
    }

    #[test]
    fn a_reload_that_changes_one_key_has_just_that_change() {
        let (mut loader, mut keys, first) = loaded(50);
        keys[20] = record("k20", 200);
        let next = loader.load(file(&keys, r#""k7""#)).unwrap();
        assert_ne!(next.snapshot.version, first);
        assert_eq!(next.changes.upsert, vec![serde_json::from_str(&keys[20]).unwrap()]);
        assert_eq!((next.changes.remove.len(), next.changes.revoke.clone()), (0, vec!["k7".to_owned()]));
        keys.insert(10, record("new", 201));
        keys.remove(40);
        let next = loader.load(file(&keys, "")).unwrap();
        assert_eq!(next.changes.upsert.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["new"]);
        assert_eq!(
            (next.changes.remove.clone(), next.changes.unrevoke.clone()),
            (vec!["k39".into()], vec!["k7".into()])
        );
        assert_eq!((next.snapshot.keys, next.snapshot.revoked), (50, 0));
        keys.swap(0, 49);
        let reordered = loader.load(file(&keys, "")).unwrap();
        assert!(reordered.changes.is_empty());
        assert_eq!(reordered.snapshot.version, next.snapshot.version, "the same set, reordered: the same version");
    }

    #[test]
    fn an_invalid_file_changes_nothing() {
        let (mut loader, keys, first) = loaded(5);
        let refused =
            |loader: &mut Loader, keys: &[String], revoked: &str| loader.load(file(keys, revoked)).err().map(|e| e.0);
        let mut bad = keys.clone();
        bad[3] = record("k1", 100);
        assert_eq!(refused(&mut loader, &bad, ""), Some("file.keys[3].id: duplicate key id 'k1'".into()));
        bad[3] = record("k3", 1);
        assert_eq!(refused(&mut loader, &bad, ""), Some("file.keys[3].hash: duplicate hash".into()));
        bad[3] = record("k3", 3).replace("acme", "bad account!");
        assert_eq!(refused(&mut loader, &bad, ""), Some("file.keys[3].account: does not match account_pattern".into()));
        bad[3] = record("k3", 3).replace(r#""org""#, r#""plan":"gold","org""#);
        assert_eq!(refused(&mut loader, &bad, ""), Some("file.keys[3].plan: unknown plan 'gold'".into()));
        bad[3] = r#"{"id":"k3"}"#.into();
        assert!(refused(&mut loader, &bad, "").unwrap().starts_with("not a key-set file: keys[3]: missing field"));
        assert_eq!(refused(&mut loader, &keys, r#""k1","""#), Some("file.revoked[1]: empty key id".into()));
        assert!(refused(&mut loader, &keys, "1").unwrap().starts_with("not a key-set file"));
        assert!(loader.load(Bytes::from_static(br#"{"version":"a\"b","keys":[]}"#)).is_err());
        let again = loader.load(file(&keys, "")).unwrap();
        assert_eq!(again.snapshot.version, first, "the last good set was kept");
        assert!(again.changes.is_empty());
    }

    #[test]
    fn the_first_file_is_checked_whole() {
        let refused = |text: &str| Loader::new(policy()).load(Bytes::from(text.to_owned())).err().map(|e| e.0);
        assert_eq!(
            refused(&format!(r#"{{"keys":[{},{}]}}"#, record("a", 1), record("a", 2))),
            Some("file.keys[1].id: duplicate key id 'a'".into())
        );
        assert!(refused(&format!(r#"{{"keys":[{}],"extra":1}}"#, record("a", 1))).is_some());
        let snapshot = Loader::new(policy()).load(file(&[record("a", 1)], "")).unwrap().snapshot;
        assert!(snapshot.version.starts_with("v."), "{}", snapshot.version);
        assert_eq!(snapshot.etag, format!("\"{}\"", snapshot.version));
    }
}
