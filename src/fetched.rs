//! A worker's view of the fetched documents: the key set and each provider's
//! JWKS, re-parsed only when the shared generation changes.

use crate::api_key::{KeySet, RecordRules};
use crate::config::{ConfigError, JwkSetDoc, KeyRecordDoc};
use crate::jwt::{verify_keys, VerifyKey};
use crate::policy::Policy;
use crate::remote::{Endpoint, Outcome, SharedDocument, MAX_BODY};
use crate::store::SharedStore;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::rc::Rc;

/// What a key server answers.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySetAnswer {
    pub version: String,
    pub keys: Vec<KeyRecordDoc>,
    #[serde(default)]
    pub revoked: Vec<String>,
}

/// What a source holds once parsed.
pub enum Document {
    /// A key set and the server's name for it (`version`, logged).
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
pub fn parse(policy: &Policy, kind: Kind, body: &[u8]) -> Result<Document, ConfigError> {
    match kind {
        Kind::Keys => {
            let answer: KeySetAnswer =
                serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_slice(body))
                    .map_err(|e| ConfigError::new(format!("key set: {}", e.path()), e.into_inner().to_string()))?;
            let rules = RecordRules { account_ok: &|a| policy.accounts.is_valid(a), plans: &policy.plans };
            let keys = KeySet::build(&answer.keys, &answer.revoked, &rules, "key set")?;
            Ok(Document::Keys(keys, answer.version))
        }
        Kind::Jwks(_) => {
            let set: JwkSetDoc = serde_json::from_slice(body).map_err(|e| ConfigError::new("jwks", e.to_string()))?;
            let keys = verify_keys(&set, "jwks", None)?;
            Ok(Document::Jwks(keys))
        }
    }
}

/// A fetch's answer, judged: only a valid document may be published.
pub struct Assessed {
    pub outcome: Outcome,
    /// Keys in a valid key set, for the size gauge.
    pub keys: Option<usize>,
}

/// Judges what `feed`'s server answered (`status` is `none` when the call
/// itself failed), logging why an answer is not used.
pub fn assess(policy: &Policy, feed: &Feed, status: &str, body: Option<Vec<u8>>, etag: Option<String>) -> Assessed {
    let failed = Assessed { outcome: Outcome::Failed, keys: None };
    match (status, body) {
        ("304", _) => Assessed { outcome: Outcome::Unchanged, keys: None },
        ("200", Some(body)) if body.len() <= MAX_BODY => match parse(policy, feed.kind, &body) {
            Ok(document) => {
                let keys = match &document {
                    Document::Keys(keys, version) => {
                        log::info!("edge-auth: source {}: key set version {version:?}, {} keys", feed.id, keys.len());
                        Some(keys.len())
                    }
                    Document::Jwks(keys) => {
                        log::info!("edge-auth: source {}: JWKS with {} keys", feed.id, keys.len());
                        None
                    }
                };
                Assessed { outcome: Outcome::Fresh { body, etag }, keys }
            }
            Err(err) => {
                log::warn!("edge-auth: source {}: invalid answer, keeping the last good one: {err}", feed.id);
                failed
            }
        },
        (status, _) => {
            log::warn!("edge-auth: source {}: HTTP {status}, keeping the last good answer", feed.id);
            failed
        }
    }
}

/// One feed as a worker last saw it.
struct Loaded {
    feed: Feed,
    generation: u64,
    document: Option<Rc<Document>>,
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

    /// Re-reads what changed in shared data; a body that fails to parse here
    /// (it was valid when published) leaves the last one in place. Returns
    /// whether a JWKS changed: tokens verified with a key that is now gone
    /// must not outlive it in a cache.
    pub fn sync(&mut self, policy: &Policy, store: &dyn SharedStore) -> bool {
        let mut jwks_changed = false;
        for loaded in &mut self.loaded {
            let shared = loaded.feed.shared(store);
            if let Some((generation, body)) = shared.newer_than(loaded.generation) {
                loaded.generation = generation;
                if let Ok(document) = parse(policy, loaded.feed.kind, &body) {
                    jwks_changed |= matches!(document, Document::Jwks(_));
                    loaded.document = Some(Rc::new(document));
                }
            }
        }
        jwks_changed
    }

    fn find(&self, kind: Kind) -> Option<&Loaded> {
        self.loaded.iter().find(|l| l.feed.kind == kind)
    }

    /// The fetched key set: `Err` if a source is configured and never loaded.
    pub fn keys(&self) -> Result<Option<&KeySet>, NeverLoaded> {
        match self.find(Kind::Keys) {
            None => Ok(None),
            Some(Loaded { document: Some(doc), .. }) => match doc.as_ref() {
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
            Some(Loaded { document: Some(doc), .. }) => match doc.as_ref() {
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
