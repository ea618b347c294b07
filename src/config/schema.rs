//! The policy document exactly as users write it (serde layer).
//!
//! Every struct denies unknown fields: a typo must fail loudly rather than
//! silently disable a rule. Defaults are those of the product contract.
//! Nothing here is validated beyond its JSON shape; `compile` does that.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Enforce,
    Shadow,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyDoc {
    #[serde(default)]
    pub mode: Mode,
    #[serde(default = "default_account_pattern")]
    pub account_pattern: String,
    #[serde(default)]
    pub reserved_accounts: Vec<String>,
    #[serde(default)]
    pub identity_headers: IdentityHeadersDoc,
    #[serde(default)]
    pub strip_credentials: bool,
    /// Publish each decision and identity in Envoy's filter state
    /// (`wasm.edge_auth.*`) for access logs.
    #[serde(default)]
    pub access_log: bool,
    pub api_keys: Option<ApiKeysDoc>,
    pub jwt: Option<JwtDoc>,
    pub rate_limits: Option<RateLimitsDoc>,
    #[serde(default)]
    pub routes: Vec<RouteDoc>,
    /// Public faces of decision-table codes, by code.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub errors: BTreeMap<String, ErrorFaceDoc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sessions: Option<SessionsDoc>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub webhooks: Vec<WebhookDoc>,
}

/// What a client sees of a code: its `code`, `message` and status.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorFaceDoc {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u32>,
}

/// Edge-issued session tokens, exchanged for an API key at `path`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SessionsDoc {
    pub path: String,
    #[serde(default = "default_session_ttl_s")]
    pub ttl_s: u64,
    #[serde(default = "default_session_prefix")]
    pub prefix: String,
    #[serde(default = "default_session_key_env")]
    pub key_env: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_key_env: Option<String>,
}

fn default_session_ttl_s() -> u64 {
    3600
}

fn default_session_prefix() -> String {
    "st_".to_owned()
}

pub const DEFAULT_SESSION_KEY_ENV: &str = "EDGE_AUTH_SESSION_KEY";

fn default_session_key_env() -> String {
    DEFAULT_SESSION_KEY_ENV.to_owned()
}

/// How a webhook sender writes its signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SignatureFormatDoc {
    /// Hex HMAC-SHA256 of the raw body.
    #[default]
    Hex,
    /// Base64 HMAC-SHA256 of the raw body.
    Base64,
    /// `t=<unix>,v1=<hex>[,v1=<hex>…]` over `<t>.<body>`.
    Timestamped,
}

/// A webhook sender and the secret it signs bodies with.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookDoc {
    pub name: String,
    pub header: String,
    pub secret_env: String,
    #[serde(default)]
    pub format: SignatureFormatDoc,
    #[serde(default = "default_tolerance_s")]
    pub tolerance_s: u64,
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: u64,
}

fn default_tolerance_s() -> u64 {
    300
}

fn default_max_body_bytes() -> u64 {
    1024 * 1024
}

pub const DEFAULT_ACCOUNT_PATTERN: &str = "^[a-z0-9][a-z0-9_-]{0,62}$";

fn default_account_pattern() -> String {
    DEFAULT_ACCOUNT_PATTERN.to_owned()
}

/// Header names the filter owns: stripped from every request, then set.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityHeadersDoc {
    pub org: String,
    pub account: String,
    pub key_id: String,
    pub subject: String,
    pub scopes: String,
    pub method: String,
}

impl Default for IdentityHeadersDoc {
    fn default() -> Self {
        Self {
            org: "x-org-id".to_owned(),
            account: "x-account-id".to_owned(),
            key_id: "x-key-id".to_owned(),
            subject: "x-auth-subject".to_owned(),
            scopes: "x-auth-scopes".to_owned(),
            method: "x-auth-method".to_owned(),
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeysDoc {
    #[serde(default = "default_pepper_env")]
    pub pepper_env: String,
    #[serde(default = "default_secret_prefixes")]
    pub secret_prefixes: Vec<String>,
    #[serde(default = "default_public_prefixes")]
    pub public_prefixes: Vec<String>,
    #[serde(default)]
    pub keys: Vec<KeyRecordDoc>,
    #[serde(default)]
    pub revoked: Vec<String>,
    pub source: Option<SourceDoc>,
    /// `Authorization: Bearer <opaque>` is an API key (keys without an account).
    #[serde(default, skip_serializing_if = "is_false")]
    pub opaque_bearer: bool,
}

fn is_false(value: &bool) -> bool {
    !*value
}

pub const DEFAULT_PEPPER_ENV: &str = "EDGE_AUTH_PEPPER";

fn default_pepper_env() -> String {
    DEFAULT_PEPPER_ENV.to_owned()
}

fn default_secret_prefixes() -> Vec<String> {
    vec!["sk_live_".to_owned(), "sk_test_".to_owned()]
}

fn default_public_prefixes() -> Vec<String> {
    vec!["pk_live_".to_owned(), "pk_test_".to_owned()]
}

/// One API key as stored in a policy or served by a key server.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRecordDoc {
    pub id: String,
    pub hash: String,
    pub org: String,
    pub account: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

/// What changed in a key set since a version: applied in this order —
/// `remove` and `upsert` (a record replaces the key of the same id), then
/// `revoke` and `unrevoke`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KeyChangesDoc {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upsert: Vec<KeyRecordDoc>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revoke: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unrevoke: Vec<String>,
}

impl KeyChangesDoc {
    pub fn is_empty(&self) -> bool {
        self.upsert.is_empty() && self.remove.is_empty() && self.revoke.is_empty() && self.unrevoke.is_empty()
    }
}

/// Where a key set or JWKS is fetched from: an Envoy cluster and a path.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SourceDoc {
    pub cluster: String,
    pub path: String,
    pub refresh_s: Option<f64>,
    /// Long-poll wait asked of the server (`Prefer: wait`); 0 turns it off.
    pub wait_s: Option<f64>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JwtDoc {
    pub providers: Vec<ProviderDoc>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderDoc {
    pub name: String,
    pub issuer: String,
    #[serde(default)]
    pub audiences: Vec<String>,
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    pub jwks: Option<JwkSetDoc>,
    pub jwks_source: Option<SourceDoc>,
    #[serde(default = "default_org_claim")]
    pub org_claim: String,
    #[serde(default = "default_accounts_claim")]
    pub accounts_claim: String,
    #[serde(default = "default_scopes_claim")]
    pub scopes_claim: String,
    pub account_header: Option<String>,
    #[serde(default = "default_clock_skew_s")]
    pub clock_skew_s: u64,
}

fn default_algorithms() -> Vec<String> {
    vec!["RS256".to_owned(), "ES256".to_owned()]
}

fn default_org_claim() -> String {
    "org_id".to_owned()
}

fn default_accounts_claim() -> String {
    "accounts".to_owned()
}

fn default_scopes_claim() -> String {
    "scope".to_owned()
}

fn default_clock_skew_s() -> u64 {
    60
}

/// RFC 7517 JWK Set. Unknown JWK members are ignored, as the RFC requires.
#[derive(Debug, Deserialize, Serialize)]
pub struct JwkSetDoc {
    pub keys: Vec<JwkDoc>,
}

#[derive(Debug, Deserialize, Serialize)]
pub struct JwkDoc {
    pub kty: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
    #[serde(rename = "use", default, skip_serializing_if = "Option::is_none")]
    pub use_: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_ops: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k: Option<String>,
    /// An `oct` key's secret from this VM environment variable instead of `k`
    /// (an extension: HS256 secrets need not sit in the policy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k_env: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crv: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitsDoc {
    #[serde(default)]
    pub plans: BTreeMap<String, Vec<BucketDoc>>,
    pub default_plan: Option<String>,
    pub jwt_plan: Option<String>,
    /// The fleet-wide engine that charges `"scope": "global"` buckets.
    pub global: Option<GlobalDoc>,
}

/// Where a bucket's state lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ScopeDoc {
    /// Shared data: every worker of one Envoy.
    #[default]
    Local,
    /// The fleet-wide engine (Envoy's rate-limit service protocol).
    Global,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FailureModeDoc {
    /// Answer 503 `rate_limit_unavailable` when the engine cannot answer.
    #[default]
    Deny,
    /// Let the request through, counted.
    Allow,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GlobalDoc {
    /// The Envoy cluster (HTTP/2) of the rate-limit service.
    pub cluster: String,
    #[serde(default = "default_global_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default)]
    pub failure_mode: FailureModeDoc,
    /// Most tokens one lease may take (1: every request asks the engine).
    #[serde(default = "default_max_lease")]
    pub max_lease: u32,
}

fn default_max_lease() -> u32 {
    16
}

fn default_global_timeout_ms() -> u64 {
    50
}

#[derive(Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BucketDoc {
    pub name: String,
    pub requests: u64,
    pub per_s: u64,
    #[serde(default, skip_serializing_if = "is_local")]
    pub scope: ScopeDoc,
}

fn is_local(scope: &ScopeDoc) -> bool {
    *scope == ScopeDoc::Local
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AuthDoc {
    #[default]
    Required,
    Optional,
    None,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteDoc {
    /// Names the route in metrics and logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub prefix: Option<String>,
    pub path: Option<String>,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub auth: AuthDoc,
    pub credentials: Option<Vec<String>>,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub allow_reserved: bool,
    /// The webhook whose signature this route checks, instead of credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<String>,
}
