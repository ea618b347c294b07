//! Header names the filter owns: the identity it injects for upstream, the
//! shadow verdict, and the method overrides. A client may never send them, in
//! any spelling an upstream reads as the same name.

use crate::config::{ConfigError, IdentityHeadersDoc};
use crate::credential::{AUTHORIZATION, X_API_KEY};
use std::collections::HashSet;

/// Where shadow mode tells upstream the would-be verdict.
pub const SHADOW_HEADER: &str = "x-edge-auth-shadow";

/// Headers some frameworks take as the request's method: upstream must act
/// on the method that was authorised.
pub const METHOD_OVERRIDES: [&str; 3] = ["x-http-method-override", "x-http-method", "x-method-override"];

/// The identity headers, compiled: lower-case token names, all distinct.
#[derive(Debug, Clone)]
pub struct IdentityHeaders {
    pub org: String,
    pub account: String,
    pub key_id: String,
    pub subject: String,
    pub scopes: String,
    pub method: String,
}

impl IdentityHeaders {
    pub fn compile(doc: &IdentityHeadersDoc) -> Result<Self, ConfigError> {
        let fields = [
            ("org", &doc.org),
            ("account", &doc.account),
            ("key_id", &doc.key_id),
            ("subject", &doc.subject),
            ("scopes", &doc.scopes),
            ("method", &doc.method),
        ];
        let mut seen = HashSet::new();
        for (field, name) in fields {
            let at = format!("identity_headers.{field}");
            check_header_name(name, &at)?;
            let taken = name == SHADOW_HEADER || METHOD_OVERRIDES.contains(&name.as_str());
            if taken || !seen.insert(name.as_str()) {
                return Err(ConfigError::new(at, format!("'{name}' is already used")));
            }
        }
        Ok(Self {
            org: doc.org.clone(),
            account: doc.account.clone(),
            key_id: doc.key_id.clone(),
            subject: doc.subject.clone(),
            scopes: doc.scopes.clone(),
            method: doc.method.clone(),
        })
    }

    /// Every header a client may not send: the identity ones, the shadow
    /// verdict and the method overrides.
    pub fn owned(&self) -> impl Iterator<Item = &str> {
        [&self.org, &self.account, &self.key_id, &self.subject, &self.scopes, &self.method]
            .into_iter()
            .map(String::as_str)
            .chain([SHADOW_HEADER])
            .chain(METHOD_OVERRIDES)
    }
}

/// A header name the filter may set or read as configured: lower-case token
/// characters, not one Envoy or the credential grammar owns.
pub fn check_header_name(name: &str, at: &str) -> Result<(), ConfigError> {
    let token = !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !token {
        return Err(ConfigError::new(at, "a header name is lower-case letters, digits and '-'"));
    }
    const RESERVED: [&str; 8] =
        [AUTHORIZATION, X_API_KEY, "host", "content-length", "content-type", "transfer-encoding", "connection", "te"];
    if RESERVED.contains(&name) {
        return Err(ConfigError::new(at, format!("'{name}' cannot be an identity header")));
    }
    Ok(())
}
