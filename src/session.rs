//! Edge-issued session tokens (the contract's "Session tokens").
//!
//! A token is `<prefix>` + base64url(payload) + `.` + base64url(tag), where
//! payload = version (1 byte) ‖ expiry (Unix seconds, u64 big-endian) ‖
//! nonce (12 random bytes) ‖ parent key id (UTF-8), and tag =
//! HMAC-SHA256(session key, domain ‖ payload). It names its parent key and
//! its expiry and nothing secret; the edge keeps no state for it. The
//! version byte lets a later format coexist with this one during a rollout.

use crate::config::{ConfigError, Environment, SessionsDoc};
use crate::path::canonical;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;

type HmacSha256 = Hmac<Sha256>;

/// The only format this build issues and accepts.
pub const VERSION: u8 = 1;
pub const NONCE_LEN: usize = 12;
/// Shortest session key: HMAC-SHA256's own strength.
pub const MIN_KEY_LEN: usize = 32;
/// Longest key id a token can name (a key with a longer id gets no session).
pub const MAX_KEY_ID_LEN: usize = 256;
/// Longest accepted ttl_s: a session is meant to be short-lived.
pub const MAX_TTL_S: u64 = 86_400;
/// Keeps these MACs apart from any other use of the same key.
const DOMAIN: &[u8] = b"edge-auth session token\0";
const HEAD_LEN: usize = 1 + 8 + NONCE_LEN;
const TAG_LEN: usize = 32;

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub key_id: String,
    /// Unix seconds from which the token is refused.
    pub expires_at: u64,
}

/// Why a token was refused; for logs, never for clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionError {
    /// Not `<prefix><base64url>.<base64url>` of the right sizes.
    Malformed,
    /// The tag is not this edge's under either key.
    BadSignature,
    /// Signed by this edge, in a format this build does not read.
    UnknownVersion,
    Expired,
    /// The parent key is no longer in any key set.
    UnknownKey,
}

impl fmt::Display for SessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SessionError::Malformed => "session token is malformed",
            SessionError::BadSignature => "session token signature does not verify",
            SessionError::UnknownVersion => "session token version unknown",
            SessionError::Expired => "session token expired",
            SessionError::UnknownKey => "session token names an unknown key",
        })
    }
}

/// The policy's `sessions`, compiled: where tokens are issued, for how
/// long, and the keys that sign and verify them.
pub struct Sessions {
    /// Canonical path where `POST` exchanges an API key for a token.
    pub path: String,
    pub ttl_s: u64,
    pub prefix: String,
    /// Signs and verifies.
    current: HmacSha256,
    /// Only verifies (a rotation in progress; its variable may be unset).
    previous: Option<HmacSha256>,
}

impl fmt::Debug for Sessions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sessions")
            .field("path", &self.path)
            .field("ttl_s", &self.ttl_s)
            .field("prefix", &self.prefix)
            .field("keys", &if self.previous.is_some() { 2 } else { 1 })
            .finish()
    }
}

fn session_key(env: &dyn Environment, name: &str, field: &str) -> Result<HmacSha256, ConfigError> {
    let at = format!("sessions.{field}");
    let value = env.var(name).unwrap_or_default();
    if value.len() < MIN_KEY_LEN {
        return Err(ConfigError::new(
            at,
            format!("environment variable {name} is missing or shorter than {MIN_KEY_LEN} bytes"),
        ));
    }
    <HmacSha256 as Mac>::new_from_slice(value.as_bytes()).map_err(|_| ConfigError::new(at, "unusable key"))
}

impl Sessions {
    /// Compiles `sessions` (the prefix is checked with the key prefixes; the
    /// route of `path` by the policy).
    pub fn compile(doc: &SessionsDoc, env: &dyn Environment) -> Result<Self, ConfigError> {
        if !doc.path.starts_with('/') || canonical(&doc.path).ok().as_deref() != Some(doc.path.as_str()) {
            return Err(ConfigError::new("sessions.path", "an absolute path in canonical form, without query"));
        }
        if !(1..=MAX_TTL_S).contains(&doc.ttl_s) {
            return Err(ConfigError::new("sessions.ttl_s", format!("must be 1 to {MAX_TTL_S} seconds")));
        }
        let current = session_key(env, &doc.key_env, "key_env")?;
        // Unset between rotations is normal: the variable can stay named in
        // the policy, and rotating is then a change of environment only.
        let previous = doc
            .previous_key_env
            .as_ref()
            .filter(|name| env.var(name).is_some_and(|value| !value.is_empty()))
            .map(|name| session_key(env, name, "previous_key_env"))
            .transpose()?;
        Ok(Self { path: doc.path.clone(), ttl_s: doc.ttl_s, prefix: doc.prefix.clone(), current, previous })
    }

    /// Whether a request asks for a token: `POST` on the path (canonical).
    pub fn is_exchange(&self, method: &str, path: &str) -> bool {
        method.eq_ignore_ascii_case("POST") && path == self.path
    }

    /// A token for `key_id` valid until `expires_at`; `None` for a key id
    /// too long to name.
    pub fn issue(&self, key_id: &str, expires_at: u64, nonce: [u8; NONCE_LEN]) -> Option<String> {
        if key_id.len() > MAX_KEY_ID_LEN {
            return None;
        }
        let mut payload = Vec::with_capacity(HEAD_LEN + key_id.len());
        payload.push(VERSION);
        payload.extend_from_slice(&expires_at.to_be_bytes());
        payload.extend_from_slice(&nonce);
        payload.extend_from_slice(key_id.as_bytes());
        let mut mac = self.current.clone();
        mac.update(DOMAIN);
        mac.update(&payload);
        let tag = mac.finalize().into_bytes();
        Some(format!("{}{}.{}", self.prefix, URL_SAFE_NO_PAD.encode(&payload), URL_SAFE_NO_PAD.encode(tag)))
    }

    /// Checks a token (prefix included): its shape, then its tag in
    /// constant time under the current key and then the previous one, and
    /// only then what it says.
    pub fn verify(&self, token: &str, now_s: u64) -> Result<Claims, SessionError> {
        let body = token.strip_prefix(self.prefix.as_str()).ok_or(SessionError::Malformed)?;
        let (payload, tag) = body.split_once('.').ok_or(SessionError::Malformed)?;
        // Bounded before decoding: the credential grammar caps values at 8 KiB.
        let payload = URL_SAFE_NO_PAD.decode(payload).map_err(|_| SessionError::Malformed)?;
        let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| SessionError::Malformed)?;
        if tag.len() != TAG_LEN || payload.len() <= HEAD_LEN || payload.len() > HEAD_LEN + MAX_KEY_ID_LEN {
            return Err(SessionError::Malformed);
        }
        let verifies = |key: &HmacSha256| {
            let mut mac = key.clone();
            mac.update(DOMAIN);
            mac.update(&payload);
            mac.verify_slice(&tag).is_ok()
        };
        if !verifies(&self.current) && !self.previous.as_ref().is_some_and(verifies) {
            return Err(SessionError::BadSignature);
        }
        let (head, key_id) = payload.split_at(HEAD_LEN);
        let [version, e0, e1, e2, e3, e4, e5, e6, e7, ..] = *head else {
            return Err(SessionError::Malformed);
        };
        if version != VERSION {
            return Err(SessionError::UnknownVersion);
        }
        let expires_at = u64::from_be_bytes([e0, e1, e2, e3, e4, e5, e6, e7]);
        let key_id = std::str::from_utf8(key_id).map_err(|_| SessionError::Malformed)?;
        if now_s >= expires_at {
            return Err(SessionError::Expired);
        }
        Ok(Claims { key_id: key_id.to_owned(), expires_at })
    }
}

/// Fresh randomness for a token's nonce (`None` if the host has none).
pub fn nonce() -> Option<[u8; NONCE_LEN]> {
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce).ok().map(|()| nonce)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::OnlyVars;

    const KEY: &str = "0123456789abcdef0123456789abcdef";
    const OLD: &str = "an older key, still thirty-two bytes long";
    const ENV: OnlyVars = OnlyVars(&[("SK", KEY), ("SK_OLD", OLD), ("SHORT", "too short")]);

    fn sessions(key: &str, previous: Option<&str>) -> Result<Sessions, ConfigError> {
        let doc = SessionsDoc {
            path: "/api/session".into(),
            ttl_s: 3600,
            prefix: "st_".into(),
            key_env: key.into(),
            previous_key_env: previous.map(str::to_owned),
        };
        Sessions::compile(&doc, &ENV)
    }

    #[test]
    fn issued_tokens_verify_until_they_expire() {
        let s = sessions("SK", None).unwrap();
        let token = s.issue("key_01", 1_000, [7; NONCE_LEN]).unwrap();
        assert!(token.starts_with("st_") && !token.contains(KEY));
        assert_eq!(s.verify(&token, 999), Ok(Claims { key_id: "key_01".into(), expires_at: 1_000 }));
        assert_eq!(s.verify(&token, 1_000), Err(SessionError::Expired));
        // Each nonce makes another token for the same grant.
        assert_ne!(token, s.issue("key_01", 1_000, [8; NONCE_LEN]).unwrap());
        assert!(s.issue(&"k".repeat(MAX_KEY_ID_LEN + 1), 1_000, [0; NONCE_LEN]).is_none());
    }

    #[test]
    fn tampered_or_foreign_tokens_are_refused() {
        let s = sessions("SK", None).unwrap();
        let token = s.issue("key_01", 1_000, [7; NONCE_LEN]).unwrap();
        let (payload, tag) = token.split_once('.').unwrap();
        // Another key id, expiry or version under the same tag.
        let forged = s.issue("key_02", 1_000, [7; NONCE_LEN]).unwrap();
        let forged_payload = forged.split_once('.').unwrap().0;
        assert_eq!(s.verify(&format!("{forged_payload}.{tag}"), 0), Err(SessionError::BadSignature));
        let mut flipped = tag.as_bytes().to_vec();
        flipped[0] = if flipped[0] == b'A' { b'B' } else { b'A' };
        let flipped = format!("{payload}.{}", String::from_utf8(flipped).unwrap());
        assert_eq!(s.verify(&flipped, 0), Err(SessionError::BadSignature));
        let other = sessions("SK_OLD", None).unwrap();
        assert_eq!(other.verify(&token, 0), Err(SessionError::BadSignature));
        for bad in [
            "st_",
            "st_abc",
            "st_.",
            "st_a.b",
            "xx_abc.def",
            &format!("{payload}.{tag}=="),
            &format!("{payload}x.{tag}"),
        ] {
            assert!(matches!(s.verify(bad, 0), Err(SessionError::Malformed | SessionError::BadSignature)), "{bad}");
        }
    }

    #[test]
    fn the_previous_key_still_verifies_during_a_rotation() {
        let old = sessions("SK_OLD", None).unwrap();
        let token = old.issue("key_01", 1_000, [1; NONCE_LEN]).unwrap();
        let rotated = sessions("SK", Some("SK_OLD")).unwrap();
        assert_eq!(rotated.verify(&token, 0).map(|c| c.key_id), Ok("key_01".into()));
        // New tokens are signed with the current key only.
        let fresh = rotated.issue("key_01", 1_000, [1; NONCE_LEN]).unwrap();
        assert_eq!(old.verify(&fresh, 0), Err(SessionError::BadSignature));
        assert!(sessions("SK", None).unwrap().verify(&fresh, 0).is_ok());
    }

    #[test]
    fn configuration_errors_name_the_field_never_the_key() {
        let err = sessions("SHORT", None).unwrap_err();
        assert_eq!(err.to_string(), "sessions.key_env: environment variable SHORT is missing or shorter than 32 bytes");
        let err = sessions("SK", Some("SHORT")).unwrap_err();
        assert!(err.to_string().starts_with("sessions.previous_key_env: environment variable SHORT"));
        // An unset previous key is no rotation in progress.
        assert!(sessions("SK", Some("NOPE")).is_ok());
        assert!(!format!("{:?}", sessions("SK", Some("SK_OLD")).unwrap()).contains(KEY));
    }
}
