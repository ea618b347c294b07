//! A fetched key set held once per Envoy process, in shared data, and read
//! in place: no worker holds a copy.
//!
//! The set is cut into shards by the first bits of the peppered hash, each
//! shard one shared-data entry of compact binary records (the revoked flag
//! is in the record). A second series of shards, cut by a hash of the key
//! id, maps ids to hashes (session tokens name their parent key by id) and
//! keeps revoked ids of keys not in the set. A request reads the header
//! entry and one shard, and decodes only the matching record.
//!
//! Two banks: a whole set is written into the inactive one, then the header
//! flips to it, so no worker ever sees half a set; the old bank is blanked
//! after the flip. Every shard entry carries the epoch of the load that
//! wrote it, so a reader that raced a flip notices and reads again. Changes
//! are applied entry by entry, with compare-and-swap on the shards they
//! touch only: a revocation costs the same whatever the size of the set.
//!
//! Shared data cannot be deleted: entries are named by bank and shard
//! number, and rewritten in place. A bank holds `2 × shards` entries, where
//! `shards` is a power of two chosen at each load for about
//! [`KEYS_PER_SHARD`] keys; a smaller set blanks the shards it no longer
//! uses. Removed keys leave no tombstone (their record is cut out of its
//! shard), so churn never grows memory: what is held is the records of the
//! keys and revoked ids the server sent, plus one entry per shard.

use super::{compile_record, ApiKey, KeyHash, RecordRules};
use crate::config::{ConfigError, KeyChangesDoc, KeyRecordDoc};
use crate::rate_limit::Plans;
use crate::store::{self, Cas, Conflict, SharedStore};
use std::collections::HashSet;
use subtle::ConstantTimeEq;

/// Keys per shard a load aims for: a request copies one shard out of
/// shared data (about 1–2 KB), whatever the size of the set.
pub const KEYS_PER_SHARD: usize = 16;
/// At most 2^20 shards per kind (16 million keys at the aim above).
const MAX_BITS: u8 = 20;
const ATTEMPTS: u32 = 16;
/// The hash bytes an id record keeps: enough to find the key's shard and,
/// with the id, its record.
const PREFIX: usize = 8;
const REVOKED: u8 = 1;
const HAS_PLAN: u8 = 2;
const HAS_EXPIRY: u8 = 4;
/// In an id record: the id names a key of the set (its hash prefix follows).
const HAS_KEY: u8 = 2;

/// The header entry: which bank is live, and what it holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Header {
    /// The live bank (0 or 1).
    bank: u8,
    /// log2 of the live bank's shards.
    bits: u8,
    /// Names the load that wrote the live bank; 0: never loaded.
    epoch: u32,
    /// Shards each bank may hold data in, beyond the live count (blanked on
    /// the next load into it).
    high: [u32; 2],
    /// Keys in the set.
    pub keys: u64,
    /// The server's name for the set held (`version`).
    pub version: String,
}

impl Header {
    pub fn loaded(&self) -> bool {
        self.epoch != 0
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(24 + self.version.len());
        out.push(self.bank);
        out.push(self.bits);
        out.extend_from_slice(&self.epoch.to_le_bytes());
        for high in self.high {
            out.extend_from_slice(&high.to_le_bytes());
        }
        out.extend_from_slice(&self.keys.to_le_bytes());
        out.extend_from_slice(self.version.as_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let mut r = Reader(bytes);
        let (bank, bits, epoch) = (r.u8()?, r.u8()?, r.u32()?);
        let high = [r.u32()?, r.u32()?];
        let keys = r.u64()?;
        let version = String::from_utf8(r.0.to_vec()).ok()?;
        (bank < 2 && bits <= MAX_BITS).then_some(Self { bank, bits, epoch, high, keys, version })
    }
}

/// A key of the set, with its revoked flag.
#[derive(Debug, PartialEq)]
pub struct Held {
    pub key: ApiKey,
    pub revoked: bool,
}

/// What a lookup found.
#[derive(Debug, PartialEq)]
pub enum Lookup {
    Found(Held),
    /// Not in the set.
    Missing,
    /// Nothing to answer from: never loaded, or the entries could not be
    /// read consistently (fail closed).
    Unavailable,
}

/// Which series of shards.
#[derive(Clone, Copy)]
enum Series {
    /// Key records, by hash.
    Keys,
    /// Id records, by id.
    Ids,
}

/// The key set of one source, in shared data under `edge_auth/idx/<id>/`.
pub struct KeyIndex<'a> {
    store: &'a dyn SharedStore,
    prefix: String,
}

impl<'a> KeyIndex<'a> {
    /// The set fetched by the feed named `id` (e.g. `keys/<tag>`).
    pub fn new(store: &'a dyn SharedStore, id: &str) -> Self {
        Self { store, prefix: format!("edge_auth/idx/{id}") }
    }

    fn header_key(&self) -> String {
        format!("{}/h", self.prefix)
    }

    fn shard_key(&self, bank: u8, series: Series, shard: u32) -> String {
        let kind = match series {
            Series::Keys => 'k',
            Series::Ids => 'i',
        };
        format!("{}/{bank}/{kind}{shard}", self.prefix)
    }

    pub fn header(&self) -> Header {
        self.store.get(&self.header_key()).and_then(|(bytes, _)| Header::decode(&bytes)).unwrap_or_default()
    }

    /// The records of one shard of the live bank; `None` if a load flipped
    /// banks since `header` was read.
    fn shard(&self, header: &Header, series: Series, shard: u32) -> Option<(Vec<u8>, Option<u32>)> {
        let (value, cas) = match self.store.get(&self.shard_key(header.bank, series, shard)) {
            Some((value, cas)) => (value, Some(cas)),
            None => (header.epoch.to_le_bytes().to_vec(), None),
        };
        let (epoch, _) = value.split_first_chunk::<4>()?;
        (u32::from_le_bytes(*epoch) == header.epoch).then_some((value, cas))
    }

    /// Runs `look` on a consistent header and shard: once more if a load
    /// flipped banks in between.
    fn read<T>(&self, look: impl FnMut(&Self, &Header) -> Option<T>) -> Option<T> {
        self.read_from(self.header(), look)
    }

    /// [`Self::read`] starting from a header already read.
    fn read_from<T>(&self, mut header: Header, mut look: impl FnMut(&Self, &Header) -> Option<T>) -> Option<T> {
        for _ in 0..2 {
            if !header.loaded() {
                return None;
            }
            if let Some(found) = look(self, &header) {
                return Some(found);
            }
            header = self.header();
        }
        None
    }

    /// The key whose hash is `hash`, compared in constant time.
    pub fn find(&self, hash: &KeyHash, rules: &RecordRules<'_>) -> Lookup {
        let found = self.read(|index, header| {
            let (shard, _) = index.shard(header, Series::Keys, key_shard(&hash.0, header.bits))?;
            let found = records(shard.get(4..)?).find(|r| r.hash_is(hash)).map(|r| r.decode(rules));
            Some(found)
        });
        match found {
            None => Lookup::Unavailable,
            Some(Some(Some(held))) => Lookup::Found(held),
            // A record the current policy refuses (its plan is gone, its
            // account no longer matches) is no key.
            Some(_) => Lookup::Missing,
        }
    }

    /// The key named `id` (a session's parent key).
    pub fn find_id(&self, id: &str, rules: &RecordRules<'_>) -> Lookup {
        let found = self.read(|index, header| {
            let Some(prefix) = index.id_record(header, id)?.and_then(|r| r.key) else { return Some(None) };
            let (shard, _) = index.shard(header, Series::Keys, key_shard(&prefix, header.bits))?;
            let found = records(shard.get(4..)?).find(|r| r.names(&prefix, id)).map(|r| r.decode(rules));
            Some(found)
        });
        match found {
            None => Lookup::Unavailable,
            Some(Some(Some(held))) => Lookup::Found(held),
            Some(_) => Lookup::Missing,
        }
    }

    /// Whether the set revokes `id` (a key of the policy's own, say); a set
    /// never loaded revokes nothing. `None` when the entries could not be
    /// read consistently: the caller fails closed.
    pub fn is_revoked(&self, id: &str) -> Option<bool> {
        let header = self.header();
        if !header.loaded() {
            return Some(false);
        }
        self.read_from(header, |index, header| Some(index.id_record(header, id)?.is_some_and(|r| r.revoked)))
    }

    /// `Some(None)`: no record for `id`; `None`: the shard is of another load.
    fn id_record(&self, header: &Header, id: &str) -> Option<Option<IdRecord>> {
        let (shard, _) = self.shard(header, Series::Ids, id_shard(id, header.bits))?;
        let found = id_records(shard.get(4..)?).find(|r| r.id == id).map(|r| r.owned());
        Some(found)
    }

    /// Makes `set` the live set. Only the holder of the source's fetch
    /// lease writes, so banks never have two writers.
    ///
    /// A set that needs a new number of shards is written into the inactive
    /// bank, which then goes live. One that keeps the number (a resync)
    /// rewrites the live bank shard by shard: each shard is the old set's or
    /// the new one's, so a key is the old or the new record, never a torn
    /// one, and a revocation lands no later than a flip would have; memory
    /// never holds two whole sets (a million keys: 115 MB more at the peak).
    pub fn load(&self, set: &Staged) -> Result<Header, ConfigError> {
        let old = self.header();
        let count = set.len().saturating_add(set.revoked.len());
        let bits = bits_for(count);
        let in_place = old.loaded() && old.bits == bits;
        let (bank, epoch) =
            if in_place { (old.bank, old.epoch) } else { (1 - old.bank, old.epoch.wrapping_add(1).max(1)) };
        let shards = 1u32 << bits;
        let keys = set.sorted_keys(bits)?;
        let ids = set.sorted_ids(bits)?;
        let failed = |_| ConfigError::new("key set", "shared data refused a write");
        if in_place {
            // The live set is about to be neither version: changes based on
            // the old one are refused from now on, and a change being
            // applied meanwhile (a writer whose lease ran out) finds the
            // header changed and asks for the whole set.
            let rewriting = Header { version: String::new(), ..old.clone() };
            self.store.set(&self.header_key(), &rewriting.encode(), Cas::Any).map_err(failed)?;
        }
        let revoked: HashSet<&str> = set.revoked.iter().map(String::as_str).collect();
        let mut value = Vec::new();
        let (mut at_key, mut at_id) = (keys.iter().peekable(), set.id_records(&ids).peekable());
        let high = old.high.get(usize::from(bank)).copied().unwrap_or(0).max(shards);
        for shard in 0..high {
            value.clear();
            value.extend_from_slice(&epoch.to_le_bytes());
            while let Some(record) = at_key.next_if(|&&(s, _)| s == shard).and_then(|&(_, i)| set.record(i)) {
                let start = value.len();
                value.extend_from_slice(record);
                let revoked = Record::parse(record).is_some_and(|r| revoked.contains(r.id));
                if let (true, Some(flags)) = (revoked, value.get_mut(start + 32)) {
                    *flags |= REVOKED;
                }
            }
            self.store.set(&self.shard_key(bank, Series::Keys, shard), &value, Cas::Any).map_err(failed)?;
            value.truncate(4);
            while let Some((_, record)) = at_id.next_if(|(s, _)| *s == shard) {
                record.encode(&mut value);
            }
            self.store.set(&self.shard_key(bank, Series::Ids, shard), &value, Cas::Any).map_err(failed)?;
        }
        let mut highs = old.high;
        if let Some(h) = highs.get_mut(usize::from(bank)) {
            *h = shards;
        }
        let live = Header {
            bank,
            bits,
            epoch,
            high: highs,
            keys: u64::try_from(set.len()).unwrap_or(u64::MAX),
            version: set.version.clone(),
        };
        self.store.set(&self.header_key(), &live.encode(), Cas::Any).map_err(failed)?;
        // The old bank is no longer read (a reader that raced the flip sees
        // a stale epoch and reads the header again): free its records.
        if old.loaded() && !in_place {
            let stale = 0u32.to_le_bytes();
            for shard in 0..old.high.get(usize::from(old.bank)).copied().unwrap_or(0) {
                for series in [Series::Keys, Series::Ids] {
                    let _ = self.store.set(&self.shard_key(old.bank, series, shard), &stale, Cas::Any);
                }
            }
        }
        Ok(live)
    }

    /// Checks changes against the live set with the same rules as a whole
    /// set: the set they make must be one a whole answer could be.
    pub fn check(&self, doc: &KeyChangesDoc, rules: &RecordRules<'_>, path: &str) -> Result<Changes, ConfigError> {
        let held = |hash: &KeyHash| match self.find(hash, rules) {
            Lookup::Found(held) => Some(held.key.id),
            Lookup::Missing | Lookup::Unavailable => None,
        };
        let upsert = super::check_changes(doc, rules, path, held)?;
        let upsert = upsert
            .iter()
            .map(|key| encode(key, false, rules.plans).map_err(|e| ConfigError::new(path, e.to_string())))
            .collect::<Result<_, _>>()?;
        Ok(Changes { upsert, remove: doc.remove.clone(), revoke: doc.revoke.clone(), unrevoke: doc.unrevoke.clone() })
    }

    /// Applies checked changes entry by entry, then names the set
    /// `version`. `Err` if a write lost its compare-and-swap for good or
    /// the set is not loaded: the caller asks for the whole set.
    pub fn apply(&self, changes: &Changes, version: &str) -> Result<(), Conflict> {
        let header = self.header();
        if !header.loaded() {
            return Err(Conflict);
        }
        let mut keys = i64::try_from(header.keys).unwrap_or(i64::MAX);
        // Revocations first and un-revocations last: a change that stops
        // half way never leaves a key live that it revokes.
        for id in &changes.revoke {
            self.set_revoked(&header, id, true)?;
        }
        for id in &changes.remove {
            keys -= i64::from(self.remove(&header, id)?);
        }
        for record in &changes.upsert {
            let Some(id) = Record::parse(record).map(|r| r.id.to_owned()) else { continue };
            keys -= i64::from(self.remove(&header, &id)?);
            self.insert(&header, &id, record)?;
            keys += 1;
        }
        for id in &changes.unrevoke {
            self.set_revoked(&header, id, false)?;
        }
        // Any other write of the header since (a whole load by a writer
        // whose lease ran out) may have overwritten these edits.
        let written = store::update(self.store, &self.header_key(), ATTEMPTS, |current| {
            let mut now = current.and_then(Header::decode)?;
            (now == header).then_some(())?;
            now.keys = u64::try_from(keys.max(0)).unwrap_or(0);
            now.version = version.to_owned();
            Some(now.encode())
        });
        written.map(|_| ()).ok_or(Conflict)
    }

    /// Read-modify-write of one shard of the live bank, under
    /// compare-and-swap; `change` edits the records (without the epoch).
    fn edit(
        &self,
        header: &Header,
        series: Series,
        shard: u32,
        mut change: impl FnMut(&[u8]) -> Vec<u8>,
    ) -> Result<(), Conflict> {
        let key = self.shard_key(header.bank, series, shard);
        let written = store::retry(ATTEMPTS, || {
            let (value, cas) = self.shard(header, series, shard).ok_or(Conflict)?;
            let mut next = header.epoch.to_le_bytes().to_vec();
            next.extend(change(value.get(4..).unwrap_or_default()));
            self.store.set(&key, &next, cas.map_or(Cas::Absent, Cas::Match))
        });
        written.value.ok_or(Conflict)
    }

    /// Takes key `id` out of the set (its revoked flag stays). Returns
    /// whether it was there.
    fn remove(&self, header: &Header, id: &str) -> Result<bool, Conflict> {
        let Some(record) = self.id_record(header, id).ok_or(Conflict)? else { return Ok(false) };
        let Some(prefix) = record.key else { return Ok(false) };
        self.edit(header, Series::Keys, key_shard(&prefix, header.bits), |records_| {
            records(records_).filter(|r| !r.names(&prefix, id)).flat_map(|r| r.bytes.iter().copied()).collect()
        })?;
        self.put_id(header, IdRecord { id: id.to_owned(), revoked: record.revoked, key: None })?;
        Ok(true)
    }

    /// Adds encoded `record` for key `id`, known to be absent, with the
    /// revoked flag its id holds.
    fn insert(&self, header: &Header, id: &str, record: &[u8]) -> Result<(), Conflict> {
        let revoked = self.id_record(header, id).ok_or(Conflict)?.is_some_and(|r| r.revoked);
        let mut record = record.to_vec();
        let Some(parsed) = Record::parse(&record) else { return Ok(()) };
        let prefix = parsed.prefix();
        if let Some(flags) = record.get_mut(32) {
            *flags = if revoked { *flags | REVOKED } else { *flags & !REVOKED };
        }
        self.edit(header, Series::Keys, key_shard(&prefix, header.bits), |records_| {
            let mut out = records_.to_vec();
            out.extend_from_slice(&record);
            out
        })?;
        self.put_id(header, IdRecord { id: id.to_owned(), revoked, key: Some(prefix) })
    }

    fn set_revoked(&self, header: &Header, id: &str, revoked: bool) -> Result<(), Conflict> {
        let current = self.id_record(header, id).ok_or(Conflict)?;
        let key = current.and_then(|r| r.key);
        if let Some(prefix) = key {
            self.edit(header, Series::Keys, key_shard(&prefix, header.bits), |records_| {
                let mut out = Vec::with_capacity(records_.len());
                for r in records(records_) {
                    let start = out.len();
                    out.extend_from_slice(r.bytes);
                    if let (true, Some(flags)) = (r.names(&prefix, id), out.get_mut(start + 32)) {
                        *flags = if revoked { *flags | REVOKED } else { *flags & !REVOKED };
                    }
                }
                out
            })?;
        }
        self.put_id(header, IdRecord { id: id.to_owned(), revoked, key })
    }

    /// Writes the id record of `record.id`; one naming neither a key nor a
    /// revocation is dropped.
    fn put_id(&self, header: &Header, record: IdRecord) -> Result<(), Conflict> {
        self.edit(header, Series::Ids, id_shard(&record.id, header.bits), |records_| {
            let mut out: Vec<u8> =
                id_records(records_).filter(|r| r.id != record.id).flat_map(|r| r.bytes.iter().copied()).collect();
            if record.revoked || record.key.is_some() {
                record.encode(&mut out);
            }
            out
        })
    }
}

/// Checked changes, with their records encoded: applying them cannot be
/// refused on their content.
#[derive(Debug)]
pub struct Changes {
    upsert: Vec<Vec<u8>>,
    remove: Vec<String>,
    revoke: Vec<String>,
    unrevoke: Vec<String>,
}

/// A whole set on its way in (it may come in pages): each page's records
/// encoded one after another in a buffer of its own (a set growing page by
/// page is never copied whole), and revoked ids. Only the fetching worker
/// holds one, and only while it loads.
#[derive(Debug, Default)]
pub struct Staged {
    pub version: String,
    chunks: Vec<Vec<u8>>,
    /// Page and offset of each record, in order.
    at: Vec<(u32, u32)>,
    revoked: Vec<String>,
}

impl Staged {
    /// One page, empty so far.
    pub fn new(version: &str) -> Self {
        Self { version: version.to_owned(), chunks: vec![Vec::new()], ..Self::default() }
    }

    /// Adds the records of the page after.
    pub fn append(&mut self, page: Staged) {
        let base = u32::try_from(self.chunks.len()).unwrap_or(u32::MAX);
        self.at.extend(page.at.iter().map(|&(chunk, offset)| (chunk.saturating_add(base), offset)));
        self.chunks.extend(page.chunks);
        self.revoked.extend(page.revoked);
    }

    pub fn pages(&self) -> usize {
        self.chunks.len()
    }

    /// Refuses a hash or a key id twice (across pages, [`KeyIndex::load`]
    /// checks again).
    pub fn check_unique(&self) -> Result<(), ConfigError> {
        self.sorted_keys(0)?;
        self.sorted_ids(0).map(|_| ())
    }

    pub fn len(&self) -> usize {
        self.at.len()
    }

    pub fn is_empty(&self) -> bool {
        self.at.is_empty()
    }

    /// Adds one page's records, each checked as a whole set's would be
    /// (duplicates across pages are found at [`KeyIndex::load`]).
    pub fn add(
        &mut self,
        records: &[KeyRecordDoc],
        revoked: &[String],
        rules: &RecordRules<'_>,
        path: &str,
    ) -> Result<(), ConfigError> {
        let chunk = u32::try_from(self.chunks.len().saturating_sub(1)).unwrap_or(u32::MAX);
        for (i, record) in records.iter().enumerate() {
            let at = |field: &str| format!("{path}.keys[{i}].{field}");
            let key = compile_record(record, rules, &at)?;
            let encoded = encode(&key, false, rules.plans).map_err(|e| ConfigError::new(at("id"), e.to_string()))?;
            let Some(bytes) = self.chunks.last_mut() else { return Err(ConfigError::new(path, "no page")) };
            let offset = u32::try_from(bytes.len()).map_err(|_| ConfigError::new(path, "page too large"))?;
            bytes.extend(encoded);
            self.at.push((chunk, offset));
        }
        for (i, id) in revoked.iter().enumerate() {
            if id.is_empty() || id.len() > usize::from(u16::MAX) {
                let why = if id.is_empty() { "empty key id" } else { "key id longer than 65535 bytes" };
                return Err(ConfigError::new(format!("{path}.revoked[{i}]"), why));
            }
            self.revoked.push(id.clone());
        }
        Ok(())
    }

    fn record(&self, i: u32) -> Option<&[u8]> {
        let i = usize::try_from(i).ok()?;
        let &(chunk, start) = self.at.get(i)?;
        let bytes = self.chunks.get(usize::try_from(chunk).ok()?)?;
        let end = match self.at.get(i + 1) {
            Some(&(next, end)) if next == chunk => usize::try_from(end).ok()?,
            _ => bytes.len(),
        };
        bytes.get(usize::try_from(start).ok()?..end)
    }

    fn count(&self) -> u32 {
        u32::try_from(self.at.len()).unwrap_or(u32::MAX)
    }

    /// (key shard, record index) in shard order, refusing a hash twice.
    fn sorted_keys(&self, bits: u8) -> Result<Vec<(u32, u32)>, ConfigError> {
        let hash = |i: u32| self.record(i).and_then(|r| r.get(..32)).unwrap_or_default();
        let mut order: Vec<(u32, u32)> = (0..self.count()).map(|i| (key_shard(hash(i), bits), i)).collect();
        order.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| hash(a.1).cmp(hash(b.1))));
        if let Some(at) = order.windows(2).find_map(|w| match w {
            [a, b] if hash(a.1) == hash(b.1) => Some(a.1.max(b.1)),
            _ => None,
        }) {
            return Err(ConfigError::new(format!("key set.keys[{at}].hash"), "duplicate hash"));
        }
        Ok(order)
    }

    /// The id of entry `i` of [`Staged::sorted_ids`]: a key's, or (past the
    /// keys) a revoked id's.
    fn id(&self, i: u32) -> &str {
        match i.checked_sub(self.count()) {
            None => self.record(i).and_then(Record::parse).map_or("", |r| r.id),
            Some(r) => usize::try_from(r).ok().and_then(|r| self.revoked.get(r)).map_or("", String::as_str),
        }
    }

    /// (id shard, entry) in shard and id order, keys before revoked ids of
    /// the same id; refuses a key id twice.
    fn sorted_ids(&self, bits: u8) -> Result<Vec<(u32, u32)>, ConfigError> {
        let revoked = u32::try_from(self.revoked.len()).unwrap_or(u32::MAX);
        let total = self.count().saturating_add(revoked);
        let mut order: Vec<(u32, u32)> = (0..total).map(|i| (id_shard(self.id(i), bits), i)).collect();
        order.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| self.id(a.1).cmp(self.id(b.1))).then(a.1.cmp(&b.1)));
        let keys = self.count();
        if let Some((at, id)) = order.windows(2).find_map(|w| match w {
            [a, b] if b.1 < keys && self.id(a.1) == self.id(b.1) => Some((b.1, self.id(b.1))),
            _ => None,
        }) {
            return Err(ConfigError::new(format!("key set.keys[{at}].id"), format!("duplicate key id '{id}'")));
        }
        Ok(order)
    }

    /// The id records of a load, from [`Staged::sorted_ids`]: one per id,
    /// naming its key's hash prefix and whether any revoked id names it.
    fn id_records<'s>(&'s self, sorted: &'s [(u32, u32)]) -> impl Iterator<Item = (u32, IdRecord)> + 's {
        let keys = self.count();
        let mut rest = sorted.iter().peekable();
        std::iter::from_fn(move || {
            let &(shard, first) = rest.next()?;
            let id = self.id(first);
            let key = (first < keys).then(|| self.record(first).and_then(Record::parse).map(|r| r.prefix())).flatten();
            let mut revoked = first >= keys;
            while let Some(&&(_, same)) = rest.peek().filter(|&&&(s, i)| s == shard && self.id(i) == id) {
                revoked |= same >= keys;
                rest.next();
            }
            Some((shard, IdRecord { id: id.to_owned(), revoked, key }))
        })
    }

    pub fn revoked_len(&self) -> usize {
        self.revoked.len()
    }
}

/// The fewest shard bits that keep about [`KEYS_PER_SHARD`] records a shard.
fn bits_for(count: usize) -> u8 {
    let shards = count.div_ceil(KEYS_PER_SHARD).max(1).next_power_of_two();
    u8::try_from(shards.trailing_zeros()).unwrap_or(MAX_BITS).min(MAX_BITS)
}

/// A hash's shard: its first `bits` bits (the hash is an HMAC: uniform).
fn key_shard(hash: &[u8], bits: u8) -> u32 {
    let mut first = [0u8; 4];
    for (to, from) in first.iter_mut().zip(hash) {
        *to = *from;
    }
    top_bits(u64::from(u32::from_be_bytes(first)) << 32, bits)
}

/// An id's shard: FNV-1a of the id (the same in every worker and process).
fn id_shard(id: &str, bits: u8) -> u32 {
    let hash = id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    top_bits(hash, bits)
}

fn top_bits(value: u64, bits: u8) -> u32 {
    if bits == 0 {
        return 0;
    }
    u32::try_from(value >> (64 - u32::from(bits))).unwrap_or(0)
}

/// A record too large to encode (a field over 64 KiB).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLong;

impl std::fmt::Display for TooLong {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a field is longer than 65535 bytes")
    }
}

/// A key record: hash (32), flags, then id, org, account, space-joined
/// scopes, [plan], each a u16 length and bytes, then [expiry, u64 LE].
fn encode(key: &ApiKey, revoked: bool, plans: &Plans) -> Result<Vec<u8>, TooLong> {
    let plan = key.plan.and_then(|id| plans.get(id)).map(|p| p.name.as_str());
    let mut flags = if revoked { REVOKED } else { 0 };
    if plan.is_some() {
        flags |= HAS_PLAN;
    }
    if key.expires_at.is_some() {
        flags |= HAS_EXPIRY;
    }
    let mut out = Vec::with_capacity(64 + key.id.len() + key.org.len() + key.account.len() + key.scopes_header.len());
    out.extend_from_slice(&key.hash.0);
    out.push(flags);
    for text in [&key.id, &key.org, &key.account, &key.scopes_header].into_iter().map(String::as_str).chain(plan) {
        let len = u16::try_from(text.len()).map_err(|_| TooLong)?;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(text.as_bytes());
    }
    if let Some(at) = key.expires_at {
        out.extend_from_slice(&at.to_le_bytes());
    }
    Ok(out)
}

/// Reads little-endian numbers and length-prefixed text off the front.
struct Reader<'b>(&'b [u8]);

impl<'b> Reader<'b> {
    fn take(&mut self, n: usize) -> Option<&'b [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1)?.first().copied()
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    fn text(&mut self) -> Option<&'b str> {
        let len = usize::from(self.u16()?);
        std::str::from_utf8(self.take(len)?).ok()
    }
}

/// One key record, as stored.
struct Record<'b> {
    bytes: &'b [u8],
    hash: &'b [u8],
    flags: u8,
    id: &'b str,
    org: &'b str,
    account: &'b str,
    scopes: &'b str,
    plan: Option<&'b str>,
    expires_at: Option<u64>,
}

impl<'b> Record<'b> {
    /// The record at the front of `bytes` (which may hold more).
    fn parse(bytes: &'b [u8]) -> Option<Self> {
        let mut r = Reader(bytes);
        let hash = r.take(32)?;
        let flags = r.u8()?;
        let (id, org, account, scopes) = (r.text()?, r.text()?, r.text()?, r.text()?);
        let plan = if flags & HAS_PLAN != 0 { Some(r.text()?) } else { None };
        let expires_at = if flags & HAS_EXPIRY != 0 { Some(r.u64()?) } else { None };
        let bytes = bytes.get(..bytes.len() - r.0.len())?;
        Some(Self { bytes, hash, flags, id, org, account, scopes, plan, expires_at })
    }

    fn prefix(&self) -> [u8; PREFIX] {
        let mut out = [0u8; PREFIX];
        for (to, from) in out.iter_mut().zip(self.hash) {
            *to = *from;
        }
        out
    }

    /// The presented key's hash against this one, in constant time.
    fn hash_is(&self, hash: &KeyHash) -> bool {
        self.hash.ct_eq(&hash.0).into()
    }

    fn names(&self, prefix: &[u8; PREFIX], id: &str) -> bool {
        self.hash.get(..PREFIX) == Some(prefix.as_slice()) && self.id == id
    }

    /// The key, under the current policy's rules: `None` if they refuse it.
    fn decode(&self, rules: &RecordRules<'_>) -> Option<Held> {
        let plan = match self.plan {
            None => None,
            Some(name) => Some(rules.plans.id(name)?),
        };
        if !(rules.account_ok)(self.account) {
            return None;
        }
        let hash = KeyHash(self.hash.try_into().ok()?);
        let scopes: Vec<String> = self.scopes.split(' ').filter(|s| !s.is_empty()).map(str::to_owned).collect();
        let key = ApiKey {
            id: self.id.to_owned(),
            hash,
            org: self.org.to_owned(),
            account: self.account.to_owned(),
            scopes_header: self.scopes.to_owned(),
            scopes,
            plan,
            expires_at: self.expires_at,
        };
        Some(Held { key, revoked: self.flags & REVOKED != 0 })
    }
}

/// The records of a shard, in order; a damaged tail is ignored.
fn records(mut bytes: &[u8]) -> impl Iterator<Item = Record<'_>> {
    std::iter::from_fn(move || {
        let record = Record::parse(bytes)?;
        bytes = bytes.get(record.bytes.len()..)?;
        Some(record)
    })
}

/// An id record: id (u16 length and bytes), flags, [hash prefix].
struct IdRecord {
    id: String,
    revoked: bool,
    key: Option<[u8; PREFIX]>,
}

impl IdRecord {
    fn encode(&self, out: &mut Vec<u8>) {
        // Ids were checked to fit when their key or revocation was taken in.
        let len = u16::try_from(self.id.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(self.id.as_bytes().get(..usize::from(len)).unwrap_or_default());
        out.push(if self.revoked { REVOKED } else { 0 } | if self.key.is_some() { HAS_KEY } else { 0 });
        if let Some(prefix) = self.key {
            out.extend_from_slice(&prefix);
        }
    }
}

struct IdRef<'b> {
    bytes: &'b [u8],
    id: &'b str,
    revoked: bool,
    key: Option<[u8; PREFIX]>,
}

impl IdRef<'_> {
    fn owned(&self) -> IdRecord {
        IdRecord { id: self.id.to_owned(), revoked: self.revoked, key: self.key }
    }
}

fn id_records(mut bytes: &[u8]) -> impl Iterator<Item = IdRef<'_>> {
    std::iter::from_fn(move || {
        let mut r = Reader(bytes);
        let id = r.text()?;
        let flags = r.u8()?;
        let key = if flags & HAS_KEY != 0 { Some(r.take(PREFIX)?.try_into().ok()?) } else { None };
        let (record, rest) = bytes.split_at_checked(bytes.len() - r.0.len())?;
        bytes = rest;
        Some(IdRef { bytes: record, id, revoked: flags & REVOKED != 0, key })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api_key::KeyHasher;
    use crate::store::MemoryStore;

    fn record(id: &str, key: &str) -> KeyRecordDoc {
        KeyRecordDoc {
            id: id.into(),
            hash: KeyHasher::new(b"pepper").unwrap().hash(key).to_hex(),
            org: "org_1".into(),
            account: "acme".into(),
            scopes: vec!["a:read".into(), "b:write".into()],
            plan: None,
            expires_at: Some("2030-01-01T00:00:00Z".into()),
        }
    }

    fn with_rules<T>(f: impl FnOnce(&RecordRules<'_>) -> T) -> T {
        let plans = Plans::default();
        f(&RecordRules { account_ok: &|a| !a.is_empty(), plans: &plans })
    }

    fn load(index: &KeyIndex<'_>, version: &str, records: &[KeyRecordDoc], revoked: &[&str]) -> Header {
        let mut set = Staged::new(version);
        let revoked: Vec<String> = revoked.iter().map(|r| (*r).to_owned()).collect();
        with_rules(|rules| set.add(records, &revoked, rules, "k")).unwrap();
        index.load(&set).unwrap()
    }

    /// The key id each presented key finds, `!` marking a revoked one.
    fn ids(index: &KeyIndex<'_>, keys: &[&str]) -> Vec<String> {
        let hasher = KeyHasher::new(b"pepper").unwrap();
        keys.iter()
            .map(|k| match with_rules(|rules| index.find(&hasher.hash(k), rules)) {
                Lookup::Found(held) => format!("{}{}", held.key.id, if held.revoked { "!" } else { "" }),
                Lookup::Missing => "-".into(),
                Lookup::Unavailable => "?".into(),
            })
            .collect()
    }

    fn change(index: &KeyIndex<'_>, doc: &KeyChangesDoc) -> Result<(), ConfigError> {
        let checked = with_rules(|rules| index.check(doc, rules, "c"))?;
        index.apply(&checked, "next").map_err(|_| ConfigError::new("c", "conflict"))
    }

    #[test]
    fn a_loaded_set_is_found_by_hash_and_by_id() {
        let store = MemoryStore::default();
        let index = KeyIndex::new(&store, "keys/t");
        assert_eq!(ids(&index, &["one"]), ["?"], "never loaded");
        assert_eq!(index.is_revoked("k1"), Some(false));
        let records: Vec<KeyRecordDoc> = (0..100).map(|i| record(&format!("k{i}"), &format!("key-{i}"))).collect();
        let header = load(&index, "1", &records, &["k7", "elsewhere"]);
        assert_eq!((header.keys, header.bits, header.version.as_str()), (100, 3, "1"));
        assert_eq!(ids(&index, &["key-0", "key-7", "key-99", "key-100"]), ["k0", "k7!", "k99", "-"]);
        let Lookup::Found(held) = with_rules(|rules| index.find_id("k42", rules)) else { panic!() };
        assert_eq!(held.key.scopes, ["a:read", "b:write"]);
        assert_eq!((held.key.scopes_header.as_str(), held.key.expires_at), ("a:read b:write", Some(1_893_456_000)));
        assert_eq!(with_rules(|rules| index.find_id("k100", rules)), Lookup::Missing);
        assert_eq!((index.is_revoked("elsewhere"), index.is_revoked("k8")), (Some(true), Some(false)));
        // A record the current policy refuses is no key.
        let plans = Plans::default();
        let strict = RecordRules { account_ok: &|a| a == "other", plans: &plans };
        let hasher = KeyHasher::new(b"pepper").unwrap();
        assert_eq!(index.find(&hasher.hash("key-0"), &strict), Lookup::Missing);
    }

    #[test]
    fn a_whole_set_flips_banks_and_frees_the_old_one() {
        let store = MemoryStore::default();
        let index = KeyIndex::new(&store, "keys/t");
        let records: Vec<KeyRecordDoc> = (0..200).map(|i| record(&format!("k{i}"), &format!("key-{i}"))).collect();
        let first = load(&index, "1", &records, &[]);
        let entries = store.len();
        // A reader that read the header before the flip finds a stale epoch.
        let second = load(&index, "2", records.get(..20).unwrap(), &[]);
        assert_ne!(first.bank, second.bank);
        assert!(index.shard(&first, Series::Keys, 0).is_none());
        assert_eq!(ids(&index, &["key-0", "key-19", "key-20"]), ["k0", "k19", "-"]);
        let third = load(&index, "3", &records, &[]);
        assert_eq!(ids(&index, &["key-0", "key-199"]), ["k0", "k199"]);
        assert_eq!(third.bank, first.bank);
        assert_eq!(store.len(), entries + 2 * 2, "the second bank's two shards, and nothing more");
        let held: usize = (0..2u8)
            .flat_map(|bank| (0..16).map(move |s| (bank, s)))
            .filter_map(|(bank, s)| store.get(&index.shard_key(bank, Series::Keys, s)))
            .map(|(value, _)| value.len())
            .sum();
        assert!(held < 200 * 80, "one bank's records: {held}");
        let twice = [record("k1", "a"), record("k1", "b")];
        let mut set = Staged::new("4");
        with_rules(|rules| set.add(&twice, &[], rules, "k")).unwrap();
        assert_eq!(index.load(&set).unwrap_err().to_string(), "key set.keys[1].id: duplicate key id 'k1'");
        assert_eq!(index.header().version, "3");
    }

    #[test]
    fn a_resync_of_the_same_size_rewrites_the_live_bank_in_place() {
        let store = MemoryStore::default();
        let index = KeyIndex::new(&store, "keys/t");
        let records: Vec<KeyRecordDoc> = (0..200).map(|i| record(&format!("k{i}"), &format!("key-{i}"))).collect();
        let first = load(&index, "1", &records, &[]);
        let entries = store.len();
        // Key 0 removed, key 200 added, key 5 revoked: the same number of shards.
        let next: Vec<KeyRecordDoc> = (1..201).map(|i| record(&format!("k{i}"), &format!("key-{i}"))).collect();
        let second = load(&index, "2", &next, &["k5"]);
        assert_eq!((second.bank, second.bits, second.epoch), (first.bank, first.bits, first.epoch));
        assert_eq!((second.keys, second.version.as_str()), (200, "2"));
        assert_eq!(ids(&index, &["key-0", "key-5", "key-200"]), ["-", "k5!", "k200"]);
        assert_eq!(store.len(), entries, "no entry of the other bank written");
    }

    /// A store that runs `during` just before the first compare-and-swap
    /// of the header: another writer's whole load landing mid-change.
    struct Interleaved<'a> {
        inner: &'a MemoryStore,
        during: std::cell::RefCell<Option<Box<dyn FnOnce() + 'a>>>,
    }

    impl SharedStore for Interleaved<'_> {
        fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
            self.inner.get(key)
        }

        fn set(&self, key: &str, value: &[u8], cas: Cas) -> Result<(), Conflict> {
            if key.ends_with("/h") && matches!(cas, Cas::Match(_)) {
                if let Some(during) = self.during.borrow_mut().take() {
                    during();
                }
            }
            self.inner.set(key, value, cas)
        }
    }

    #[test]
    fn a_change_overwritten_by_a_resync_in_place_is_not_named_applied() {
        let store = MemoryStore::default();
        let records: Vec<KeyRecordDoc> = (0..40).map(|i| record(&format!("k{i}"), &format!("key-{i}"))).collect();
        load(&KeyIndex::new(&store, "keys/t"), "1", &records, &[]);
        let resync = || {
            load(&KeyIndex::new(&store, "keys/t"), "2", &records, &[]);
        };
        let racing = Interleaved { inner: &store, during: std::cell::RefCell::new(Some(Box::new(resync))) };
        let revoke = KeyChangesDoc { revoke: vec!["k3".into()], ..Default::default() };
        assert!(change(&KeyIndex::new(&racing, "keys/t"), &revoke).is_err(), "the writer must ask for the whole set");
        assert_eq!(KeyIndex::new(&store, "keys/t").header().version, "2");
    }

    #[test]
    fn changes_apply_entry_by_entry_and_churn_does_not_grow_memory() {
        let store = MemoryStore::default();
        let index = KeyIndex::new(&store, "keys/t");
        load(&index, "1", &[record("k1", "one"), record("k2", "two"), record("k3", "three")], &["gone"]);
        let doc = KeyChangesDoc {
            upsert: vec![record("k4", "four"), record("k2", "two-rotated")],
            remove: vec!["k1".into(), "nobody".into()],
            revoke: vec!["k3".into()],
            unrevoke: vec!["gone".into()],
        };
        change(&index, &doc).unwrap();
        let found = ids(&index, &["one", "two", "two-rotated", "three", "four"]);
        assert_eq!(found, ["-", "-", "k2", "k3!", "k4"]);
        assert_eq!((index.header().keys, index.header().version.as_str()), (3, "next"));
        assert_eq!(index.is_revoked("gone"), Some(false));
        // A hash may move from a key this change replaces; a revoked id
        // upserted again stays revoked.
        let mut moved = record("k5", "three");
        moved.org = "org_2".into();
        change(&index, &KeyChangesDoc { upsert: vec![moved, record("k3", "new-three")], ..KeyChangesDoc::default() })
            .unwrap();
        assert_eq!(ids(&index, &["three", "new-three"]), ["k5", "k3!"]);
        // Churn: the same entries, rewritten in place; no tombstone stays.
        let bytes = |series| store.get(&index.shard_key(1, series, 0)).map(|(v, _)| v.len());
        let before = (store.len(), bytes(Series::Keys), bytes(Series::Ids));
        for n in 0..50 {
            let id = format!("churn{n}");
            change(
                &index,
                &KeyChangesDoc { upsert: vec![record(&id, &id)], revoke: vec![id.clone()], ..Default::default() },
            )
            .unwrap();
            change(&index, &KeyChangesDoc { remove: vec![id.clone()], unrevoke: vec![id], ..Default::default() })
                .unwrap();
        }
        assert_eq!((store.len(), bytes(Series::Keys), bytes(Series::Ids)), before);
    }

    #[test]
    fn invalid_changes_are_refused_whole_naming_the_entry() {
        let store = MemoryStore::default();
        let index = KeyIndex::new(&store, "keys/t");
        load(&index, "1", &[record("k1", "one"), record("k2", "two")], &[]);
        let err = |doc: KeyChangesDoc| change(&index, &doc).unwrap_err().to_string();
        let upsert = |records: Vec<KeyRecordDoc>| KeyChangesDoc { upsert: records, ..KeyChangesDoc::default() };
        assert_eq!(err(upsert(vec![record("k9", "one")])), "c.upsert[0].hash: duplicate hash");
        let twice = upsert(vec![record("k8", "eight"), record("k8", "nine")]);
        assert_eq!(err(twice), "c.upsert[1].id: duplicate key id 'k8'");
        let both = KeyChangesDoc { remove: vec!["k8".into()], ..upsert(vec![record("k8", "eight")]) };
        assert_eq!(err(both), "c.upsert[0].id: 'k8' is also in remove");
        let clash = KeyChangesDoc { revoke: vec!["k1".into()], unrevoke: vec!["k1".into()], ..Default::default() };
        assert_eq!(err(clash), "c.unrevoke: 'k1' is also in revoke");
        assert_eq!(ids(&index, &["one", "two", "eight"]), ["k1", "k2", "-"]);
    }

    #[test]
    fn shards_grow_with_the_set() {
        assert_eq!((bits_for(0), bits_for(16), bits_for(17), bits_for(1_000_000)), (0, 0, 1, 16));
        assert_eq!(key_shard(&[0xff, 0, 0, 0], 1), 1);
        assert_eq!(key_shard(&[0x7f, 0xff, 0, 0], 1), 0);
        assert_eq!(id_shard("anything", 0), 0);
    }
}
