//! Finding the one credential of a request (the contract's credential grammar).
//!
//! Every value of `authorization` and `x-api-key` is read: two values, a
//! comma-joined one, or a name spelled with `_`, are ambiguous, and ambiguity
//! is refused rather than resolved, so a bad credential can never fall back
//! to another one.

use crate::config::ConfigError;
use crate::text::same_header_name;
use std::fmt;

/// Longest accepted credential header value, in bytes (after trimming).
pub const MAX_VALUE_LEN: usize = 8 * 1024;

pub const AUTHORIZATION: &str = "authorization";
pub const X_API_KEY: &str = "x-api-key";

/// The key-prefix conventions of a policy, and what else a bearer token
/// may be.
#[derive(Debug, Clone)]
pub struct Prefixes {
    pub secret: Vec<String>,
    pub public: Vec<String>,
    /// `Bearer <opaque>` is an API key (`api_keys.opaque_bearer`).
    pub opaque_bearer: bool,
    /// The prefix of edge-issued session tokens (`sessions.prefix`).
    pub session: Option<String>,
}

impl Prefixes {
    /// The contract's default prefixes (a policy without `api_keys`).
    pub fn standard() -> Self {
        Self {
            secret: vec!["sk_live_".into(), "sk_test_".into()],
            public: vec!["pk_live_".into(), "pk_test_".into()],
            opaque_bearer: false,
            session: None,
        }
    }

    /// Checks a policy's prefixes: non-empty, visible, none a prefix of another.
    pub fn compile(
        secret: &[String],
        public: &[String],
        opaque_bearer: bool,
        session: Option<&String>,
    ) -> Result<Self, ConfigError> {
        let all = secret
            .iter()
            .enumerate()
            .map(|(i, p)| (format!("api_keys.secret_prefixes[{i}]"), p))
            .chain(public.iter().enumerate().map(|(i, p)| (format!("api_keys.public_prefixes[{i}]"), p)))
            .chain(session.map(|p| ("sessions.prefix".to_owned(), p)));
        let all: Vec<_> = all.collect();
        for (i, (at, prefix)) in all.iter().enumerate() {
            if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_graphic() && b != b',') {
                return Err(ConfigError::new(at.as_str(), "a prefix is non-empty visible ASCII"));
            }
            let clash = all.iter().enumerate().any(|(j, (_, other))| i != j && other.starts_with(prefix.as_str()));
            if clash {
                return Err(ConfigError::new(at.as_str(), format!("'{prefix}' overlaps another prefix")));
            }
        }
        Ok(Self { secret: secret.to_vec(), public: public.to_vec(), opaque_bearer, session: session.cloned() })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential<'a> {
    /// An API key. `prefix_account` is the account a secret-prefixed key names.
    ApiKey { key: &'a str, prefix_account: Option<&'a str> },
    /// A publishable key: an identifier, never a credential.
    Publishable,
    /// A compact JWS (three base64url parts; the signature may be empty, so
    /// unsigned tokens reach the verifier and are refused as invalid tokens).
    Jwt(&'a str),
    /// An edge-issued session token, prefix included.
    Session(&'a str),
}

/// Why a credential was refused as malformed; for logs, never for clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// More than one credential value (repeated, comma-joined, or both headers).
    Ambiguous,
    NotUtf8,
    Empty,
    TooLong,
    /// Control characters or whitespace inside the value.
    BadCharacter,
    UnknownScheme,
    /// A bearer token that is neither a prefixed key, a session token nor a
    /// JWT (and opaque bearer keys are off).
    UnrecognisedToken,
    /// A secret-prefixed key without `<account>_<secret>` after the prefix.
    KeyShape,
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Malformed::Ambiguous => "more than one credential, or a credential header spelled with _",
            Malformed::NotUtf8 => "not UTF-8",
            Malformed::Empty => "empty value",
            Malformed::TooLong => "value too long",
            Malformed::BadCharacter => "control character or inner whitespace",
            Malformed::UnknownScheme => "unsupported authorization scheme",
            Malformed::UnrecognisedToken => "bearer token is neither an API key nor a JWT",
            Malformed::KeyShape => "API key is not <prefix><account>_<secret>",
        })
    }
}

/// Which header a credential came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carrier {
    Authorization,
    XApiKey,
}

/// Finds the request's credential, if any, among all header values.
pub fn extract<'a, N, V>(
    headers: &'a [(N, V)],
    prefixes: &Prefixes,
) -> Result<Option<(Credential<'a>, Carrier)>, Malformed>
where
    N: AsRef<str>,
    V: AsRef<[u8]>,
{
    let mut found: Option<(&'a [u8], Carrier)> = None;
    for (name, value) in headers {
        let name = name.as_ref();
        let carrier = if same_header_name(name, AUTHORIZATION) {
            Carrier::Authorization
        } else if same_header_name(name, X_API_KEY) {
            Carrier::XApiKey
        } else {
            continue;
        };
        // `x_api_key` is `x-api-key` to some upstreams and another header to
        // others: a credential nobody can name for sure is ambiguous.
        if found.is_some() || name.contains('_') {
            return Err(Malformed::Ambiguous);
        }
        found = Some((value.as_ref(), carrier));
    }
    let Some((raw, carrier)) = found else {
        return Ok(None);
    };
    let value = clean_value(raw)?;
    let credential = match carrier {
        Carrier::Authorization => parse_authorization(value, prefixes)?,
        Carrier::XApiKey => parse_api_key(value, prefixes)?,
    };
    Ok(Some((credential, carrier)))
}

/// Checks size, encoding and characters; returns the value without the
/// surrounding whitespace.
fn clean_value(raw: &[u8]) -> Result<&str, Malformed> {
    let value = std::str::from_utf8(raw).map_err(|_| Malformed::NotUtf8)?;
    let value = value.trim_matches(|c| c == ' ' || c == '\t');
    if value.is_empty() {
        return Err(Malformed::Empty);
    }
    if value.len() > MAX_VALUE_LEN {
        return Err(Malformed::TooLong);
    }
    if value.contains(',') {
        return Err(Malformed::Ambiguous);
    }
    if !every_byte(value, |b| (b == b' ') | (b == b'\t') | b.is_ascii_graphic()) {
        return Err(Malformed::BadCharacter);
    }
    Ok(value)
}

fn parse_authorization<'a>(value: &'a str, prefixes: &Prefixes) -> Result<Credential<'a>, Malformed> {
    let (scheme, rest) = value.split_once([' ', '\t']).ok_or(Malformed::UnknownScheme)?;
    let token = rest.trim_start_matches([' ', '\t']);
    if token.is_empty() {
        return Err(Malformed::Empty);
    }
    if has_blank(token) {
        return Err(Malformed::BadCharacter);
    }
    if scheme.eq_ignore_ascii_case("bearer") {
        if let Some(credential) = parse_prefixed(token, prefixes)? {
            return Ok(credential);
        }
        if prefixes.session.as_deref().is_some_and(|p| token.starts_with(p)) {
            return Ok(Credential::Session(token));
        }
        if is_compact_jws(token) {
            return Ok(Credential::Jwt(token));
        }
        if prefixes.opaque_bearer {
            return Ok(Credential::ApiKey { key: token, prefix_account: None });
        }
        Err(Malformed::UnrecognisedToken)
    } else if scheme.eq_ignore_ascii_case("userkey") {
        parse_api_key(token, prefixes)
    } else {
        Err(Malformed::UnknownScheme)
    }
}

/// A key presented as a plain value (`x-api-key`, `UserKey`).
fn parse_api_key<'a>(key: &'a str, prefixes: &Prefixes) -> Result<Credential<'a>, Malformed> {
    if has_blank(key) {
        return Err(Malformed::BadCharacter);
    }
    Ok(parse_prefixed(key, prefixes)?.unwrap_or(Credential::ApiKey { key, prefix_account: None }))
}

/// Recognises publishable and secret-prefixed keys; `None` for anything else.
fn parse_prefixed<'a>(key: &'a str, prefixes: &Prefixes) -> Result<Option<Credential<'a>>, Malformed> {
    if prefixes.public.iter().any(|p| key.starts_with(p.as_str())) {
        return Ok(Some(Credential::Publishable));
    }
    let Some(rest) = prefixes.secret.iter().find_map(|p| key.strip_prefix(p.as_str())) else {
        return Ok(None);
    };
    // The secret has no `_`, so the account is everything before the last one.
    let (account, secret) = rest.rsplit_once('_').ok_or(Malformed::KeyShape)?;
    if secret.is_empty() {
        return Err(Malformed::KeyShape);
    }
    Ok(Some(Credential::ApiKey { key, prefix_account: Some(account) }))
}

fn is_compact_jws(token: &str) -> bool {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let base64url = |s: &str| every_byte(s, |b| b.is_ascii_alphanumeric() | (b == b'-') | (b == b'_'));
    !header.is_empty() && !payload.is_empty() && base64url(header) && base64url(payload) && base64url(signature)
}

/// A space or tab (two `memchr`s: far cheaper than a `char` search).
fn has_blank(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.contains(&b' ') || bytes.contains(&b'\t')
}

/// Whether every byte passes `keep`. A token is scanned several times per
/// request, and a loop that stops at the first failure cost 11 to 16
/// instructions a byte; one without branches the compiler vectorises.
fn every_byte(text: &str, keep: impl Fn(u8) -> bool) -> bool {
    text.bytes().fold(true, |all, b| all & keep(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefixes() -> Prefixes {
        Prefixes::standard()
    }

    fn parse(headers: &[(&str, &[u8])]) -> Result<Option<Credential<'static>>, Malformed> {
        // Leak the inputs so results can outlive the borrowed header slice in tests.
        let owned: &'static [(String, Vec<u8>)] =
            Box::leak(headers.iter().map(|(n, v)| (n.to_string(), v.to_vec())).collect::<Vec<_>>().into_boxed_slice());
        extract(owned, &prefixes()).map(|c| c.map(|(c, _)| c))
    }

    fn one(name: &str, value: &str) -> Result<Option<Credential<'static>>, Malformed> {
        parse(&[(name, value.as_bytes())])
    }

    fn key(key: &'static str, account: Option<&'static str>) -> Result<Option<Credential<'static>>, Malformed> {
        Ok(Some(Credential::ApiKey { key, prefix_account: account }))
    }

    #[test]
    fn no_credential_headers_means_none() {
        assert_eq!(parse(&[("host", b"x"), ("cookie", b"a=b")]), Ok(None));
    }

    #[test]
    fn bearer_secret_key_splits_account_at_last_underscore() {
        assert_eq!(one("authorization", "Bearer sk_live_acme_s3cr3t"), key("sk_live_acme_s3cr3t", Some("acme")));
        assert_eq!(one("Authorization", "bearer sk_test_big_co_x1"), key("sk_test_big_co_x1", Some("big_co")));
        assert_eq!(one("authorization", "Bearer sk_live__x"), key("sk_live__x", Some("")));
        assert_eq!(one("authorization", "Bearer sk_live_acme"), Err(Malformed::KeyShape));
        assert_eq!(one("authorization", "Bearer sk_live_acme_"), Err(Malformed::KeyShape));
    }

    #[test]
    fn userkey_and_x_api_key_accept_opaque_and_prefixed_keys() {
        assert_eq!(one("authorization", "UserKey opaque-123"), key("opaque-123", None));
        assert_eq!(one("authorization", "USERKEY sk_live_acme_s"), key("sk_live_acme_s", Some("acme")));
        assert_eq!(one("x-api-key", "  opaque-123\t"), key("opaque-123", None));
        assert_eq!(one("X-Api-Key", "sk_live_acme_s"), key("sk_live_acme_s", Some("acme")));
    }

    #[test]
    fn publishable_keys_are_recognised_everywhere() {
        for (name, value) in [
            ("authorization", "Bearer pk_live_acme_x"),
            ("authorization", "UserKey pk_test_acme_x"),
            ("x-api-key", "pk_live_anything"),
        ] {
            assert_eq!(one(name, value), Ok(Some(Credential::Publishable)), "{name}: {value}");
        }
    }

    #[test]
    fn jwt_shapes() {
        assert_eq!(one("authorization", "Bearer aGk.eyJ9.c2ln"), Ok(Some(Credential::Jwt("aGk.eyJ9.c2ln"))));
        assert_eq!(one("authorization", "Bearer aGk.eyJ9."), Ok(Some(Credential::Jwt("aGk.eyJ9."))));
        for bad in ["Bearer aGk.eyJ9", "Bearer a.b.c.d", "Bearer .b.c", "Bearer a+b.c.d", "Bearer opaque"] {
            assert_eq!(one("authorization", bad), Err(Malformed::UnrecognisedToken), "{bad}");
        }
    }

    #[test]
    fn opaque_bearer_keys_and_session_tokens() {
        let grammar = Prefixes { opaque_bearer: true, session: Some("st_".into()), ..Prefixes::standard() };
        let parse = |value: &'static str| {
            let headers: &'static [(&str, &[u8])] = Box::leak(Box::new([("authorization", value.as_bytes())]));
            extract(headers, &grammar).map(|c| c.map(|(c, _)| c))
        };
        assert_eq!(
            parse("Bearer opaque-123"),
            Ok(Some(Credential::ApiKey { key: "opaque-123", prefix_account: None }))
        );
        assert_eq!(parse("Bearer st_abc.def"), Ok(Some(Credential::Session("st_abc.def"))));
        // The other forms keep their meaning; the opaque reading is the last resort.
        assert_eq!(parse("Bearer aGk.eyJ9.c2ln"), Ok(Some(Credential::Jwt("aGk.eyJ9.c2ln"))));
        assert_eq!(parse("Bearer pk_live_x"), Ok(Some(Credential::Publishable)));
        assert_eq!(
            parse("Bearer sk_live_acme_s"),
            Ok(Some(Credential::ApiKey { key: "sk_live_acme_s", prefix_account: Some("acme") }))
        );
        // Off (the default), an opaque bearer token stays malformed.
        assert_eq!(one("authorization", "Bearer opaque-123"), Err(Malformed::UnrecognisedToken));
        let clash = Prefixes::compile(&["sk_".into()], &[], false, Some(&"sk_st_".to_owned())).unwrap_err();
        assert_eq!(clash.to_string(), "api_keys.secret_prefixes[0]: 'sk_' overlaps another prefix");
    }

    #[test]
    fn more_than_one_credential_is_ambiguous() {
        let cases: [&[(&str, &[u8])]; 4] = [
            &[("authorization", b"Bearer sk_live_a_b"), ("x-api-key", b"k")],
            &[("x-api-key", b"k1"), ("x-api-key", b"k2")],
            &[("authorization", b"UserKey k"), ("Authorization", b"UserKey k")],
            &[("x-api-key", b"k1, k2")],
        ];
        for headers in cases {
            assert_eq!(parse(headers), Err(Malformed::Ambiguous), "{headers:?}");
        }
        // A credential header that only some upstreams read as one is ambiguous, even alone.
        for name in ["x_api_key", "X_Api-Key", "x-api_key"] {
            assert_eq!(parse(&[(name, b"k".as_slice())]), Err(Malformed::Ambiguous), "{name}");
        }
        // Even when one of them is empty or broken: no fallback.
        assert_eq!(parse(&[("x-api-key", b""), ("authorization", b"UserKey k")]), Err(Malformed::Ambiguous));
    }

    #[test]
    fn unusual_values_are_malformed() {
        assert_eq!(one("x-api-key", "   "), Err(Malformed::Empty));
        assert_eq!(one("authorization", "Bearer"), Err(Malformed::UnknownScheme));
        assert_eq!(one("authorization", "Bearer   "), Err(Malformed::UnknownScheme));
        assert_eq!(one("authorization", "Basic dXNlcjpwdw=="), Err(Malformed::UnknownScheme));
        assert_eq!(one("authorization", "Bearer a b"), Err(Malformed::BadCharacter));
        assert_eq!(one("x-api-key", "a b"), Err(Malformed::BadCharacter));
        assert_eq!(one("x-api-key", "a\u{7f}b"), Err(Malformed::BadCharacter));
        assert_eq!(one("x-api-key", "a\u{1}b"), Err(Malformed::BadCharacter));
        assert_eq!(one("x-api-key", "clé"), Err(Malformed::BadCharacter));
        assert_eq!(parse(&[("x-api-key", b"\xff\xfe")]), Err(Malformed::NotUtf8));
        assert_eq!(one("x-api-key", &"k".repeat(MAX_VALUE_LEN + 1)), Err(Malformed::TooLong));
        let longest: &'static str = "k".repeat(MAX_VALUE_LEN).leak();
        assert_eq!(one("x-api-key", longest), key(longest, None));
    }
}
