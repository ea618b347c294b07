//! A bounded per-worker cache of verified tokens, so a repeated token costs a
//! lookup rather than a signature check. Keyed by SHA-256 of the token (the
//! token itself is never stored); an entry is never used past its `exp`.

use super::VerifiedToken;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

/// Tokens each worker remembers; the oldest is forgotten first.
pub const CAPACITY: usize = 4_096;

type TokenHash = [u8; 32];

#[derive(Default)]
pub struct TokenCache {
    entries: HashMap<TokenHash, Rc<VerifiedToken>>,
    order: VecDeque<TokenHash>,
}

impl TokenCache {
    pub fn hash(token: &str) -> TokenHash {
        Sha256::digest(token.as_bytes()).into()
    }

    /// The verified token, if cached; the caller checks its `exp`, since the
    /// allowed skew is the provider's.
    pub fn get(&self, hash: &TokenHash) -> Option<Rc<VerifiedToken>> {
        self.entries.get(hash).cloned()
    }

    pub fn insert(&mut self, hash: TokenHash, token: Rc<VerifiedToken>) {
        if self.entries.insert(hash, token).is_some() {
            return;
        }
        self.order.push_back(hash);
        while self.order.len() > CAPACITY {
            if let Some(oldest) = self.order.pop_front() {
                self.entries.remove(&oldest);
            }
        }
    }

    pub fn remove(&mut self, hash: &TokenHash) {
        if self.entries.remove(hash).is_some() {
            self.order.retain(|h| h != hash);
        }
    }

    pub fn clear(&mut self) {
        self.entries.clear();
        self.order.clear();
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(sub: &str) -> Rc<VerifiedToken> {
        Rc::new(VerifiedToken {
            provider: 0,
            subject: sub.into(),
            org: None,
            accounts: None,
            scopes: String::new(),
            expires_at: 10,
        })
    }

    #[test]
    fn is_bounded_and_forgets_the_oldest_first() {
        let mut cache = TokenCache::default();
        for i in 0..CAPACITY + 10 {
            cache.insert(TokenCache::hash(&i.to_string()), token(&i.to_string()));
        }
        assert_eq!(cache.len(), CAPACITY);
        assert!(cache.get(&TokenCache::hash("0")).is_none());
        assert_eq!(
            cache.get(&TokenCache::hash(&(CAPACITY + 9).to_string())).unwrap().subject,
            (CAPACITY + 9).to_string()
        );
        cache.remove(&TokenCache::hash("20"));
        assert!(cache.get(&TokenCache::hash("20")).is_none());
        cache.clear();
        assert!(cache.is_empty());
    }
}
