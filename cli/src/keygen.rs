//! Minting new API keys: `<prefix><account>_<secret>` (the account inside,
//! checked against the record's), or an opaque `<prefix><secret>`, and the
//! record to store.

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

/// A key's default prefix when it carries its account.
pub const DEFAULT_PREFIX: &str = "sk_live_";
/// The filter's default prefixes: a key starting with one must carry an account.
const ACCOUNT_PREFIXES: [&str; 4] = ["sk_live_", "sk_test_", "pk_live_", "pk_test_"];

pub struct KeySpec {
    /// `None`: `sk_live_`, or nothing for an opaque key.
    pub prefix: Option<String>,
    /// Leave the account out of the key (as an empty prefix does).
    pub opaque: bool,
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

impl KeySpec {
    /// Whether the key leaves the account out.
    fn is_opaque(&self) -> bool {
        self.opaque || self.prefix.as_deref() == Some("")
    }

    /// Refuses a prefix the filter would read differently: an opaque key under
    /// a prefix the filter expects an account after, or one a header cannot carry.
    pub fn check_form(&self) -> Result<(), String> {
        let prefix = self.prefix.as_deref().unwrap_or_default();
        if self.is_opaque() {
            if let Some(p) = ACCOUNT_PREFIXES.iter().find(|p| prefix.starts_with(**p)) {
                return Err(format!("--opaque: keys starting with {p} must carry their account"));
            }
        }
        if prefix.contains(|c: char| !c.is_ascii_graphic() || c == ',') {
            return Err("--prefix: visible ASCII without ','".into());
        }
        Ok(())
    }
}

pub fn mint(spec: KeySpec, hasher: &KeyHasher) -> Result<NewKey, getrandom::Error> {
    let secret = random_base62(SECRET_LEN)?;
    let key = match (spec.is_opaque(), spec.prefix.as_deref()) {
        (true, prefix) => format!("{}{secret}", prefix.unwrap_or_default()),
        (false, prefix) => format!("{}{}_{secret}", prefix.unwrap_or(DEFAULT_PREFIX), spec.account),
    };
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
            prefix: None,
            opaque: false,
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
    fn opaque_keys_leave_the_account_out_and_keep_it_in_the_record() {
        let hasher = KeyHasher::new(b"pepper").unwrap();
        let spec = |prefix: Option<&str>, opaque| KeySpec {
            prefix: prefix.map(str::to_owned),
            opaque,
            account: "acme".into(),
            org: "org_1".into(),
            scopes: vec![],
            plan: None,
            expires_at: None,
        };
        let bare = mint(spec(Some(""), false), &hasher).unwrap();
        assert!(bare.key.len() == SECRET_LEN && !bare.key.contains("acme"));
        assert_eq!(bare.record.account, "acme");
        let vendor = mint(spec(Some("acme_live_"), true), &hasher).unwrap();
        assert!(vendor.key.starts_with("acme_live_") && vendor.key.len() == 10 + SECRET_LEN);
        let headers = [("x-api-key", vendor.key.as_bytes())];
        let parsed = extract(&headers, &Prefixes::standard()).unwrap().unwrap().0;
        assert_eq!(parsed, Credential::ApiKey { key: &vendor.key, prefix_account: None });
        assert!(spec(Some("sk_live_"), true).check_form().is_err());
        assert!(spec(Some("sk live"), false).check_form().is_err());
        assert!(spec(None, true).check_form().is_ok() && spec(None, false).check_form().is_ok());
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
