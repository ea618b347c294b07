//! The decision table's denials and the local replies they become.

use serde::Serialize;

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
}

impl Code {
    pub const ALL: [Code; 17] = [
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
            | Code::ExpiredToken => 401,
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

impl Denial {
    pub fn reply(&self) -> Reply {
        let body = Body {
            error: ErrorBody { code: self.code.as_str(), message: self.message, retry_after: self.retry_after },
        };
        // Serialising plain strings and integers cannot fail.
        let body = serde_json::to_string(&body).unwrap_or_default();
        let mut headers = vec![("content-type", "application/json".to_owned())];
        if self.code.status() == 401 {
            headers.push(("www-authenticate", self.challenge()));
        }
        if let Some(seconds) = self.retry_after {
            headers.push(("retry-after", seconds.to_string()));
        }
        Reply { status: self.code.status(), headers, body }
    }

    /// RFC 6750 §3: no error attribute when no credential was presented.
    fn challenge(&self) -> String {
        match self.code {
            Code::MissingAuthentication => format!("Bearer realm=\"{REALM}\""),
            _ => format!("Bearer realm=\"{REALM}\", error=\"invalid_token\", error_description=\"{}\"", self.message),
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
            ]
        );
    }

    #[test]
    fn replies_are_json_with_challenges_on_401() {
        let reply = Denial::from(Code::InvalidApiKey).reply();
        assert_eq!(reply.status, 401);
        assert_eq!(reply.body, r#"{"error":{"code":"invalid_api_key","message":"The API key is not valid."}}"#);
        assert!(reply.headers.contains(&("content-type", "application/json".into())));
        assert!(reply.headers.iter().any(|(n, v)| *n == "www-authenticate" && v.contains("error=\"invalid_token\"")));

        let missing = Denial::from(Code::MissingAuthentication).reply();
        assert!(missing.headers.contains(&("www-authenticate", "Bearer realm=\"edge-auth\"".into())));

        let forbidden = Denial::from(Code::AccountForbidden).reply();
        assert!(forbidden.headers.iter().all(|(n, _)| *n != "www-authenticate"));
    }

    #[test]
    fn rate_limited_replies_carry_retry_after() {
        let denial = Denial { retry_after: Some(3), ..Denial::from(Code::RateLimited) };
        let reply = denial.reply();
        assert_eq!(reply.status, 429);
        assert!(reply.body.ends_with(r#""retry_after":3}}"#));
        assert!(reply.headers.contains(&("retry-after", "3".into())));
    }
}
