//! The decision table's denials and the local replies they become, in the
//! public face the policy's `errors` map gives each code.

use crate::config::{ConfigError, ErrorFaceDoc};
use serde::Serialize;
use std::collections::BTreeMap;

/// A row of the contract's decision table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    MalformedPath,
    MalformedCredentials,
    MissingAuthentication,
    InvalidAccount,
    AccountHeaderRequired,
    InvalidApiKey,
    ExpiredApiKey,
    RevokedApiKey,
    InvalidToken,
    ExpiredToken,
    AccountMismatch,
    AccountForbidden,
    CredentialNotAllowed,
    InsufficientScope,
    RateLimited,
    AuthUnavailable,
    RateLimitUnavailable,
    MissingSignature,
    InvalidSignature,
}

impl Code {
    pub const ALL: [Code; 19] = [
        Code::MalformedPath,
        Code::MalformedCredentials,
        Code::MissingAuthentication,
        Code::InvalidAccount,
        Code::AccountHeaderRequired,
        Code::InvalidApiKey,
        Code::ExpiredApiKey,
        Code::RevokedApiKey,
        Code::InvalidToken,
        Code::ExpiredToken,
        Code::AccountMismatch,
        Code::AccountForbidden,
        Code::CredentialNotAllowed,
        Code::InsufficientScope,
        Code::RateLimited,
        Code::AuthUnavailable,
        Code::RateLimitUnavailable,
        Code::MissingSignature,
        Code::InvalidSignature,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Code::MalformedPath => "malformed_path",
            Code::MalformedCredentials => "malformed_credentials",
            Code::MissingAuthentication => "missing_authentication",
            Code::InvalidAccount => "invalid_account",
            Code::AccountHeaderRequired => "account_header_required",
            Code::InvalidApiKey => "invalid_api_key",
            Code::ExpiredApiKey => "expired_api_key",
            Code::RevokedApiKey => "revoked_api_key",
            Code::InvalidToken => "invalid_token",
            Code::ExpiredToken => "expired_token",
            Code::AccountMismatch => "account_mismatch",
            Code::AccountForbidden => "account_forbidden",
            Code::CredentialNotAllowed => "credential_not_allowed",
            Code::InsufficientScope => "insufficient_scope",
            Code::RateLimited => "rate_limited",
            Code::AuthUnavailable => "auth_unavailable",
            Code::RateLimitUnavailable => "rate_limit_unavailable",
            Code::MissingSignature => "missing_signature",
            Code::InvalidSignature => "invalid_signature",
        }
    }

    pub fn status(self) -> u32 {
        match self {
            Code::MalformedPath | Code::MalformedCredentials | Code::InvalidAccount | Code::AccountHeaderRequired => {
                400
            }
            Code::MissingAuthentication
            | Code::InvalidApiKey
            | Code::ExpiredApiKey
            | Code::InvalidToken
            | Code::ExpiredToken
            | Code::MissingSignature
            | Code::InvalidSignature => 401,
            Code::RevokedApiKey
            | Code::AccountMismatch
            | Code::AccountForbidden
            | Code::CredentialNotAllowed
            | Code::InsufficientScope => 403,
            Code::RateLimited => 429,
            Code::AuthUnavailable | Code::RateLimitUnavailable => 503,
        }
    }

    fn default_message(self) -> &'static str {
        match self {
            Code::MalformedPath => "The request path is malformed or could be read more than one way.",
            Code::MalformedCredentials => "The request carries a malformed or ambiguous credential.",
            Code::MissingAuthentication => "This endpoint requires an API key or a bearer token.",
            Code::InvalidAccount => "The account name is not valid.",
            Code::AccountHeaderRequired => "This token requires an account header.",
            Code::InvalidApiKey => "The API key is not valid.",
            Code::ExpiredApiKey => "The API key has expired.",
            Code::RevokedApiKey => "The API key has been revoked.",
            Code::InvalidToken => "The bearer token is not valid.",
            Code::ExpiredToken => "The bearer token has expired.",
            Code::AccountMismatch => "The token does not grant access to this account.",
            Code::AccountForbidden => "This account cannot use this endpoint.",
            Code::CredentialNotAllowed => "This endpoint does not accept this kind of credential.",
            Code::InsufficientScope => "The credential lacks a scope this endpoint requires.",
            Code::RateLimited => "Too many requests; retry later.",
            Code::AuthUnavailable => "Authentication is temporarily unavailable.",
            Code::RateLimitUnavailable => "Rate limiting is temporarily unavailable.",
            Code::MissingSignature => "This endpoint requires a signature header.",
            Code::InvalidSignature => "The request signature is not valid.",
        }
    }
}

/// Why a request is refused. Messages are fixed sentences: nothing the client
/// sent is ever echoed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub code: Code,
    pub message: &'static str,
    /// Whole seconds until a retry can succeed (429 only).
    pub retry_after: Option<u64>,
}

impl From<Code> for Denial {
    fn from(code: Code) -> Self {
        Self { code, message: code.default_message(), retry_after: None }
    }
}

impl Denial {
    pub fn with_message(code: Code, message: &'static str) -> Self {
        Self { message, ..Self::from(code) }
    }

    pub fn rate_limited(retry_after_s: u64) -> Self {
        Self { retry_after: Some(retry_after_s.max(1)), ..Self::from(Code::RateLimited) }
    }
}

/// A response the filter sends itself instead of forwarding the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u32,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

#[derive(Serialize)]
struct Body<'a> {
    error: ErrorBody<'a>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after: Option<u64>,
}

pub const REALM: &str = "edge-auth";

/// A code's public face as the policy restates it (`errors`); absent parts
/// keep the table's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Face {
    code: Option<String>,
    message: Option<String>,
    status: Option<u32>,
}

/// The policy's `errors` map, compiled: one face per code of the table.
/// Logs and metrics never see it; only replies do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorFaces {
    faces: [Face; Code::ALL.len()],
}

impl ErrorFaces {
    /// Compiles `errors`: keys are codes of the table, statuses 400–599,
    /// texts printable ASCII (they reach a header: `www-authenticate`).
    pub fn compile(doc: &BTreeMap<String, ErrorFaceDoc>) -> Result<Self, ConfigError> {
        let mut faces = Self::default();
        for (key, face) in doc {
            let at = |field: &str| format!("errors.{key}{field}");
            let slot = Code::ALL.iter().position(|c| c.as_str() == key).and_then(|i| faces.faces.get_mut(i));
            let Some(slot) = slot else {
                return Err(ConfigError::new(at(""), format!("'{key}' is not a code of the decision table")));
            };
            let printable = |text: &str| {
                !text.is_empty() && text.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
            };
            if face.code.as_deref().is_some_and(|c| !printable(c) || c.contains(' ')) {
                return Err(ConfigError::new(
                    at(".code"),
                    "non-empty printable ASCII without spaces, quotes or backslashes",
                ));
            }
            if face.message.as_deref().is_some_and(|m| !printable(m)) {
                return Err(ConfigError::new(
                    at(".message"),
                    "non-empty printable ASCII without quotes or backslashes",
                ));
            }
            if face.status.is_some_and(|s| !(400..=599).contains(&s)) {
                return Err(ConfigError::new(at(".status"), "an HTTP error status, 400 to 599"));
            }
            *slot = Face { code: face.code.clone(), message: face.message.clone(), status: face.status };
        }
        Ok(faces)
    }

    fn of(&self, code: Code) -> Option<&Face> {
        Code::ALL.iter().position(|&c| c == code).and_then(|i| self.faces.get(i))
    }
}

impl Denial {
    /// The reply a client sees, in the face `faces` gives this code.
    pub fn reply(&self, faces: &ErrorFaces) -> Reply {
        let face = faces.of(self.code);
        let code = face.and_then(|f| f.code.as_deref()).unwrap_or(self.code.as_str());
        let message = face.and_then(|f| f.message.as_deref()).unwrap_or(self.message);
        let status = face.and_then(|f| f.status).unwrap_or(self.code.status());
        let body = Body { error: ErrorBody { code, message, retry_after: self.retry_after } };
        // Serialising plain strings and integers cannot fail.
        let body = serde_json::to_string(&body).unwrap_or_default();
        let mut headers = vec![("content-type", "application/json".to_owned())];
        if status == 401 {
            headers.push(("www-authenticate", self.challenge(message)));
        }
        if let Some(seconds) = self.retry_after {
            headers.push(("retry-after", seconds.to_string()));
        }
        Reply { status, headers, body }
    }

    /// RFC 6750 §3: no error attribute when no credential was presented.
    fn challenge(&self, message: &str) -> String {
        match self.code {
            Code::MissingAuthentication | Code::MissingSignature => format!("Bearer realm=\"{REALM}\""),
            _ => format!("Bearer realm=\"{REALM}\", error=\"invalid_token\", error_description=\"{message}\""),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_the_contract_status() {
        let table: Vec<(&str, u32)> = Code::ALL.iter().map(|c| (c.as_str(), c.status())).collect();
        assert_eq!(
            table,
            [
                ("malformed_path", 400),
                ("malformed_credentials", 400),
                ("missing_authentication", 401),
                ("invalid_account", 400),
                ("account_header_required", 400),
                ("invalid_api_key", 401),
                ("expired_api_key", 401),
                ("revoked_api_key", 403),
                ("invalid_token", 401),
                ("expired_token", 401),
                ("account_mismatch", 403),
                ("account_forbidden", 403),
                ("credential_not_allowed", 403),
                ("insufficient_scope", 403),
                ("rate_limited", 429),
                ("auth_unavailable", 503),
                ("rate_limit_unavailable", 503),
                ("missing_signature", 401),
                ("invalid_signature", 401),
            ]
        );
    }

    #[test]
    fn replies_are_json_with_challenges_on_401() {
        let reply = Denial::from(Code::InvalidApiKey).reply(&ErrorFaces::default());
        assert_eq!(reply.status, 401);
        assert_eq!(reply.body, r#"{"error":{"code":"invalid_api_key","message":"The API key is not valid."}}"#);
        assert!(reply.headers.contains(&("content-type", "application/json".into())));
        assert!(reply.headers.iter().any(|(n, v)| *n == "www-authenticate" && v.contains("error=\"invalid_token\"")));

        let missing = Denial::from(Code::MissingAuthentication).reply(&ErrorFaces::default());
        assert!(missing.headers.contains(&("www-authenticate", "Bearer realm=\"edge-auth\"".into())));

        let forbidden = Denial::from(Code::AccountForbidden).reply(&ErrorFaces::default());
        assert!(forbidden.headers.iter().all(|(n, _)| *n != "www-authenticate"));
    }

    #[test]
    fn rate_limited_replies_carry_retry_after() {
        let denial = Denial { retry_after: Some(3), ..Denial::from(Code::RateLimited) };
        let reply = denial.reply(&ErrorFaces::default());
        assert_eq!(reply.status, 429);
        assert!(reply.body.ends_with(r#""retry_after":3}}"#));
        assert!(reply.headers.contains(&("retry-after", "3".into())));
    }

    fn faces(json: &str) -> Result<ErrorFaces, ConfigError> {
        ErrorFaces::compile(&serde_json::from_str(json).unwrap())
    }

    #[test]
    fn the_errors_map_restates_a_codes_public_face() {
        let faces = faces(
            r#"{"invalid_api_key":{"code":"INVALID_API_KEY","message":"API key is invalid or expired"},
                "missing_authentication":{"code":"unauthorized"},
                "rate_limited":{"status":503,"message":"Slow down"},
                "revoked_api_key":{"status":401}}"#,
        )
        .unwrap();
        let reply = Denial::from(Code::InvalidApiKey).reply(&faces);
        assert_eq!(reply.status, 401);
        assert_eq!(reply.body, r#"{"error":{"code":"INVALID_API_KEY","message":"API key is invalid or expired"}}"#);
        let challenge = reply.headers.iter().find(|(n, _)| *n == "www-authenticate").unwrap();
        assert!(challenge.1.contains("error_description=\"API key is invalid or expired\""));
        let missing = Denial::from(Code::MissingAuthentication).reply(&faces);
        assert!(missing.body.contains(r#""code":"unauthorized","message":"This endpoint requires"#));
        // 429 keeps its retry_after, whatever status it is restated as.
        let limited = Denial::rate_limited(4).reply(&faces);
        assert_eq!(limited.status, 503);
        assert_eq!(limited.body, r#"{"error":{"code":"rate_limited","message":"Slow down","retry_after":4}}"#);
        assert!(limited.headers.contains(&("retry-after", "4".into())));
        // A reply restated as 401 carries a challenge; untouched codes keep the table's face.
        assert!(Denial::from(Code::RevokedApiKey).reply(&faces).headers.iter().any(|(n, _)| *n == "www-authenticate"));
        assert_eq!(
            Denial::from(Code::ExpiredToken).reply(&faces),
            Denial::from(Code::ExpiredToken).reply(&ErrorFaces::default())
        );
    }

    #[test]
    fn the_errors_map_refuses_what_it_cannot_honour() {
        let err = |json: &str| faces(json).unwrap_err().to_string();
        assert_eq!(
            err(r#"{"invalid_key":{"code":"x"}}"#),
            "errors.invalid_key: 'invalid_key' is not a code of the decision table"
        );
        assert_eq!(
            err(r#"{"rate_limited":{"status":200}}"#),
            "errors.rate_limited.status: an HTTP error status, 400 to 599"
        );
        assert!(err(r#"{"rate_limited":{"message":"a \"quote\""}}"#).starts_with("errors.rate_limited.message:"));
        assert!(err(r#"{"rate_limited":{"code":""}}"#).starts_with("errors.rate_limited.code:"));
        assert!(serde_json::from_str::<ErrorFaceDoc>(r#"{"cod":"x"}"#).is_err());
    }
}
