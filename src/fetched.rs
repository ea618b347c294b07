//! A worker's view of the fetched documents: the key set and each provider's
//! JWKS, re-parsed only when the shared generation changes.

use crate::api_key::{KeySet, RecordRules};
use crate::config::{ConfigError, JwkSetDoc, KeyRecordDoc, Policy, Source};
use crate::jwt::{compile_jwks, VerifyKey};
use crate::source::SharedSource;
use crate::store::SharedStore;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::rc::Rc;
use std::time::Duration;

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

/// A source of the policy, named in shared data by what it fetches from, so
/// a policy pointing elsewhere never reads another URL's document.
#[derive(Debug, Clone)]
pub struct SourceSpec {
    pub id: String,
    pub kind: Kind,
    pub cluster: String,
    pub path: String,
    pub refresh: Duration,
}

impl SourceSpec {
    fn new(kind: Kind, source: &Source) -> Self {
        let digest = Sha256::digest(format!("{}\0{}", source.cluster, source.path));
        let tag: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
        let id = match kind {
            Kind::Keys => format!("keys/{tag}"),
            Kind::Jwks(n) => format!("jwks{n}/{tag}"),
        };
        Self { id, kind, cluster: source.cluster.clone(), path: source.path.clone(), refresh: source.refresh }
    }
}

/// Every source a policy fetches from.
pub fn sources(policy: &Policy) -> Vec<SourceSpec> {
    let keys = policy.api_keys.as_ref().and_then(|k| k.source.as_ref()).map(|s| SourceSpec::new(Kind::Keys, s));
    let jwks = policy
        .jwt_providers
        .iter()
        .enumerate()
        .filter_map(|(n, p)| p.jwks_source.as_ref().map(|s| SourceSpec::new(Kind::Jwks(n), s)));
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
            let keys = compile_jwks(&set, "jwks")?
                .iter()
                .enumerate()
                .map(|(i, jwk)| VerifyKey::new(jwk).map_err(|why| ConfigError::new(format!("jwks.keys[{i}]"), why)))
                .collect::<Result<_, _>>()?;
            Ok(Document::Jwks(keys))
        }
    }
}

/// One source as a worker last saw it.
struct Loaded {
    spec: SourceSpec,
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

    pub fn new(policy: &Policy) -> Self {
        Self {
            loaded: sources(policy).into_iter().map(|spec| Loaded { spec, generation: 0, document: None }).collect(),
        }
    }

    /// Re-reads what changed in shared data; a body that fails to parse here
    /// (it was valid when published) leaves the last one in place. Returns
    /// whether a JWKS changed: tokens verified with a key that is now gone
    /// must not outlive it in a cache.
    pub fn sync(&mut self, policy: &Policy, store: &dyn SharedStore) -> bool {
        let mut jwks_changed = false;
        for loaded in &mut self.loaded {
            let shared = SharedSource::new(store, &loaded.spec.id);
            if let Some((generation, body)) = shared.newer_than(loaded.generation) {
                loaded.generation = generation;
                if let Ok(document) = parse(policy, loaded.spec.kind, &body) {
                    jwks_changed |= matches!(document, Document::Jwks(_));
                    loaded.document = Some(Rc::new(document));
                }
            }
        }
        jwks_changed
    }

    fn find(&self, kind: Kind) -> Option<&Loaded> {
        self.loaded.iter().find(|l| l.spec.kind == kind)
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

    /// The shared-data id of provider `n`'s JWKS source, if it has one.
    pub fn jwks_source_id(&self, n: usize) -> Option<&str> {
        self.find(Kind::Jwks(n)).map(|l| l.spec.id.as_str())
    }
}

/// A source that has never produced a valid document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NeverLoaded;
