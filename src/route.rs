//! Route rules, matched in order on the canonical path and the method.

use crate::config::{AuthDoc, ConfigError, RouteDoc};
use crate::path::{canonical, MalformedPath};
use crate::text::{is_header_safe, is_scope};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    Required,
    Optional,
    /// Never inspect credentials (identity headers are still stripped).
    None,
}

/// Credential kinds a route may restrict itself to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialKind {
    ApiKey,
    Jwt,
    /// An edge-issued session token.
    Session,
    /// A signed webhook call (never listed in `credentials`: a route names
    /// its webhook instead).
    Webhook,
}

impl CredentialKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialKind::ApiKey => "api_key",
            CredentialKind::Jwt => "jwt",
            CredentialKind::Session => "session",
            CredentialKind::Webhook => "webhook",
        }
    }

    /// The kinds a route's `credentials` may list.
    pub fn parse(text: &str) -> Option<Self> {
        [CredentialKind::ApiKey, CredentialKind::Jwt, CredentialKind::Session].into_iter().find(|k| k.as_str() == text)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    /// Whole path segments: `/v1/agents` matches `/v1/agents` and
    /// `/v1/agents/7`, never `/v1/agents-admin`.
    Prefix(String),
    Exact(String),
}

/// What metrics and logs call the route no rule matched.
pub const DEFAULT_ROUTE_LABEL: &str = "default";
const MAX_NAME_LEN: usize = 64;

#[derive(Debug)]
pub struct Route {
    /// `[a-z0-9_.-]`, unique: a metric label and the log's name for the route.
    pub name: Option<String>,
    pub path: PathMatch,
    /// Upper-case methods; empty means any.
    pub methods: Vec<String>,
    pub auth: Auth,
    /// `None` means any credential kind.
    pub credentials: Option<Vec<CredentialKind>>,
    pub scopes: Vec<String>,
    pub allow_reserved: bool,
    /// The policy's webhook (index) whose signature this route checks
    /// instead of credentials.
    pub webhook: Option<usize>,
}

/// What applies to a request no route matches.
pub static DEFAULT_ROUTE: Route = Route {
    name: None,
    path: PathMatch::Exact(String::new()),
    methods: Vec::new(),
    auth: Auth::Required,
    credentials: None,
    scopes: Vec::new(),
    allow_reserved: false,
    webhook: None,
};

impl Route {
    /// Compiles `routes[i]`; `at` names it in errors, `webhooks` are the
    /// names of the policy's webhooks.
    pub fn compile(doc: &RouteDoc, at: &str, webhooks: &[&str]) -> Result<Self, ConfigError> {
        if let Some(name) = &doc.name {
            let allowed = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b);
            if name.is_empty() || name.len() > MAX_NAME_LEN || !name.bytes().all(allowed) {
                return Err(ConfigError::new(
                    format!("{at}.name"),
                    format!("1 to {MAX_NAME_LEN} of a-z, 0-9, '_', '.', '-'"),
                ));
            }
            if name == DEFAULT_ROUTE_LABEL {
                return Err(ConfigError::new(format!("{at}.name"), "'default' names requests no route matches"));
            }
        }
        let path = match (&doc.prefix, &doc.path) {
            (Some(p), None) => PathMatch::Prefix(p.clone()),
            (None, Some(p)) => PathMatch::Exact(p.clone()),
            _ => return Err(ConfigError::new(at, "needs exactly one of prefix and path")),
        };
        let (PathMatch::Prefix(text) | PathMatch::Exact(text)) = &path;
        let field = if doc.prefix.is_some() { "prefix" } else { "path" };
        if !text.starts_with('/') || text.contains(['?', '#']) || !is_header_safe(text) {
            return Err(ConfigError::new(format!("{at}.{field}"), "an absolute path without query or fragment"));
        }
        // Requests match in canonical form, so a route spelled otherwise could never match.
        match canonical(text) {
            Ok(canonical) if canonical == text.as_str() => {}
            Ok(canonical) => {
                return Err(ConfigError::new(
                    format!("{at}.{field}"),
                    format!("write it as requests are matched: {canonical}"),
                ))
            }
            Err(why) => {
                return Err(ConfigError::new(format!("{at}.{field}"), format!("not a path a request can have: {why}")))
            }
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
                            ConfigError::new(
                                format!("{at}.credentials[{i}]"),
                                format!("'{k}' is not api_key, jwt or session"),
                            )
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?;
        for (i, scope) in doc.scopes.iter().enumerate() {
            if !is_scope(scope) {
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
        let webhook = match &doc.webhook {
            None => None,
            Some(name) => {
                let at = format!("{at}.webhook");
                if auth != Auth::Required || credentials.is_some() || !doc.scopes.is_empty() || doc.allow_reserved {
                    return Err(ConfigError::new(
                        at,
                        "a webhook route checks only its signature, so auth, credentials, scopes and \
                         allow_reserved would be ignored",
                    ));
                }
                let index = webhooks.iter().position(|w| w == name);
                Some(index.ok_or_else(|| ConfigError::new(at, format!("unknown webhook '{name}'")))?)
            }
        };
        Ok(Self {
            name: doc.name.clone(),
            path,
            methods: doc.methods.clone(),
            auth,
            credentials,
            scopes: doc.scopes.clone(),
            allow_reserved: doc.allow_reserved,
            webhook,
        })
    }

    /// Whether the route covers `path` (canonical) and `method`; with
    /// `fold_case`, letters in the path compare without case.
    fn matches(&self, path: &str, method: &str, fold_case: bool) -> bool {
        let same = |a: &str, b: &str| if fold_case { a.eq_ignore_ascii_case(b) } else { a == b };
        let path_ok = match &self.path {
            PathMatch::Exact(p) => same(path, p),
            PathMatch::Prefix(p) => match (path.get(..p.len()), path.get(p.len()..)) {
                (Some(head), Some(rest)) if same(head, p) => {
                    rest.is_empty() || p.ends_with('/') || rest.starts_with('/')
                }
                _ => false,
            },
        };
        path_ok && (self.methods.is_empty() || self.methods.iter().any(|m| covers(m, method)))
    }

    pub fn allows(&self, kind: CredentialKind) -> bool {
        self.credentials.as_ref().is_none_or(|kinds| kinds.contains(&kind))
    }
}

/// How metrics and logs name the route at `index` (`None`: no route
/// matched): its name, else `routes[i]`, else `default`.
pub fn label(routes: &[Route], index: Option<usize>) -> String {
    match index.map(|i| (i, routes.get(i).and_then(|r| r.name.as_deref()))) {
        Some((_, Some(name))) => name.to_owned(),
        Some((i, None)) => format!("routes[{i}]"),
        None => DEFAULT_ROUTE_LABEL.to_owned(),
    }
}

/// Compiles `routes`, whose names must be unique.
/// Compiles `routes`; `webhooks` are the names of the policy's webhooks.
pub fn compile_all(docs: &[RouteDoc], webhooks: &[&str]) -> Result<Vec<Route>, ConfigError> {
    let mut names = std::collections::HashSet::new();
    docs.iter()
        .enumerate()
        .map(|(i, doc)| {
            let at = format!("routes[{i}]");
            if doc.name.as_ref().is_some_and(|name| !names.insert(name)) {
                return Err(ConfigError::new(format!("{at}.name"), "duplicate route name"));
            }
            Route::compile(doc, &at, webhooks)
        })
        .collect()
}

/// Whether a configured (upper-case) method covers the request's. Methods
/// compare without case, since some upstreams upper-case them before
/// routing; and GET covers HEAD, which most frameworks serve with the GET
/// handler.
fn covers(configured: &str, method: &str) -> bool {
    configured.eq_ignore_ascii_case(method) || (configured == "GET" && method.eq_ignore_ascii_case("HEAD"))
}

/// The first route matching the request's canonical path (see
/// [`crate::path::canonical`]), as an index, or `None` for the default.
/// Refused when the route would change with the letters' case: some
/// upstreams route without case (Express by default, IIS), most with it.
pub fn find<'r>(routes: &'r [Route], path: &str, method: &str) -> Result<(Option<usize>, &'r Route), MalformedPath> {
    let first = |fold_case| routes.iter().position(|r| r.matches(path, method, fold_case));
    let index = first(false);
    if first(true) != index {
        return Err(MalformedPath::CaseDecidesRoute);
    }
    Ok(index.and_then(|i| routes.get(i).map(|r| (Some(i), r))).unwrap_or((None, &DEFAULT_ROUTE)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(path: PathMatch, methods: &[&str]) -> Route {
        Route {
            name: None,
            path,
            methods: methods.iter().map(|m| m.to_string()).collect(),
            auth: Auth::None,
            credentials: None,
            scopes: vec![],
            allow_reserved: false,
            webhook: None,
        }
    }

    impl Route {
        fn matches_exactly(&self, path: &str, method: &str) -> bool {
            self.matches(path, method, false)
        }
    }

    #[test]
    fn prefixes_match_whole_segments() {
        let r = route(PathMatch::Prefix("/api/accounts".into()), &[]);
        assert!(r.matches_exactly("/api/accounts", "GET"));
        assert!(r.matches_exactly("/api/accounts/7", "GET"));
        assert!(!r.matches_exactly("/api/accounts-internal", "GET"));
        assert!(!r.matches_exactly("/api", "GET"));
        let slash = route(PathMatch::Prefix("/static/".into()), &[]);
        assert!(slash.matches_exactly("/static/app.js", "GET"));
        let root = route(PathMatch::Prefix("/".into()), &[]);
        assert!(root.matches_exactly("/anything", "GET"));
    }

    #[test]
    fn methods_and_exact_paths() {
        let r = route(PathMatch::Exact("/health".into()), &["GET", "HEAD"]);
        assert!(r.matches_exactly("/health", "HEAD"));
        assert!(!r.matches_exactly("/health", "POST"));
        assert!(!r.matches_exactly("/health/x", "GET"));
    }

    #[test]
    fn get_covers_head_and_methods_ignore_case() {
        let r = route(PathMatch::Prefix("/v1".into()), &["GET"]);
        assert!(
            r.matches_exactly("/v1/x", "HEAD")
                && r.matches_exactly("/v1/x", "head")
                && r.matches_exactly("/v1/x", "get")
        );
        assert!(!r.matches_exactly("/v1/x", "POST"));
        let post = route(PathMatch::Prefix("/v1".into()), &["POST"]);
        assert!(post.matches_exactly("/v1/x", "post") && !post.matches_exactly("/v1/x", "HEAD"));
    }

    #[test]
    fn first_match_wins_and_default_requires_auth() {
        let routes = vec![route(PathMatch::Prefix("/a".into()), &["GET"]), route(PathMatch::Prefix("/a".into()), &[])];
        assert_eq!(find(&routes, "/a/x", "GET").unwrap().0, Some(0));
        assert_eq!(find(&routes, "/a/x", "POST").unwrap().0, Some(1));
        let (index, default) = find(&routes, "/b", "GET").unwrap();
        assert_eq!(index, None);
        assert_eq!(default.auth, Auth::Required);
    }

    #[test]
    fn a_route_that_depends_on_letter_case_is_refused() {
        let routes =
            vec![route(PathMatch::Prefix("/v1/admin".into()), &[]), route(PathMatch::Prefix("/v1/Docs".into()), &[])];
        assert_eq!(find(&routes, "/V1/Admin/x", "GET").unwrap_err(), MalformedPath::CaseDecidesRoute);
        assert_eq!(find(&routes, "/v1/docs", "GET").unwrap_err(), MalformedPath::CaseDecidesRoute);
        // Case that decides nothing is fine: both readings give the same route.
        assert_eq!(find(&routes, "/v1/admin/ABC", "GET").unwrap().0, Some(0));
        assert_eq!(find(&routes, "/Other/X", "GET").unwrap().0, None);
    }

    #[test]
    fn names_are_checked_unique_and_label_the_route() {
        let docs = |json: &str| serde_json::from_str::<Vec<RouteDoc>>(json).unwrap();
        let routes = compile_all(&docs(r#"[{"name":"agents.v1","prefix":"/a"},{"prefix":"/b"}]"#), &[]).unwrap();
        assert_eq!(label(&routes, Some(0)), "agents.v1");
        assert_eq!(label(&routes, Some(1)), "routes[1]");
        assert_eq!(label(&routes, None), "default");
        let err = |json: &str| compile_all(&docs(json), &[]).unwrap_err().to_string();
        assert_eq!(
            err(r#"[{"name":"a","prefix":"/a"},{"name":"a","prefix":"/b"}]"#),
            "routes[1].name: duplicate route name"
        );
        assert!(err(r#"[{"name":"Agents","prefix":"/a"}]"#).starts_with("routes[0].name: 1 to 64 of"));
        assert!(err(r#"[{"name":"","prefix":"/a"}]"#).starts_with("routes[0].name:"));
        assert!(err(r#"[{"name":"default","prefix":"/a"}]"#).starts_with("routes[0].name: 'default'"));
    }
}
