//! The policy document as data: its serde schema, the configuration error
//! every compile step reports, and the environment secrets come from.
//!
//! This module imports nothing else from the crate; each domain compiles its
//! own part of the document and [`crate::policy`] assembles them.

mod schema;

pub use schema::*;

use std::fmt;

/// A configuration error: the field path and what is wrong with it. An empty
/// path means the document as a whole (a syntax error, no credential source).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self { path: path.into(), message: message.into() }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// Reads the environment of the process or VM (the pepper lives there).
pub trait Environment {
    fn var(&self, name: &str) -> Option<String>;
}

/// The real process environment (in Envoy: `vm_config.environment_variables`).
pub struct ProcessEnv;

impl Environment for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

/// Reads a policy document (the serde step alone), with errors naming the
/// field path.
pub fn parse_doc(json: &[u8]) -> Result<PolicyDoc, ConfigError> {
    let mut de = serde_json::Deserializer::from_slice(json);
    let doc: PolicyDoc = serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let path = err.path().to_string();
        // serde_path_to_error writes "." for the root and "?" for syntax errors.
        let path = match path.as_str() {
            "." | "?" => String::new(),
            _ => path,
        };
        ConfigError::new(path, err.into_inner().to_string())
    })?;
    de.end().map_err(|err| ConfigError::new("", err.to_string()))?;
    Ok(doc)
}
