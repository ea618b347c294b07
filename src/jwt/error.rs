//! Why a token was refused, as typed values. Their `Display` is a short
//! phrase for logs: it never contains anything taken from the token.

use std::fmt;

/// Why a token was refused, by decision-table row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    /// Row 9: malformed, forged, not for us, or not yet valid.
    Invalid(Rejection),
    /// Row 9 too, but a fresh JWKS might know the key.
    UnknownKid,
    /// Row 10: past `exp` beyond the clock skew (or a negative `exp`).
    Expired,
}

/// The reason behind [`TokenError::Invalid`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    TooLong,
    /// Not three dot-separated parts.
    NotCompact,
    BadBase64,
    /// Header or payload is not a JSON object.
    BadJson,
    /// A member repeats at the top level of the header or the claims.
    DuplicateMember,
    /// A header member the filter reads has the wrong type.
    BadHeader,
    /// `typ` names something other than a JWT.
    NotAJwt,
    /// `none`, an unknown algorithm, or one the provider does not allow.
    AlgorithmNotAllowed,
    /// `jwk`, `jku`, `x5u`, `x5c`, `x5t` or `x5t#S256` in the header.
    KeyCarriedInToken,
    /// A non-empty `crit`.
    CriticalExtension,
    /// No key of the token's algorithm (and the token names no `kid`).
    NoKey,
    BadSignature,
    NoIssuer,
    UnknownIssuer,
    IssuerMismatch,
    NoAudience,
    AudienceMismatch,
    NotYetValid,
    IssuedInFuture,
    MissingExp,
    /// `exp`, `nbf` or `iat` is not an integer in range (negative `nbf`/`iat` included).
    BadTimeClaim,
    /// `sub` absent or empty.
    MissingSub,
    UnusableClaim(Claim),
}

/// A claim whose value the filter cannot use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    Iss,
    Aud,
    Sub,
    /// The provider's `org_claim`.
    Org,
    /// The provider's `accounts_claim`.
    Accounts,
    /// The provider's `scopes_claim`.
    Scopes,
}

impl From<Rejection> for TokenError {
    fn from(why: Rejection) -> Self {
        TokenError::Invalid(why)
    }
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenError::Invalid(why) => why.fmt(f),
            TokenError::UnknownKid => f.write_str("unknown kid"),
            TokenError::Expired => f.write_str("expired"),
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            Rejection::TooLong => "token too long",
            Rejection::NotCompact => "not a compact jws",
            Rejection::BadBase64 => "bad base64url",
            Rejection::BadJson => "bad json",
            Rejection::DuplicateMember => "duplicate json member",
            Rejection::BadHeader => "malformed header member",
            Rejection::NotAJwt => "typ is not jwt",
            Rejection::AlgorithmNotAllowed => "algorithm not allowed",
            Rejection::KeyCarriedInToken => "key or key url carried in the token",
            Rejection::CriticalExtension => "critical header extension",
            Rejection::NoKey => "no key for the algorithm",
            Rejection::BadSignature => "bad signature",
            Rejection::NoIssuer => "no iss",
            Rejection::UnknownIssuer => "unknown issuer",
            Rejection::IssuerMismatch => "issuer mismatch",
            Rejection::NoAudience => "no aud",
            Rejection::AudienceMismatch => "audience mismatch",
            Rejection::NotYetValid => "not yet valid",
            Rejection::IssuedInFuture => "issued in the future",
            Rejection::MissingExp => "no exp",
            Rejection::BadTimeClaim => "exp, nbf or iat not an integer in range",
            Rejection::MissingSub => "no sub",
            Rejection::UnusableClaim(claim) => return write!(f, "unusable {claim} claim"),
        };
        f.write_str(text)
    }
}

impl fmt::Display for Claim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Claim::Iss => "iss",
            Claim::Aud => "aud",
            Claim::Sub => "sub",
            Claim::Org => "org",
            Claim::Accounts => "accounts",
            Claim::Scopes => "scopes",
        })
    }
}
