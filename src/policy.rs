//! The immutable [`Policy`] every request reads, assembled from the parts
//! each domain compiles. The filter and `edge-auth policy check` both call
//! [`Policy::from_json`], so they accept and refuse exactly the same
//! documents with exactly the same messages.

use crate::account::AccountRules;
use crate::api_key::{ApiKeys, RecordRules};
use crate::config::{self, ConfigError, Environment, Mode, PolicyDoc};
use crate::credential::Prefixes;
use crate::denial::ErrorFaces;
use crate::headers::IdentityHeaders;
use crate::jwt::{compile_providers, Provider};
use crate::rate_limit::{Engine, PlanId, Plans};
use crate::route::{self, Auth, CredentialKind, Route};
use crate::session::Sessions;
use crate::webhook::{self, Webhook};

#[derive(Debug)]
pub struct Policy {
    pub mode: Mode,
    pub accounts: AccountRules,
    pub identity_headers: IdentityHeaders,
    pub strip_credentials: bool,
    /// Publish decisions for Envoy's access log.
    pub access_log: bool,
    pub prefixes: Prefixes,
    pub api_keys: Option<ApiKeys>,
    pub jwt_providers: Vec<Provider>,
    pub plans: Plans,
    pub default_plan: Option<PlanId>,
    pub jwt_plan: Option<PlanId>,
    /// The fleet-wide engine for global buckets.
    pub engine: Option<Engine>,
    pub routes: Vec<Route>,
    /// The public faces of the table's codes (`errors`).
    pub errors: ErrorFaces,
    pub sessions: Option<Sessions>,
    pub webhooks: Vec<Webhook>,
}

impl Policy {
    /// Reads and compiles a policy document.
    pub fn from_json(json: &[u8], env: &dyn Environment) -> Result<Self, ConfigError> {
        Self::compile(&config::parse_doc(json)?, env)
    }

    pub fn compile(doc: &PolicyDoc, env: &dyn Environment) -> Result<Self, ConfigError> {
        if doc.api_keys.is_none() && doc.jwt.is_none() {
            return Err(ConfigError::new("", "needs a credential source: api_keys or jwt"));
        }
        let accounts = AccountRules::new(&doc.account_pattern, doc.reserved_accounts.iter().cloned())
            .map_err(|e| ConfigError::new("account_pattern", format!("invalid regular expression: {e}")))?;
        let identity_headers = IdentityHeaders::compile(&doc.identity_headers)?;

        let engine = match doc.rate_limits.as_ref().and_then(|rl| rl.global.as_ref()) {
            Some(global) => Some(Engine::compile(global)?),
            None => None,
        };
        let plans = match &doc.rate_limits {
            Some(rl) => Plans::compile(&rl.plans, engine.is_some())?,
            None => Plans::default(),
        };
        let plan_ref = |name: Option<&String>, field: &str| -> Result<Option<PlanId>, ConfigError> {
            name.map(|n| plans.id(n).ok_or_else(|| ConfigError::new(field, format!("unknown plan '{n}'")))).transpose()
        };
        let rl = doc.rate_limits.as_ref();
        let default_plan = plan_ref(rl.and_then(|r| r.default_plan.as_ref()), "rate_limits.default_plan")?;
        let jwt_plan = plan_ref(rl.and_then(|r| r.jwt_plan.as_ref()), "rate_limits.jwt_plan")?;

        let errors = ErrorFaces::compile(&doc.errors)?;
        let sessions = match (&doc.sessions, &doc.api_keys) {
            (None, _) => None,
            (Some(_), None) => {
                return Err(ConfigError::new("sessions", "needs api_keys: sessions are exchanged for API keys"))
            }
            (Some(sessions), Some(_)) => Some(Sessions::compile(sessions, env)?),
        };
        let (prefixes, api_keys) = match &doc.api_keys {
            None => (Prefixes::standard(), None),
            Some(ak) => {
                let session_prefix = doc.sessions.as_ref().map(|s| &s.prefix);
                let prefixes =
                    Prefixes::compile(&ak.secret_prefixes, &ak.public_prefixes, ak.opaque_bearer, session_prefix)?;
                let rules = RecordRules { account_ok: &|a| accounts.is_valid(a), plans: &plans };
                (prefixes, Some(ApiKeys::compile(ak, env, &rules)?))
            }
        };

        let jwt_providers = match &doc.jwt {
            None => Vec::new(),
            Some(jwt) => compile_providers(&jwt.providers, env)?,
        };

        let webhooks = webhook::compile(&doc.webhooks, env)?;
        let names: Vec<&str> = webhooks.iter().map(|w| w.name.as_str()).collect();
        let routes = route::compile_all(&doc.routes, &names)?;
        if let Some(sessions) = &sessions {
            check_exchange_route(&routes, &sessions.path)?;
        }

        Ok(Policy {
            mode: doc.mode,
            accounts,
            identity_headers,
            strip_credentials: doc.strip_credentials,
            access_log: doc.access_log,
            prefixes,
            api_keys,
            jwt_providers,
            plans,
            default_plan,
            jwt_plan,
            engine,
            routes,
            errors,
            sessions,
            webhooks,
        })
    }
}

/// The route of `POST sessions.path` must let an API key through: it is
/// what a session is exchanged for.
fn check_exchange_route(routes: &[Route], path: &str) -> Result<(), ConfigError> {
    let (index, route) = route::find(routes, path, "POST")
        .map_err(|why| ConfigError::new("sessions.path", format!("not a path a request can have: {why}")))?;
    let name = index.map_or_else(|| "the default route".to_owned(), |i| format!("routes[{i}]"));
    if route.auth != Auth::Required || route.webhook.is_some() || !route.allows(CredentialKind::ApiKey) {
        return Err(ConfigError::new(
            "sessions.path",
            format!("{name} must require authentication and accept api_key: a session is exchanged for an API key"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Policy;
    use crate::config::{ConfigError, Environment, Mode};
    use crate::route::Auth;
    use crate::testing::{EveryVar, OnlyVars};

    fn parse(json: &[u8], env: &dyn Environment) -> Result<Policy, ConfigError> {
        Policy::from_json(json, env)
    }

    const PEPPER: OnlyVars = OnlyVars(&[("EDGE_AUTH_PEPPER", "test-pepper")]);

    fn err(json: &str) -> String {
        parse(json.as_bytes(), &PEPPER).unwrap_err().to_string()
    }

    const HASH: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn minimal_policy_gets_the_contract_defaults() {
        let policy = parse(br#"{"api_keys":{}}"#, &PEPPER).unwrap();
        assert_eq!(policy.mode, Mode::Enforce);
        assert!(policy.accounts.is_valid("acme") && !policy.accounts.is_reserved("kataven-admin"));
        assert_eq!(policy.identity_headers.org, "x-org-id");
        assert_eq!(policy.identity_headers.method, "x-auth-method");
        assert_eq!(policy.prefixes.secret, ["sk_live_", "sk_test_"]);
        assert!(!policy.strip_credentials && policy.routes.is_empty());
    }

    #[test]
    fn the_spec_example_compiles() {
        let example = include_str!("../envoy/policy.json");
        // The pepper and the demo provider's HS256 key (k_env), 32 bytes or more.
        let policy = parse(example.as_bytes(), &EveryVar("a-demo-secret-of-at-least-32-bytes")).unwrap();
        assert!(!policy.routes.is_empty());
        assert_eq!(policy.routes[0].auth, Auth::None);
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(err(r#"{}"#), "needs a credential source: api_keys or jwt");
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
            err(r#"{"api_keys":{},"routes":[{"prefix":"/v1/%61gents/./x"}]}"#),
            "routes[0].prefix: write it as requests are matched: /v1/agents/x"
        );
        assert_eq!(
            err(r#"{"api_keys":{},"routes":[{"path":"/a;b"}]}"#),
            "routes[0].path: not a path a request can have: ';' path parameter"
        );
        assert_eq!(
            err(r#"{"api_keys":{},"routes":[{"prefix":"/a","credentials":["password"]}]}"#),
            "routes[0].credentials[0]: 'password' is not api_key, jwt or session"
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
        assert!(err(r#"{"api_keys":{}} {}"#).starts_with("trailing characters"));
        assert_eq!(err("{not json"), "key must be a string at line 1 column 2");
    }

    #[test]
    fn issue_16_fields_are_checked_where_they_are_written() {
        const ENV: OnlyVars = OnlyVars(&[
            ("EDGE_AUTH_PEPPER", "test-pepper"),
            ("EDGE_AUTH_SESSION_KEY", "0123456789abcdef0123456789abcdef"),
            ("HOOK", "0123456789abcdef"),
        ]);
        let err = |json: &str| parse(json.as_bytes(), &ENV).unwrap_err().to_string();
        assert_eq!(
            err(r#"{"api_keys":{},"errors":{"nope":{}}}"#),
            "errors.nope: 'nope' is not a code of the decision table"
        );
        assert_eq!(
            err(r#"{"jwt":{"providers":[]},"sessions":{"path":"/s"}}"#),
            "sessions: needs api_keys: sessions are exchanged for API keys"
        );
        assert_eq!(
            err(r#"{"api_keys":{},"sessions":{"path":"/s","prefix":"sk_live_x"}}"#),
            "api_keys.secret_prefixes[0]: 'sk_live_' overlaps another prefix"
        );
        assert_eq!(
            err(r#"{"api_keys":{},"sessions":{"path":"/s"},"routes":[{"path":"/s","credentials":["jwt"]}]}"#),
            "sessions.path: routes[0] must require authentication and accept api_key: a session is exchanged for an API key"
        );
        assert!(err(r#"{"api_keys":{},"sessions":{"path":"/s","key_env":"NOPE"}}"#).starts_with("sessions.key_env:"));
        let hook = r#""webhooks":[{"name":"h","header":"x-sig","secret_env":"HOOK"}]"#;
        assert_eq!(
            err(&format!(r#"{{"api_keys":{{}},{hook},"routes":[{{"prefix":"/w","webhook":"g"}}]}}"#)),
            "routes[0].webhook: unknown webhook 'g'"
        );
        assert!(err(&format!(
            r#"{{"api_keys":{{}},{hook},"routes":[{{"prefix":"/w","webhook":"h","scopes":["a"]}}]}}"#
        ))
        .starts_with("routes[0].webhook: a webhook route checks only its signature"));
        let ok = format!(
            r#"{{"api_keys":{{"opaque_bearer":true}},"sessions":{{"path":"/s"}},{hook},
                "routes":[{{"prefix":"/w","webhook":"h"}},{{"path":"/x","credentials":["session"]}}]}}"#
        );
        let policy = parse(ok.as_bytes(), &ENV).unwrap();
        assert!(policy.prefixes.opaque_bearer && policy.prefixes.session.as_deref() == Some("st_"));
        assert_eq!(policy.routes[0].webhook, Some(0));
    }

    #[test]
    fn pepper_must_be_present_when_api_keys_are_configured() {
        const EMPTY: EveryVar = EveryVar("");
        let e = parse(br#"{"api_keys":{"pepper_env":"MY_PEPPER"}}"#, &EMPTY).unwrap_err();
        assert_eq!(e, ConfigError::new("api_keys.pepper_env", "environment variable MY_PEPPER is missing or empty"));
        // A JWT-only policy needs no pepper.
        let jwt_only = r#"{"jwt":{"providers":[{"name":"a","issuer":"i","jwks":{"keys":[]}}]}}"#;
        assert!(parse(jwt_only.as_bytes(), &EMPTY).is_ok());
    }
}
