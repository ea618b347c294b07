//! From a parsed document to the immutable [`Policy`] every request reads.

use super::schema::{AuthDoc, IdentityHeaders, PolicyDoc, ProviderDoc, RouteDoc, SourceDoc};
use super::{ConfigError, Environment, Mode};
use crate::account::AccountRules;
use crate::api_key::{is_header_safe, KeyHasher, KeySet, RecordRules};
use crate::credential::{Prefixes, AUTHORIZATION, X_API_KEY};
use crate::jwt::{compile_jwks, Algorithm, Provider, VerifyKey};
use crate::rate_limit::{PlanId, Plans};
use crate::route::{Auth, CredentialKind, PathMatch, Route};
use std::collections::HashSet;
use std::time::Duration;

#[derive(Debug)]
pub struct Policy {
    pub mode: Mode,
    pub accounts: AccountRules,
    pub identity_headers: IdentityHeaders,
    pub strip_credentials: bool,
    pub prefixes: Prefixes,
    pub api_keys: Option<ApiKeys>,
    pub jwt_providers: Vec<Provider>,
    pub plans: Plans,
    pub default_plan: Option<PlanId>,
    pub jwt_plan: Option<PlanId>,
    pub routes: Vec<Route>,
}

#[derive(Debug)]
pub struct ApiKeys {
    pub hasher: KeyHasher,
    /// The inline keys and revocations of the policy.
    pub inline: KeySet,
    pub source: Option<Source>,
}

/// A document fetched from an Envoy cluster at an interval.
#[derive(Debug, Clone, PartialEq)]
pub struct Source {
    pub cluster: String,
    pub path: String,
    pub refresh: Duration,
}

pub const SHADOW_HEADER: &str = "x-edge-auth-shadow";

impl IdentityHeaders {
    /// Every header a client may not send: the identity ones and the shadow verdict.
    pub fn owned(&self) -> [&str; 7] {
        [&self.org, &self.account, &self.key_id, &self.subject, &self.scopes, &self.method, SHADOW_HEADER]
    }
}

const MIN_REFRESH: Duration = Duration::from_millis(50);
const MAX_REFRESH: Duration = Duration::from_secs(86_400);
const MAX_CLOCK_SKEW_S: u64 = 3_600;

impl Policy {
    pub fn compile(doc: &PolicyDoc, env: &dyn Environment) -> Result<Self, ConfigError> {
        if doc.api_keys.is_none() && doc.jwt.is_none() {
            return Err(ConfigError::new("config", "needs a credential source: api_keys or jwt"));
        }
        let accounts = AccountRules::new(&doc.account_pattern, doc.reserved_accounts.iter().cloned())
            .map_err(|e| ConfigError::new("account_pattern", format!("invalid regular expression: {e}")))?;
        let identity_headers = compile_identity_headers(&doc.identity_headers)?;

        let plans = match &doc.rate_limits {
            Some(rl) => Plans::compile(&rl.plans)?,
            None => Plans::default(),
        };
        let plan_ref = |name: &Option<String>, field: &str| -> Result<Option<PlanId>, ConfigError> {
            name.as_ref()
                .map(|n| plans.id(n).ok_or_else(|| ConfigError::new(field, format!("unknown plan '{n}'"))))
                .transpose()
        };
        let rl = doc.rate_limits.as_ref();
        let default_plan = plan_ref(&rl.and_then(|r| r.default_plan.clone()), "rate_limits.default_plan")?;
        let jwt_plan = plan_ref(&rl.and_then(|r| r.jwt_plan.clone()), "rate_limits.jwt_plan")?;

        let (prefixes, api_keys) = match &doc.api_keys {
            None => (default_prefixes(), None),
            Some(ak) => {
                let prefixes = Prefixes { secret: ak.secret_prefixes.clone(), public: ak.public_prefixes.clone() };
                check_prefixes(&prefixes)?;
                let pepper = env.var(&ak.pepper_env).filter(|p| !p.is_empty()).ok_or_else(|| {
                    ConfigError::new(
                        "api_keys.pepper_env",
                        format!("environment variable {} is missing or empty", ak.pepper_env),
                    )
                })?;
                let hasher = KeyHasher::new(pepper.as_bytes())
                    .map_err(|_| ConfigError::new("api_keys.pepper_env", "unusable pepper"))?;
                let rules = RecordRules { account_ok: &|a| accounts.is_valid(a), plans: &plans };
                let inline = KeySet::build(&ak.keys, &ak.revoked, &rules, "api_keys")?;
                let source = ak.source.as_ref().map(|s| compile_source(s, "api_keys.source", 1.0)).transpose()?;
                (prefixes, Some(ApiKeys { hasher, inline, source }))
            }
        };

        let jwt_providers = match &doc.jwt {
            None => Vec::new(),
            Some(jwt) => compile_providers(&jwt.providers)?,
        };

        let routes = doc
            .routes
            .iter()
            .enumerate()
            .map(|(i, r)| compile_route(r, &format!("routes[{i}]")))
            .collect::<Result<_, _>>()?;

        Ok(Policy {
            mode: doc.mode,
            accounts,
            identity_headers,
            strip_credentials: doc.strip_credentials,
            prefixes,
            api_keys,
            jwt_providers,
            plans,
            default_plan,
            jwt_plan,
            routes,
        })
    }
}

fn default_prefixes() -> Prefixes {
    Prefixes { secret: vec!["sk_live_".into(), "sk_test_".into()], public: vec!["pk_live_".into(), "pk_test_".into()] }
}

fn check_prefixes(prefixes: &Prefixes) -> Result<(), ConfigError> {
    let all = prefixes
        .secret
        .iter()
        .enumerate()
        .map(|(i, p)| (format!("api_keys.secret_prefixes[{i}]"), p))
        .chain(prefixes.public.iter().enumerate().map(|(i, p)| (format!("api_keys.public_prefixes[{i}]"), p)));
    let all: Vec<_> = all.collect();
    for (i, (path, prefix)) in all.iter().enumerate() {
        if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_graphic() && b != b',') {
            return Err(ConfigError::new(path.as_str(), "a prefix is non-empty visible ASCII"));
        }
        let clash = all.iter().enumerate().any(|(j, (_, other))| i != j && other.starts_with(prefix.as_str()));
        if clash {
            return Err(ConfigError::new(path.as_str(), format!("'{prefix}' overlaps another prefix")));
        }
    }
    Ok(())
}

/// A header name we may set: lower-case token characters, not one Envoy or
/// the credential grammar owns.
fn check_header_name(name: &str, path: &str) -> Result<(), ConfigError> {
    let token = !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !token {
        return Err(ConfigError::new(path, "a header name is lower-case letters, digits and '-'"));
    }
    const RESERVED: [&str; 8] =
        [AUTHORIZATION, X_API_KEY, "host", "content-length", "content-type", "transfer-encoding", "connection", "te"];
    if RESERVED.contains(&name) {
        return Err(ConfigError::new(path, format!("'{name}' cannot be an identity header")));
    }
    Ok(())
}

fn compile_identity_headers(doc: &IdentityHeaders) -> Result<IdentityHeaders, ConfigError> {
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
        let path = format!("identity_headers.{field}");
        check_header_name(name, &path)?;
        if name == super::compile::SHADOW_HEADER || !seen.insert(name.as_str()) {
            return Err(ConfigError::new(path, format!("'{name}' is already used")));
        }
    }
    Ok(doc.clone())
}

fn compile_source(doc: &SourceDoc, path: &str, default_refresh_s: f64) -> Result<Source, ConfigError> {
    if doc.cluster.is_empty() {
        return Err(ConfigError::new(format!("{path}.cluster"), "names the Envoy cluster to fetch from"));
    }
    if !doc.path.starts_with('/') || !is_header_safe(&doc.path) || doc.path.contains(' ') {
        return Err(ConfigError::new(format!("{path}.path"), "an absolute request path like /v1/keys"));
    }
    let seconds = doc.refresh_s.unwrap_or(default_refresh_s);
    let refresh = Duration::try_from_secs_f64(seconds)
        .ok()
        .filter(|d| (MIN_REFRESH..=MAX_REFRESH).contains(d))
        .ok_or_else(|| {
            ConfigError::new(
                format!("{path}.refresh_s"),
                format!("must be {} to {} seconds", MIN_REFRESH.as_secs_f64(), MAX_REFRESH.as_secs()),
            )
        })?;
    Ok(Source { cluster: doc.cluster.clone(), path: doc.path.clone(), refresh })
}

fn compile_providers(docs: &[ProviderDoc]) -> Result<Vec<Provider>, ConfigError> {
    if docs.is_empty() {
        return Err(ConfigError::new("jwt.providers", "needs at least one provider"));
    }
    let mut names = HashSet::new();
    let mut issuers = HashSet::new();
    let mut providers = Vec::with_capacity(docs.len());
    for (i, doc) in docs.iter().enumerate() {
        let at = |field: &str| format!("jwt.providers[{i}].{field}");
        if doc.name.is_empty() || !names.insert(doc.name.as_str()) {
            return Err(ConfigError::new(at("name"), "needs a unique, non-empty name"));
        }
        // The token's `iss` chooses the provider, so issuers must be unique.
        if doc.issuer.is_empty() || !issuers.insert(doc.issuer.as_str()) {
            return Err(ConfigError::new(at("issuer"), "needs a unique, non-empty issuer"));
        }
        if doc.algorithms.is_empty() {
            return Err(ConfigError::new(at("algorithms"), "needs at least one algorithm"));
        }
        let algorithms = doc
            .algorithms
            .iter()
            .enumerate()
            .map(|(j, a)| {
                Algorithm::parse(a).ok_or_else(|| {
                    ConfigError::new(
                        at(&format!("algorithms[{j}]")),
                        format!("'{a}' is not one of HS256, RS256, ES256"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if doc.jwks.is_none() && doc.jwks_source.is_none() {
            return Err(ConfigError::new(at("jwks"), "a provider needs jwks, jwks_source, or both"));
        }
        let keys = match &doc.jwks {
            Some(set) => compile_jwks(set, &at("jwks"))?
                .iter()
                .enumerate()
                .map(|(j, jwk)| {
                    VerifyKey::new(jwk).map_err(|why| ConfigError::new(at(&format!("jwks.keys[{j}]")), why))
                })
                .collect::<Result<_, _>>()?,
            None => Vec::new(),
        };
        let jwks_source = doc.jwks_source.as_ref().map(|s| compile_source(s, &at("jwks_source"), 300.0)).transpose()?;
        for (field, claim) in [
            ("org_claim", &doc.org_claim),
            ("accounts_claim", &doc.accounts_claim),
            ("scopes_claim", &doc.scopes_claim),
        ] {
            if claim.is_empty() {
                return Err(ConfigError::new(at(field), "names a claim"));
            }
        }
        if let Some(header) = &doc.account_header {
            check_header_name(header, &at("account_header"))?;
        }
        if doc.clock_skew_s > MAX_CLOCK_SKEW_S {
            return Err(ConfigError::new(at("clock_skew_s"), format!("at most {MAX_CLOCK_SKEW_S} seconds")));
        }
        providers.push(Provider {
            name: doc.name.clone(),
            issuer: doc.issuer.clone(),
            audiences: doc.audiences.clone(),
            algorithms,
            keys,
            jwks_source,
            org_claim: doc.org_claim.clone(),
            accounts_claim: doc.accounts_claim.clone(),
            scopes_claim: doc.scopes_claim.clone(),
            account_header: doc.account_header.clone(),
            clock_skew_s: doc.clock_skew_s,
        });
    }
    Ok(providers)
}

fn compile_route(doc: &RouteDoc, at: &str) -> Result<Route, ConfigError> {
    let path = match (&doc.prefix, &doc.path) {
        (Some(p), None) => PathMatch::Prefix(p.clone()),
        (None, Some(p)) => PathMatch::Exact(p.clone()),
        _ => return Err(ConfigError::new(at, "needs exactly one of prefix and path")),
    };
    let (PathMatch::Prefix(text) | PathMatch::Exact(text)) = &path;
    if !text.starts_with('/') || text.contains(['?', '#']) || !is_header_safe(text) {
        let field = if doc.prefix.is_some() { "prefix" } else { "path" };
        return Err(ConfigError::new(format!("{at}.{field}"), "an absolute path without query or fragment"));
    }
    for (i, method) in doc.methods.iter().enumerate() {
        if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(ConfigError::new(format!("{at}.methods[{i}]"), "an upper-case HTTP method"));
        }
    }
    let credentials = doc
        .credentials
        .as_ref()
        .map(|kinds| {
            if kinds.is_empty() {
                return Err(ConfigError::new(format!("{at}.credentials"), "empty: no credential could pass"));
            }
            kinds
                .iter()
                .enumerate()
                .map(|(i, k)| {
                    CredentialKind::parse(k).ok_or_else(|| {
                        ConfigError::new(format!("{at}.credentials[{i}]"), format!("'{k}' is not api_key or jwt"))
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()?;
    for (i, scope) in doc.scopes.iter().enumerate() {
        if scope.is_empty() || !scope.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ConfigError::new(format!("{at}.scopes[{i}]"), "a scope is visible ASCII without spaces"));
        }
    }
    let auth = match doc.auth {
        AuthDoc::Required => Auth::Required,
        AuthDoc::Optional => Auth::Optional,
        AuthDoc::None => Auth::None,
    };
    if auth == Auth::None && (credentials.is_some() || !doc.scopes.is_empty() || doc.allow_reserved) {
        return Err(ConfigError::new(
            format!("{at}.auth"),
            "\"none\" never inspects credentials, so credentials, scopes and allow_reserved would be ignored",
        ));
    }
    Ok(Route {
        path,
        methods: doc.methods.clone(),
        auth,
        credentials,
        scopes: doc.scopes.clone(),
        allow_reserved: doc.allow_reserved,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::{parse, ConfigError, Environment, Mode};
    use crate::route::Auth;

    pub struct Pepper;
    impl Environment for Pepper {
        fn var(&self, name: &str) -> Option<String> {
            (name == "EDGE_AUTH_PEPPER").then(|| "test-pepper".to_owned())
        }
    }

    fn err(json: &str) -> String {
        parse(json.as_bytes(), &Pepper).unwrap_err().to_string()
    }

    const HASH: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn minimal_policy_gets_the_contract_defaults() {
        let policy = parse(br#"{"api_keys":{}}"#, &Pepper).unwrap();
        assert_eq!(policy.mode, Mode::Enforce);
        assert!(policy.accounts.is_valid("acme") && policy.accounts.is_reserved("kataven-admin"));
        assert_eq!(policy.identity_headers.org, "x-org-id");
        assert_eq!(policy.identity_headers.method, "x-auth-method");
        assert_eq!(policy.prefixes.secret, ["sk_live_", "sk_test_"]);
        assert!(!policy.strip_credentials && policy.routes.is_empty());
    }

    #[test]
    fn the_spec_example_compiles() {
        let example = include_str!("../../envoy/policy.json");
        let policy = parse(example.as_bytes(), &Pepper).unwrap();
        assert!(!policy.routes.is_empty());
        assert_eq!(policy.routes[0].auth, Auth::None);
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(err(r#"{}"#), "config: needs a credential source: api_keys or jwt");
        assert!(err(r#"{"api_keys":{},"routez":[]}"#).starts_with("routez: unknown field `routez`"));
        assert!(err(r#"{"api_keys":{"keys":[{"id":"a","hash":"x","org":"o","account":"a","scope":[]}]}}"#)
            .starts_with("api_keys.keys[0].scope: unknown field `scope`"));
        let bad_hash = format!(
            r#"{{"api_keys":{{"keys":[{{"id":"a","hash":"{HASH}","org":"o","account":"a"}},{{"id":"b","hash":"nothex","org":"o","account":"a"}}]}}}}"#
        );
        assert_eq!(err(&bad_hash), "api_keys.keys[1].hash: expected 64 hex characters");
        assert!(err(r#"{"api_keys":{},"account_pattern":"[a-"}"#)
            .starts_with("account_pattern: invalid regular expression"));
        assert!(err(r#"{"api_keys":{},"mode":"audit"}"#).starts_with("mode: unknown variant `audit`"));
        assert_eq!(
            err(r#"{"api_keys":{},"rate_limits":{"plans":{},"default_plan":"gold"}}"#),
            "rate_limits.default_plan: unknown plan 'gold'"
        );
        assert_eq!(
            err(r#"{"api_keys":{},"routes":[{"prefix":"/a","path":"/b"}]}"#),
            "routes[0]: needs exactly one of prefix and path"
        );
        assert_eq!(
            err(r#"{"api_keys":{},"routes":[{"prefix":"/a","credentials":["password"]}]}"#),
            "routes[0].credentials[0]: 'password' is not api_key or jwt"
        );
        assert!(err(r#"{"api_keys":{},"routes":[{"prefix":"/a","auth":"none","scopes":["x"]}]}"#)
            .starts_with("routes[0].auth:"));
        assert_eq!(
            err(r#"{"api_keys":{},"identity_headers":{"org":"authorization"}}"#),
            "identity_headers.org: 'authorization' cannot be an identity header"
        );
        assert_eq!(
            err(r#"{"api_keys":{},"identity_headers":{"org":"x-account-id"}}"#),
            "identity_headers.account: 'x-account-id' is already used"
        );
        assert_eq!(
            err(r#"{"api_keys":{"secret_prefixes":["sk_"],"public_prefixes":["sk_pub_"]}}"#),
            "api_keys.secret_prefixes[0]: 'sk_' overlaps another prefix"
        );
        assert_eq!(
            err(r#"{"api_keys":{"source":{"cluster":"k","path":"/keys","refresh_s":0.001}}}"#),
            "api_keys.source.refresh_s: must be 0.05 to 86400 seconds"
        );
        assert_eq!(
            err(r#"{"jwt":{"providers":[{"name":"a","issuer":"i","algorithms":["none"],"jwks":{"keys":[]}}]}}"#),
            "jwt.providers[0].algorithms[0]: 'none' is not one of HS256, RS256, ES256"
        );
        assert_eq!(
            err(r#"{"jwt":{"providers":[{"name":"a","issuer":"i"}]}}"#),
            "jwt.providers[0].jwks: a provider needs jwks, jwks_source, or both"
        );
        assert!(err(r#"{"api_keys":{}} {}"#).starts_with("config: trailing characters"));
        assert_eq!(err("{not json"), "config: key must be a string at line 1 column 2");
    }

    #[test]
    fn pepper_must_be_present_when_api_keys_are_configured() {
        struct Empty;
        impl Environment for Empty {
            fn var(&self, _: &str) -> Option<String> {
                Some(String::new())
            }
        }
        let e = parse(br#"{"api_keys":{"pepper_env":"MY_PEPPER"}}"#, &Empty).unwrap_err();
        assert_eq!(e, ConfigError::new("api_keys.pepper_env", "environment variable MY_PEPPER is missing or empty"));
        // A JWT-only policy needs no pepper.
        let jwt_only = r#"{"jwt":{"providers":[{"name":"a","issuer":"i","jwks":{"keys":[]}}]}}"#;
        assert!(parse(jwt_only.as_bytes(), &Empty).is_ok());
    }
}
