//! API keys: peppered HMAC-SHA256 hashes and the set of known keys.
//!
//! Only hashes are stored. A presented key is hashed with the pepper and
//! looked up; the lookup indexes on 8 bytes of the MAC and confirms the full
//! 32 bytes in constant time, so timing reveals nothing about stored hashes.

mod index;

use crate::config::{ApiKeysDoc, ConfigError, Environment, KeyChangesDoc, KeyRecordDoc};
use crate::rate_limit::{PlanId, Plans};
use crate::remote::Endpoint;
use crate::store::StoreHasher;
use crate::text::{is_header_safe, is_scope};
use hmac::{Hmac, Mac};
pub use index::{Changes, Held, KeyIndex, Lookup, Staged};
use sha2::Sha256;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::BuildHasherDefault;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// HMAC-SHA256 keyed with the pepper. The keyed state is computed once;
/// each hash clones it instead of re-deriving the padded key.
#[derive(Clone)]
pub struct KeyHasher {
    mac: HmacSha256,
}

impl KeyHasher {
    /// HMAC takes keys of any length; the error exists only in the trait's signature.
    pub fn new(pepper: &[u8]) -> Result<Self, hmac::digest::InvalidLength> {
        Ok(Self { mac: <HmacSha256 as Mac>::new_from_slice(pepper)? })
    }

    pub fn hash(&self, key: &str) -> KeyHash {
        let mut mac = self.mac.clone();
        mac.update(key.as_bytes());
        KeyHash(mac.finalize().into_bytes().into())
    }
}

impl fmt::Debug for KeyHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyHasher(<pepper>)")
    }
}

/// A key's HMAC-SHA256 under the pepper.
#[derive(Clone, Copy)]
pub struct KeyHash([u8; 32]);

impl KeyHash {
    /// Parses exactly 64 lowercase hex characters.
    pub fn from_hex(text: &str) -> Option<Self> {
        let bytes = text.as_bytes();
        if bytes.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (slot, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
            let [hi, lo] = pair else { return None };
            *slot = (lower_hex_value(*hi)? << 4) | lower_hex_value(*lo)?;
        }
        Some(Self(out))
    }

    pub fn to_hex(self) -> String {
        use fmt::Write;
        self.0.iter().fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
    }

    fn index(&self) -> u64 {
        let [a, b, c, d, e, f, g, h, ..] = self.0;
        u64::from_le_bytes([a, b, c, d, e, f, g, h])
    }

    fn ct_eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

/// Not constant-time: for comparing sets the server sent, never a
/// presented key (that is [`KeySet::find`]).
impl PartialEq for KeyHash {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyHash(..)")
    }
}

fn lower_hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

/// A known API key (its hash, never the key itself).
#[derive(Debug, Clone, PartialEq)]
pub struct ApiKey {
    pub id: String,
    hash: KeyHash,
    pub org: String,
    pub account: String,
    pub scopes: Vec<String>,
    /// `scopes` space-joined once, for the identity header.
    pub scopes_header: String,
    pub plan: Option<PlanId>,
    /// Unix seconds from which the key is refused.
    pub expires_at: Option<u64>,
}

/// The policy's API keys: how presented keys are hashed, the inline set,
/// and where more are fetched from.
#[derive(Debug)]
pub struct ApiKeys {
    pub hasher: KeyHasher,
    /// The inline keys and revocations of the policy.
    pub inline: KeySet,
    pub source: Option<Endpoint>,
}

impl ApiKeys {
    /// Compiles `api_keys` (prefixes excepted); the pepper comes from `env`.
    pub fn compile(doc: &ApiKeysDoc, env: &dyn Environment, rules: &RecordRules<'_>) -> Result<Self, ConfigError> {
        let pepper = env.var(&doc.pepper_env).filter(|p| !p.is_empty()).ok_or_else(|| {
            ConfigError::new(
                "api_keys.pepper_env",
                format!("environment variable {} is missing or empty", doc.pepper_env),
            )
        })?;
        let hasher = KeyHasher::new(pepper.as_bytes())
            .map_err(|_| ConfigError::new("api_keys.pepper_env", "unusable pepper"))?;
        let inline = KeySet::build(&doc.keys, &doc.revoked, rules, "api_keys")?;
        let source = doc.source.as_ref().map(|s| Endpoint::compile(s, "api_keys.source", 1.0)).transpose()?;
        Ok(Self { hasher, inline, source })
    }
}

/// What the key records are checked against when a set is built.
pub struct RecordRules<'a> {
    pub account_ok: &'a dyn Fn(&str) -> bool,
    pub plans: &'a Plans,
}

/// Keys by the first eight bytes of their hash ([`KeyHash::index`]): the
/// start of an HMAC-SHA256, which no client can aim at without the pepper,
/// so the store's fast unkeyed hasher serves instead of SipHash.
type ByHash = HashMap<u64, Vec<usize>, BuildHasherDefault<StoreHasher>>;

/// Known keys and revoked key ids: the policy's own, or a key server's copy
/// (a fetched set lives in shared data, see [`KeyIndex`]). Takes changes
/// entry by entry.
#[derive(Debug, Default)]
pub struct KeySet {
    keys: Vec<ApiKey>,
    by_hash: ByHash,
    /// Session tokens name their parent key by id.
    by_id: HashMap<String, usize>,
    revoked: HashSet<String>,
}

impl KeySet {
    /// Builds a set from records, rejecting what would make lookups ambiguous
    /// or the identity unsafe. `path` names the records for error messages.
    pub fn build(
        records: &[KeyRecordDoc],
        revoked: &[String],
        rules: &RecordRules<'_>,
        path: &str,
    ) -> Result<Self, ConfigError> {
        let mut set = KeySet::default();
        for (i, record) in records.iter().enumerate() {
            let at = |field: &str| format!("{path}.keys[{i}].{field}");
            let key = compile_record(record, rules, &at)?;
            if set.by_id.contains_key(&key.id) {
                return Err(ConfigError::new(at("id"), format!("duplicate key id '{}'", key.id)));
            }
            if set.find(&key.hash).is_some() {
                return Err(ConfigError::new(at("hash"), "duplicate hash"));
            }
            set.insert(key);
        }
        for (i, id) in revoked.iter().enumerate() {
            if id.is_empty() {
                return Err(ConfigError::new(format!("{path}.revoked[{i}]"), "empty key id"));
            }
            set.revoked.insert(id.clone());
        }
        Ok(set)
    }

    pub fn find(&self, hash: &KeyHash) -> Option<&ApiKey> {
        let candidates = self.by_hash.get(&hash.index())?;
        candidates.iter().filter_map(|&i| self.keys.get(i)).find(|key| key.hash.ct_eq(hash))
    }

    pub fn find_id(&self, id: &str) -> Option<&ApiKey> {
        self.by_id.get(id).and_then(|&i| self.keys.get(i))
    }

    pub fn is_revoked(&self, id: &str) -> bool {
        self.revoked.contains(id)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    fn insert(&mut self, key: ApiKey) {
        let at = self.keys.len();
        self.by_hash.entry(key.hash.index()).or_default().push(at);
        self.by_id.insert(key.id.clone(), at);
        self.keys.push(key);
    }

    /// Removes key `id`, moving the last key into its place.
    fn remove(&mut self, id: &str) {
        let Some(at) = self.by_id.remove(id) else { return };
        let last = self.keys.len().saturating_sub(1);
        if let Some(hash) = self.keys.get(at).map(|k| k.hash.index()) {
            unindex(&mut self.by_hash, hash, at, None);
        }
        if at != last {
            if let Some(moved) = self.keys.get(last) {
                unindex(&mut self.by_hash, moved.hash.index(), last, Some(at));
                self.by_id.insert(moved.id.clone(), at);
            }
        }
        if at < self.keys.len() {
            self.keys.swap_remove(at);
        }
    }

    /// Compiles and checks `doc` against this set with the same rules as
    /// [`KeySet::build`] (a key server keeping its own copy checks a new
    /// file so). `path` names the changes in errors.
    pub fn check(&self, doc: &KeyChangesDoc, rules: &RecordRules<'_>, path: &str) -> Result<SetChanges, ConfigError> {
        let upsert = check_changes(doc, rules, path, |hash| self.find(hash).map(|k| k.id.clone()))?;
        Ok(SetChanges {
            upsert,
            remove: doc.remove.clone(),
            revoke: doc.revoke.clone(),
            unrevoke: doc.unrevoke.clone(),
        })
    }

    /// Applies checked changes, entry by entry.
    pub fn apply(&mut self, changes: SetChanges) {
        for id in &changes.remove {
            self.remove(id);
        }
        for key in changes.upsert {
            self.remove(&key.id);
            self.insert(key);
        }
        for id in changes.revoke {
            self.revoked.insert(id);
        }
        for id in &changes.unrevoke {
            self.revoked.remove(id);
        }
    }
}

/// Checked changes to one [`KeySet`]: applying them cannot fail.
#[derive(Debug)]
pub struct SetChanges {
    upsert: Vec<ApiKey>,
    remove: Vec<String>,
    revoke: Vec<String>,
    unrevoke: Vec<String>,
}

/// Takes index `at` out of hash bucket `hash`, putting `to` in its place if given.
fn unindex(by_hash: &mut ByHash, hash: u64, at: usize, to: Option<usize>) {
    let Some(bucket) = by_hash.get_mut(&hash) else { return };
    match (bucket.iter().position(|&i| i == at), to) {
        (Some(slot), Some(to)) => {
            if let Some(entry) = bucket.get_mut(slot) {
                *entry = to;
            }
        }
        (Some(slot), None) => {
            bucket.swap_remove(slot);
        }
        (None, _) => {}
    }
    if bucket.is_empty() {
        by_hash.remove(&hash);
    }
}

/// Checks changes with the same rules as a whole set: the set they make
/// must be one a whole answer could be. `held` names the key of the set
/// that has a hash, if any. Returns the upserted keys, compiled.
pub fn check_changes(
    doc: &KeyChangesDoc,
    rules: &RecordRules<'_>,
    path: &str,
    held: impl Fn(&KeyHash) -> Option<String>,
) -> Result<Vec<ApiKey>, ConfigError> {
    let ids = |list: &[String], name: &str| -> Result<HashSet<String>, ConfigError> {
        let mut seen = HashSet::new();
        for (i, id) in list.iter().enumerate() {
            if id.is_empty() || id.len() > usize::from(u16::MAX) {
                let why = if id.is_empty() { "empty key id" } else { "key id longer than 65535 bytes" };
                return Err(ConfigError::new(format!("{path}.{name}[{i}]"), why));
            }
            seen.insert(id.clone());
        }
        Ok(seen)
    };
    let removed = ids(&doc.remove, "remove")?;
    let revoked = ids(&doc.revoke, "revoke")?;
    let unrevoked = ids(&doc.unrevoke, "unrevoke")?;
    if let Some(id) = revoked.intersection(&unrevoked).next() {
        return Err(ConfigError::new(format!("{path}.unrevoke"), format!("'{id}' is also in revoke")));
    }
    let mut upsert: Vec<ApiKey> = Vec::with_capacity(doc.upsert.len());
    let mut upserted = HashSet::new();
    for (i, record) in doc.upsert.iter().enumerate() {
        let at = |field: &str| format!("{path}.upsert[{i}].{field}");
        let key = compile_record(record, rules, &at)?;
        if removed.contains(&key.id) {
            return Err(ConfigError::new(at("id"), format!("'{}' is also in remove", key.id)));
        }
        if !upserted.insert(key.id.clone()) {
            return Err(ConfigError::new(at("id"), format!("duplicate key id '{}'", key.id)));
        }
        if upsert.iter().any(|other| other.hash == key.hash) {
            return Err(ConfigError::new(at("hash"), "duplicate hash"));
        }
        upsert.push(key);
    }
    // A hash already held may belong only to a key this change removes
    // or replaces (known once every upsert has been seen).
    for (i, key) in upsert.iter().enumerate() {
        if held(&key.hash).is_some_and(|id| !removed.contains(&id) && !upserted.contains(&id)) {
            return Err(ConfigError::new(format!("{path}.upsert[{i}].hash"), "duplicate hash"));
        }
    }
    Ok(upsert)
}

fn compile_record(
    record: &KeyRecordDoc,
    rules: &RecordRules<'_>,
    at: &dyn Fn(&str) -> String,
) -> Result<ApiKey, ConfigError> {
    if record.id.is_empty() || !is_header_safe(&record.id) {
        return Err(ConfigError::new(at("id"), "must be non-empty visible ASCII"));
    }
    let hash =
        KeyHash::from_hex(&record.hash).ok_or_else(|| ConfigError::new(at("hash"), "expected 64 hex characters"))?;
    if record.org.is_empty() || !is_header_safe(&record.org) {
        return Err(ConfigError::new(at("org"), "must be non-empty visible ASCII"));
    }
    if !(rules.account_ok)(&record.account) {
        return Err(ConfigError::new(at("account"), "does not match account_pattern"));
    }
    for (j, scope) in record.scopes.iter().enumerate() {
        if !is_scope(scope) {
            return Err(ConfigError::new(at(&format!("scopes[{j}]")), "a scope is visible ASCII without spaces"));
        }
    }
    let plan = match &record.plan {
        None => None,
        Some(name) => {
            Some(rules.plans.id(name).ok_or_else(|| ConfigError::new(at("plan"), format!("unknown plan '{name}'")))?)
        }
    };
    let expires_at = match &record.expires_at {
        None => None,
        Some(text) => Some(parse_timestamp(text).ok_or_else(|| {
            ConfigError::new(at("expires_at"), "expected an RFC 3339 time like 2027-05-08T00:00:00Z")
        })?),
    };
    Ok(ApiKey {
        id: record.id.clone(),
        hash,
        org: record.org.clone(),
        account: record.account.clone(),
        scopes_header: record.scopes.join(" "),
        scopes: record.scopes.clone(),
        plan,
        expires_at,
    })
}

/// RFC 3339 to Unix seconds; times before 1970 are refused.
pub fn parse_timestamp(text: &str) -> Option<u64> {
    let time = humantime::parse_rfc3339(text).ok()?;
    time.duration_since(std::time::UNIX_EPOCH).ok().map(|d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, key: &str, hasher: &KeyHasher) -> KeyRecordDoc {
        KeyRecordDoc {
            id: id.into(),
            hash: hasher.hash(key).to_hex(),
            org: "org_1".into(),
            account: "acme".into(),
            scopes: vec!["a:read".into(), "b:write".into()],
            plan: None,
            expires_at: None,
        }
    }

    fn build(records: &[KeyRecordDoc]) -> Result<KeySet, ConfigError> {
        let plans = Plans::default();
        let rules = RecordRules { account_ok: &|a| !a.is_empty(), plans: &plans };
        KeySet::build(records, &["gone".into()], &rules, "api_keys")
    }

    #[test]
    fn hmac_matches_rfc4231_case_2() {
        let hasher = KeyHasher::new(b"Jefe").unwrap();
        assert_eq!(
            hasher.hash("what do ya want for nothing?").to_hex(),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn hash_hex_round_trips_and_rejects_bad_text() {
        let hex = KeyHasher::new(b"p").unwrap().hash("k").to_hex();
        assert_eq!(KeyHash::from_hex(&hex).map(KeyHash::to_hex), Some(hex.clone()));
        assert!(KeyHash::from_hex(&hex.to_uppercase()).is_none());
        assert!(KeyHash::from_hex(&hex[1..]).is_none());
        assert!(KeyHash::from_hex(&format!("{}g", &hex[1..])).is_none());
    }

    #[test]
    fn finds_keys_by_hash_only() {
        let hasher = KeyHasher::new(b"pepper").unwrap();
        let set = build(&[record("k1", "sk_live_acme_one", &hasher), record("k2", "two", &hasher)]).unwrap();
        assert_eq!(set.find(&hasher.hash("sk_live_acme_one")).map(|k| k.id.as_str()), Some("k1"));
        assert_eq!(set.find(&hasher.hash("two")).map(|k| k.id.as_str()), Some("k2"));
        assert!(set.find(&hasher.hash("three")).is_none());
        assert!(set.find(&KeyHasher::new(b"other").unwrap().hash("two")).is_none());
        assert_eq!(set.find(&hasher.hash("two")).unwrap().scopes_header, "a:read b:write");
        assert!(set.is_revoked("gone") && !set.is_revoked("k1"));
        assert_eq!(set.find_id("k2").map(|k| k.id.as_str()), Some("k2"));
        assert!(set.find_id("k3").is_none());
    }

    #[test]
    fn rejects_duplicates_and_bad_fields_naming_the_field() {
        let hasher = KeyHasher::new(b"pepper").unwrap();
        let one = record("k1", "one", &hasher);
        let err = build(&[one.clone(), record("k1", "two", &hasher)]).unwrap_err();
        assert_eq!(err.to_string(), "api_keys.keys[1].id: duplicate key id 'k1'");
        let err = build(&[one.clone(), record("k2", "one", &hasher)]).unwrap_err();
        assert_eq!(err.to_string(), "api_keys.keys[1].hash: duplicate hash");
        let mut bad = one.clone();
        bad.hash = "abc".into();
        assert_eq!(build(&[bad]).unwrap_err().to_string(), "api_keys.keys[0].hash: expected 64 hex characters");
        let mut bad = one.clone();
        bad.plan = Some("gold".into());
        assert_eq!(build(&[bad]).unwrap_err().to_string(), "api_keys.keys[0].plan: unknown plan 'gold'");
        let mut bad = one.clone();
        bad.expires_at = Some("tomorrow".into());
        assert!(build(&[bad]).unwrap_err().to_string().starts_with("api_keys.keys[0].expires_at:"));
        let mut bad = one;
        bad.org = "evil\r\nx-org-id: 1".into();
        assert!(build(&[bad]).unwrap_err().to_string().starts_with("api_keys.keys[0].org:"));
    }

    fn changes(doc: &str) -> KeyChangesDoc {
        serde_json::from_str(doc).unwrap()
    }

    fn ids(set: &KeySet, hasher: &KeyHasher, keys: &[&str]) -> Vec<Option<String>> {
        keys.iter().map(|k| set.find(&hasher.hash(k)).map(|key| key.id.clone())).collect()
    }

    #[test]
    fn changes_apply_entry_by_entry() {
        let hasher = KeyHasher::new(b"pepper").unwrap();
        let plans = Plans::default();
        let rules = RecordRules { account_ok: &|a| !a.is_empty(), plans: &plans };
        let mut set =
            build(&[record("k1", "one", &hasher), record("k2", "two", &hasher), record("k3", "three", &hasher)])
                .unwrap();
        let doc = KeyChangesDoc {
            upsert: vec![record("k4", "four", &hasher), record("k2", "two-rotated", &hasher)],
            remove: vec!["k1".into(), "nobody".into()],
            revoke: vec!["k3".into()],
            unrevoke: vec!["gone".into()],
        };
        let checked = set.check(&doc, &rules, "c").unwrap();
        set.apply(checked);
        let found = ids(&set, &hasher, &["one", "two", "two-rotated", "three", "four"]);
        assert_eq!(found, [None, None, Some("k2".into()), Some("k3".into()), Some("k4".into())]);
        assert_eq!(set.len(), 3);
        assert!(set.is_revoked("k3") && !set.is_revoked("gone"));
        // Removing the last and the first keys keeps every index right.
        set.apply(set.check(&changes(r#"{"remove":["k4","k2"]}"#), &rules, "c").unwrap());
        assert_eq!(ids(&set, &hasher, &["three", "four", "two-rotated"]), [Some("k3".into()), None, None]);
        // A hash may move from a key this change replaces.
        let mut moved = record("k5", "three", &hasher);
        moved.org = "org_2".into();
        let doc = KeyChangesDoc { upsert: vec![moved, record("k3", "new-three", &hasher)], ..KeyChangesDoc::default() };
        set.apply(set.check(&doc, &rules, "c").unwrap());
        assert_eq!(ids(&set, &hasher, &["three", "new-three"]), [Some("k5".into()), Some("k3".into())]);
    }

    #[test]
    fn timestamps_parse_to_unix_seconds() {
        assert_eq!(parse_timestamp("1970-01-01T00:01:00Z"), Some(60));
        assert_eq!(parse_timestamp("2027-05-08T00:00:00Z"), Some(1_809_734_400));
        assert_eq!(parse_timestamp("2027-05-08"), None);
    }
}
