//! Minting new API keys: `<prefix><account>_<secret>` and the record to store.

use edge_auth::api_key::KeyHasher;
use edge_auth::config::KeyRecordDoc;

/// Base62: the secret must not contain `_`, the account separator.
const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
/// 32 base62 characters carry about 190 bits.
const SECRET_LEN: usize = 32;
/// Base62 characters after `key_`: an id names a key without revealing it.
const ID_LEN: usize = 12;

pub struct NewKey {
    /// The key itself: shown once, never stored.
    pub key: String,
    pub record: KeyRecordDoc,
}

pub struct KeySpec {
    pub prefix: String,
    pub account: String,
    pub org: String,
    pub scopes: Vec<String>,
    pub plan: Option<String>,
    pub expires_at: Option<String>,
}

/// Random base62 text from the operating system's CSPRNG, without modulo bias.
pub fn random_base62(len: usize) -> Result<String, getrandom::Error> {
    let mut out = String::with_capacity(len);
    let mut buf = [0u8; 64];
    while out.len() < len {
        getrandom::fill(&mut buf)?;
        // 248 = 4 × 62: bytes at or above it would favour some characters.
        for &b in buf.iter().filter(|&&b| b < 248) {
            if out.len() == len {
                break;
            }
            if let Some(&c) = ALPHABET.get(usize::from(b % 62)) {
                out.push(char::from(c));
            }
        }
    }
    Ok(out)
}

pub fn mint(spec: KeySpec, hasher: &KeyHasher) -> Result<NewKey, getrandom::Error> {
    let key = format!("{}{}_{}", spec.prefix, spec.account, random_base62(SECRET_LEN)?);
    let id = format!("key_{}", random_base62(ID_LEN)?);
    let record = KeyRecordDoc {
        id,
        hash: hasher.hash(&key).to_hex(),
        org: spec.org,
        account: spec.account,
        scopes: spec.scopes,
        plan: spec.plan,
        expires_at: spec.expires_at,
    };
    Ok(NewKey { key, record })
}

#[cfg(test)]
mod tests {
    use super::*;
    use edge_auth::credential::{extract, Credential, Prefixes};

    #[test]
    fn minted_keys_parse_back_and_hash_to_their_record() {
        let hasher = KeyHasher::new(b"pepper").unwrap();
        let spec = KeySpec {
            prefix: "sk_live_".into(),
            account: "big_co".into(),
            org: "org_1".into(),
            scopes: vec![],
            plan: None,
            expires_at: None,
        };
        let new = mint(spec, &hasher).unwrap();
        let prefixes = Prefixes { secret: vec!["sk_live_".into()], public: vec![], ..Prefixes::standard() };
        let headers = [("x-api-key", new.key.as_bytes())];
        let parsed = extract(&headers, &prefixes).unwrap().unwrap().0;
        assert_eq!(parsed, Credential::ApiKey { key: &new.key, prefix_account: Some("big_co") });
        assert_eq!(new.record.hash, hasher.hash(&new.key).to_hex());
        assert!(new.record.id.starts_with("key_") && new.record.id.len() == 4 + ID_LEN);
    }

    #[test]
    fn secrets_are_base62_and_differ() {
        let a = random_base62(SECRET_LEN).unwrap();
        let b = random_base62(SECRET_LEN).unwrap();
        assert_eq!(a.len(), SECRET_LEN);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }
}
