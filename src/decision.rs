//! The contract's decision table, evaluated for one request.
//!
//! Deciding reads the policy and the request, and uses the [`Runtime`] for
//! what only the host has: the clock, the shared token buckets (charged here,
//! row 15), the fetched key sets and JWKS, and this worker's cache of verified
//! tokens (filled here). Nothing else is written.

use crate::api_key::{ApiKey, ApiKeys, Held, KeyIndex, KeySet, Lookup, RecordRules};
use crate::credential::{self, Credential, Malformed};
use crate::denial::{Code, Denial};
use crate::fetched::{self, Fetched};
use crate::jwt::{self, SignatureHost, TokenCache, TokenError, VerifiedToken};
use crate::path::{self, MalformedPath};
use crate::policy::Policy;
use crate::rate_limit::global::{Ask, Global};
use crate::rate_limit::lease::{self, Take};
use crate::rate_limit::{self, CallerId, Charge, ChargeResult, Placement, PlanId, Quota};
use crate::route::{self, Auth, CredentialKind, Route};
use crate::session::SessionError;
use crate::store::SharedStore;
use crate::text::same_header_name;
use crate::webhook::{self, Signature, WebhookError};
use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt;
use std::rc::Rc;

/// What the decision reads of a request.
pub struct Request<'a, N, V> {
    /// The HTTP method (`:method`).
    pub method: &'a str,
    /// `:path` as received; routes match its canonical form (see [`path`]).
    pub path: &'a str,
    /// Every request header, repeated names included.
    pub headers: &'a [(N, V)],
}

/// What the decision may ask of its host: the time, the shared token
/// buckets, and this worker's cache of verified tokens.
pub struct Runtime<'a, 'f> {
    /// Unix nanoseconds.
    pub now_ns: u64,
    pub store: &'a dyn SharedStore,
    pub tokens: &'a RefCell<TokenCache>,
    /// Key sets and JWKS fetched from the policy's sources.
    pub fetched: &'f Fetched,
    /// Native signature checks, where the host has them.
    pub signatures: &'a dyn SignatureHost,
    /// Where callers' buckets live; `None` if the process has no secret yet.
    pub placement: Option<&'a Placement>,
}

/// The authenticated caller, as upstream will see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity<'p> {
    /// A JWT without the org claim has none.
    pub org: Option<Cow<'p, str>>,
    /// A JWT provider without `account_header` names none.
    pub account: Option<Cow<'p, str>>,
    /// The key id, or the JWT `sub`.
    pub subject: Cow<'p, str>,
    /// Space-joined.
    pub scopes: Cow<'p, str>,
    /// Which kind of credential proved it (`x-auth-method`).
    pub kind: CredentialKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict<'p> {
    /// Forward; `None` is an anonymous caller (public or optional route).
    Allow(Option<Identity<'p>>),
    Deny(Denial),
}

/// Why a credential was refused, in more detail than its code; for logs,
/// never for clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detail {
    Path(MalformedPath),
    Malformed(Malformed),
    Token(TokenError),
    Session(SessionError),
    Webhook(WebhookError),
}

impl fmt::Display for Detail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Detail::Path(why) => why.fmt(f),
            Detail::Malformed(why) => why.fmt(f),
            Detail::Token(why) => why.fmt(f),
            Detail::Session(why) => why.fmt(f),
            Detail::Webhook(why) => why.fmt(f),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision<'p> {
    /// Index of the matched route; `None` is the default route.
    pub route: Option<usize>,
    pub verdict: Verdict<'p>,
    /// The key id once a key is known, for logs (never the key).
    pub key_id: Option<Cow<'p, str>>,
    /// Why the credential was refused, when the code alone does not say.
    pub detail: Option<Detail>,
    /// The local rate-limit step, when the caller's plan has local buckets.
    pub rate: Option<ChargeResult>,
    /// What is left to the fleet-wide engine, when the plan has global buckets.
    pub global: Option<Global>,
    /// An allowed `POST sessions.path`: answer with this session token
    /// instead of forwarding.
    pub issue: Option<Grant<'p>>,
    /// A webhook route: the verdict is `invalid_signature` until the body
    /// passes this check ([`BodyCheck`]).
    pub body: Option<BodyCheck>,
}

/// A session token to issue: its parent key and expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant<'p> {
    pub key_id: Cow<'p, str>,
    /// Unix seconds.
    pub expires_at: u64,
}

/// What a webhook route still has to check once the body is in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyCheck {
    /// Index of the policy's webhook.
    pub hook: usize,
    pub route: Option<usize>,
    /// Refuse as soon as the body grows past this.
    pub max_body_bytes: u64,
    pub signature: Signature,
}

impl<'p> Decision<'p> {
    /// A decision on `route` with only its verdict known.
    pub fn new(route: Option<usize>, verdict: Verdict<'p>) -> Self {
        Self { route, verdict, key_id: None, detail: None, rate: None, global: None, issue: None, body: None }
    }

    /// The caller's most constrained bucket, for `x-ratelimit-*`.
    pub fn quota(&self) -> Option<Quota> {
        match self.rate?.charge {
            Charge::Admitted(quota) | Charge::Limited { quota, .. } => Some(quota),
            Charge::TableFull { .. } | Charge::Contended => None,
        }
    }
}

/// The route a request matched, and its index for logs (`None`: the default).
#[derive(Clone, Copy)]
struct Matched<'p> {
    index: Option<usize>,
    route: &'p Route,
    /// `POST sessions.path`: only an API key may pass.
    exchange: bool,
}

impl<'p> Matched<'p> {
    fn decide(self, verdict: Verdict<'p>) -> Decision<'p> {
        Decision::new(self.index, verdict)
    }

    fn deny(self, denial: impl Into<Denial>) -> Decision<'p> {
        self.decide(Verdict::Deny(denial.into()))
    }
}

/// Decides a request.
pub fn decide<'p, N, V>(policy: &'p Policy, request: &Request<'_, N, V>, runtime: &Runtime<'_, 'p>) -> Decision<'p>
where
    N: AsRef<str>,
    V: AsRef<[u8]>,
{
    // Row 0: routes hold for the path as upstream will read it, or not at all.
    let found = path::canonical(request.path).and_then(|path| {
        let exchange = policy.sessions.as_ref().is_some_and(|s| s.is_exchange(request.method, &path));
        route::find(&policy.routes, &path, request.method).map(|(index, route)| Matched { index, route, exchange })
    });
    let on = match found {
        Ok(found) => found,
        Err(why) => {
            let denial = Verdict::Deny(Code::MalformedPath.into());
            return Decision { detail: Some(Detail::Path(why)), ..Decision::new(None, denial) };
        }
    };
    let route = on.route;
    if let Some(hook) = route.webhook {
        return check_webhook_headers(policy, on, hook, request.headers);
    }
    if route.auth == Auth::None {
        return on.decide(Verdict::Allow(None));
    }
    let credential = match credential::extract(request.headers, &policy.prefixes) {
        Err(why) => return Decision { detail: Some(Detail::Malformed(why)), ..on.deny(Code::MalformedCredentials) },
        Ok(None) if route.auth == Auth::Optional => return on.decide(Verdict::Allow(None)),
        Ok(None) => return on.deny(Code::MissingAuthentication),
        Ok(Some((credential, _))) => credential,
    };
    match credential {
        Credential::ApiKey { key, prefix_account } => match check_api_key(policy, runtime, key, prefix_account) {
            Ok(key) => admit_key(policy, on, key, CredentialKind::ApiKey, runtime),
            Err((key_id, denial)) => Decision { key_id, ..on.deny(denial) },
        },
        Credential::Session(token) => match check_session(policy, runtime, token) {
            Ok(key) => admit_key(policy, on, key, CredentialKind::Session, runtime),
            Err((key_id, denial, detail)) => {
                Decision { key_id, detail: detail.map(Detail::Session), ..on.deny(denial) }
            }
        },
        Credential::Publishable => on.deny(Denial::with_message(
            Code::InvalidApiKey,
            "Publishable keys identify an account; they cannot authenticate a request.",
        )),
        Credential::Jwt(token) => match check_jwt(policy, request.headers, token, runtime) {
            Ok((verified, account)) => {
                // Buckets belong to issuer + sub; named only if they are charged.
                // Issuer and subject, unambiguously joined: the issuer's length first.
                let caller = || {
                    let issuer = policy_issuer(policy, &verified);
                    format!("j:{}:{issuer}{}", issuer.len(), verified.subject)
                };
                let identity = Identity {
                    org: verified.org.clone().map(Cow::Owned),
                    account: account.map(Cow::Owned),
                    subject: Cow::Owned(verified.subject.clone()),
                    scopes: Cow::Owned(verified.scopes.clone()),
                    kind: CredentialKind::Jwt,
                };
                admit(policy, on, identity, policy.jwt_plan, caller, runtime)
            }
            Err((denial, detail)) => Decision { detail: detail.map(Detail::Token), ..on.deny(denial) },
        },
    }
}

fn policy_issuer<'p>(policy: &'p Policy, token: &VerifiedToken) -> &'p str {
    policy.jwt_providers.get(token.provider).map_or("", |p| p.issuer.as_str())
}

/// A verified token and the account it acts for; or the denial and, for a
/// refused token, why.
type JwtResult = Result<(Rc<VerifiedToken>, Option<String>), (Denial, Option<TokenError>)>;

/// Rows 3, 4, 9, 10 and 11 for a JWT: the account header, the token, and
/// whether the token grants that account. Returns the token and the account.
fn check_jwt<N, V>(policy: &Policy, headers: &[(N, V)], token: &str, runtime: &Runtime<'_, '_>) -> JwtResult
where
    N: AsRef<str>,
    V: AsRef<[u8]>,
{
    let refused = |error: TokenError| {
        let code = if error == TokenError::Expired { Code::ExpiredToken } else { Code::InvalidToken };
        (Denial::from(code), Some(error))
    };
    let hash = TokenCache::hash(token);
    let now_s = runtime.now_ns / NANOS;
    let cached = runtime.tokens.borrow().get(&hash);
    let index = match &cached {
        Some(verified) => verified.provider,
        None => jwt::provider_for(&policy.jwt_providers, token).map_err(refused)?,
    };
    let provider = policy.jwt_providers.get(index).ok_or((Denial::from(Code::InvalidToken), None))?;
    let account = match &provider.account_header {
        None => None,
        Some(name) => Some(account_header(policy, headers, name).map_err(|denial| (denial, None))?),
    };
    let verified = match cached {
        Some(verified) if now_s.saturating_sub(provider.clock_skew_s) <= verified.expires_at => verified,
        Some(_) => {
            runtime.tokens.borrow_mut().remove(&hash);
            return Err(refused(TokenError::Expired));
        }
        None => {
            // Row 16: a JWKS source that never loaded, and no inline keys.
            let fetched = match runtime.fetched.jwks(index) {
                Ok(keys) => keys,
                Err(_) if provider.keys.is_empty() => return Err((Code::AuthUnavailable.into(), None)),
                Err(_) => &[],
            };
            let keys: Vec<_> = provider.keys.iter().chain(fetched).collect();
            let verified = match jwt::verify(&policy.jwt_providers, index, &keys, runtime.signatures, token, now_s) {
                Ok(verified) => Rc::new(verified),
                Err(error) => {
                    if error == TokenError::UnknownKid {
                        // Keys rotate: a fresh JWKS may know this kid (rate-limited).
                        if let Some(feed) = runtime.fetched.jwks_feed(index) {
                            feed.shared(runtime.store).request_early(runtime.now_ns);
                        }
                    }
                    return Err(refused(error));
                }
            };
            runtime.tokens.borrow_mut().insert(hash, Rc::clone(&verified));
            verified
        }
    };
    if let Some(account) = &account {
        let granted = verified.accounts.as_ref().is_some_and(|accounts| accounts.contains(account));
        if !granted {
            return Err((Code::AccountMismatch.into(), None));
        }
    }
    Ok((verified, account))
}

/// Rows 3 and 4: the one account a JWT caller acts for, from its header.
fn account_header<N, V>(policy: &Policy, headers: &[(N, V)], name: &str) -> Result<String, Denial>
where
    N: AsRef<str>,
    V: AsRef<[u8]>,
{
    let mut values = headers.iter().filter(|(n, _)| same_header_name(n.as_ref(), name));
    let value = match (values.next(), values.next()) {
        (Some((spelled, value)), None) if !spelled.as_ref().contains('_') => value.as_ref(),
        (None, _) => return Err(Code::AccountHeaderRequired.into()),
        // More than one, or a spelling only some upstreams read as this
        // header: no single account to act for.
        _ => return Err(Code::InvalidAccount.into()),
    };
    let account = std::str::from_utf8(value).map(str::trim).map_err(|_| Denial::from(Code::InvalidAccount))?;
    if !policy.accounts.is_valid(account) {
        return Err(Code::InvalidAccount.into());
    }
    Ok(account.to_owned())
}

type KeyResult<'p> = Result<Cow<'p, ApiKey>, (Option<Cow<'p, str>>, Denial)>;

/// A key as found: the policy's own, or read from the fetched set (with
/// whether the set revokes it).
struct Found<'p> {
    key: Cow<'p, ApiKey>,
    revoked: bool,
}

/// Where a key is looked up: the fetched set first, then the policy's own.
/// `None` when neither has it; row 16 when the fetched set could answer
/// nothing (never loaded) and the key is not the policy's.
fn find_key<'p>(
    policy: &'p Policy,
    api_keys: &'p ApiKeys,
    runtime: &Runtime<'_, '_>,
    remote: impl FnOnce(&KeyIndex<'_>, &RecordRules<'_>) -> Lookup,
    inline: impl FnOnce(&'p KeySet) -> Option<&'p ApiKey>,
) -> Result<Option<Found<'p>>, Denial> {
    let index = runtime.fetched.keys(runtime.store);
    let looked = index.as_ref().map(|index| fetched::with_rules(policy, |rules| remote(index, rules)));
    if let Some(Lookup::Found(Held { key, revoked })) = looked {
        return Ok(Some(Found { key: Cow::Owned(key), revoked }));
    }
    match (inline(&api_keys.inline), looked) {
        // A revocation in the fetched set covers the policy's own keys too; a
        // set not loaded yet revokes nothing, one that cannot be read is row 16.
        (Some(key), _) => {
            let revoked = match index.as_ref().map(|index| index.is_revoked(&key.id)) {
                None => false,
                Some(Some(revoked)) => revoked,
                Some(None) => return Err(Code::AuthUnavailable.into()),
            };
            Ok(Some(Found { key: Cow::Borrowed(key), revoked }))
        }
        (None, Some(Lookup::Unavailable)) => Err(Code::AuthUnavailable.into()),
        (None, _) => Ok(None),
    }
}

/// Decision-table rows 3, 5–7 and 16 for an API key.
fn check_api_key<'p>(
    policy: &'p Policy,
    runtime: &Runtime<'_, '_>,
    key: &str,
    prefix_account: Option<&str>,
) -> KeyResult<'p> {
    if prefix_account.is_some_and(|account| !policy.accounts.is_valid(account)) {
        return Err((None, Code::InvalidAccount.into()));
    }
    let Some(api_keys) = &policy.api_keys else {
        return Err((None, Code::InvalidApiKey.into()));
    };
    let hash = api_keys.hasher.hash(key);
    let found = find_key(policy, api_keys, runtime, |index, rules| index.find(&hash, rules), |set| set.find(&hash))
        .map_err(|denial| (None, denial))?;
    let Some(found) = found.filter(|f| prefix_account.is_none_or(|account| account == f.key.account)) else {
        return Err((None, Code::InvalidApiKey.into()));
    };
    key_fate(api_keys, found, runtime.now_ns / NANOS)
}

/// Rows 6 and 7: a known key that has expired or been revoked.
fn key_fate<'p>(api_keys: &ApiKeys, found: Found<'p>, now_s: u64) -> KeyResult<'p> {
    let Found { key, revoked } = found;
    if key.expires_at.is_some_and(|at| now_s >= at) {
        return Err((Some(key_id(&key)), Code::ExpiredApiKey.into()));
    }
    if revoked || api_keys.inline.is_revoked(&key.id) {
        return Err((Some(key_id(&key)), Code::RevokedApiKey.into()));
    }
    Ok(key)
}

/// A key's id, borrowed from the policy when the key is the policy's.
fn key_id<'p>(key: &Cow<'p, ApiKey>) -> Cow<'p, str> {
    match key {
        Cow::Borrowed(key) => Cow::Borrowed(&key.id),
        Cow::Owned(key) => Cow::Owned(key.id.clone()),
    }
}

type SessionResult<'p> = Result<Cow<'p, ApiKey>, (Option<Cow<'p, str>>, Denial, Option<SessionError>)>;

/// Rows 9 and 10 for a session token, then its parent key's rows 6 and 7:
/// a session never outlives its key.
fn check_session<'p>(policy: &'p Policy, runtime: &Runtime<'_, '_>, token: &str) -> SessionResult<'p> {
    let now_s = runtime.now_ns / NANOS;
    let invalid = |why| (None, Denial::from(Code::InvalidToken), Some(why));
    let (Some(sessions), Some(api_keys)) = (&policy.sessions, &policy.api_keys) else {
        return Err(invalid(SessionError::Malformed));
    };
    let claims = sessions.verify(token, now_s).map_err(|why| match why {
        SessionError::Expired => (None, Denial::from(Code::ExpiredToken), Some(why)),
        _ => invalid(why),
    })?;
    let id = claims.key_id.as_str();
    let found = find_key(policy, api_keys, runtime, |index, rules| index.find_id(id, rules), |set| set.find_id(id))
        .map_err(|denial| (None, denial, None))?;
    let found = found.ok_or_else(|| invalid(SessionError::UnknownKey))?;
    key_fate(api_keys, found, now_s).map_err(|(key, denial)| (key, denial, None))
}

/// Rows 12–15 for a verified key (presented, or behind a session), and the
/// session to issue when this is `POST sessions.path`.
fn admit_key<'p>(
    policy: &'p Policy,
    on: Matched<'p>,
    key: Cow<'p, ApiKey>,
    kind: CredentialKind,
    runtime: &Runtime<'_, '_>,
) -> Decision<'p> {
    let (plan, expires_at, id) = (key.plan.or(policy.default_plan), key.expires_at, key_id(&key));
    let identity = Identity { kind, ..identity_of(key) };
    let decision = admit(policy, on, identity, plan, || ["k:", &id].concat(), runtime);
    let issue = match (&decision.verdict, &policy.sessions) {
        (Verdict::Allow(_), Some(sessions)) if on.exchange => {
            let until = (runtime.now_ns / NANOS).saturating_add(sessions.ttl_s);
            Some(Grant { key_id: id.clone(), expires_at: expires_at.map_or(until, |at| at.min(until)) })
        }
        _ => None,
    };
    Decision { key_id: Some(id), issue, ..decision }
}

/// A webhook route's headers: the signature header must be there and
/// readable, and an announced body must fit. The body itself is checked
/// later ([`BodyCheck`]); until then the verdict is a refusal.
fn check_webhook_headers<'p, N, V>(policy: &'p Policy, on: Matched<'p>, hook: usize, headers: &[(N, V)]) -> Decision<'p>
where
    N: AsRef<str>,
    V: AsRef<[u8]>,
{
    let refused = |why: WebhookError| {
        let code = if why.is_missing() { Code::MissingSignature } else { Code::InvalidSignature };
        Decision { detail: Some(Detail::Webhook(why)), ..on.deny(code) }
    };
    let Some(webhook) = policy.webhooks.get(hook) else {
        return refused(WebhookError::Missing);
    };
    let signature = match webhook.header_value(headers).and_then(|v| webhook::parse_signature(webhook.format, v)) {
        Ok(signature) => signature,
        Err(why) => return refused(why),
    };
    let announced = headers
        .iter()
        .filter(|(n, _)| n.as_ref().eq_ignore_ascii_case("content-length"))
        .filter_map(|(_, v)| std::str::from_utf8(v.as_ref()).ok()?.trim().parse::<u64>().ok())
        .max();
    if announced.is_some_and(|length| length > webhook.max_body_bytes) {
        return refused(WebhookError::TooLarge);
    }
    let body = BodyCheck { hook, route: on.index, max_body_bytes: webhook.max_body_bytes, signature };
    Decision { body: Some(body), ..refused(WebhookError::Mismatch) }
}

const NANOS: u64 = 1_000_000_000;

/// Rows 12–15 for a verified caller: the route's rules, then the buckets of
/// its `plan`, which belong to the caller named `caller` (e.g. `k:<key id>`).
/// Local buckets are charged here; global ones are spent from the caller's
/// lease or left to the engine ([`Decision::global`]).
fn admit<'p>(
    policy: &'p Policy,
    on: Matched<'p>,
    identity: Identity<'p>,
    plan_id: Option<PlanId>,
    caller: impl FnOnce() -> String,
    runtime: &Runtime<'_, '_>,
) -> Decision<'p> {
    let verdict = authorize(policy, on, identity);
    let plan = plan_id.and_then(|id| policy.plans.get(id).map(|plan| (id, plan)));
    let (Verdict::Allow(_), Some((plan_id, plan))) = (&verdict, plan) else {
        return on.decide(verdict);
    };
    // No placement secret (no randomness, or a store too contended to create
    // it): nowhere safe to keep the buckets.
    let Some(placement) = runtime.placement else {
        let result = ChargeResult { charge: Charge::Contended, conflicts: 0 };
        return Decision { rate: Some(result), ..on.deny(Denial::rate_limited(1)) };
    };
    let name = caller();
    let caller = CallerId::new(placement, name.as_bytes());
    let result = (!plan.buckets.is_empty()).then(|| rate_limit::charge(runtime.store, plan, caller, runtime.now_ns));
    let verdict = match result.map(|r| r.charge) {
        None | Some(Charge::Admitted(_)) => verdict,
        Some(Charge::Limited { retry_after_s, .. } | Charge::TableFull { retry_after_s }) => {
            Verdict::Deny(Denial::rate_limited(retry_after_s))
        }
        // Fail closed: a store too contended to update refuses rather than
        // waves through.
        Some(Charge::Contended) => Verdict::Deny(Denial::rate_limited(1)),
    };
    let max_lease = policy.engine.as_ref().map_or(1, |engine| engine.max_lease);
    let global = match (&verdict, plan.global.is_empty()) {
        (Verdict::Allow(_), false) => Some(match lease::take(runtime.store, plan, max_lease, caller, runtime.now_ns) {
            Take::Spent => Global::Leased,
            Take::Ask { hits } => Global::Ask(Ask { plan: plan_id, caller, name, hits }),
        }),
        _ => None,
    };
    Decision { rate: result, global, ..on.decide(verdict) }
}

fn identity_of(key: Cow<'_, ApiKey>) -> Identity<'_> {
    match key {
        Cow::Borrowed(key) => Identity {
            org: Some(Cow::Borrowed(&key.org)),
            account: Some(Cow::Borrowed(&key.account)),
            subject: Cow::Borrowed(&key.id),
            scopes: Cow::Borrowed(&key.scopes_header),
            kind: CredentialKind::ApiKey,
        },
        Cow::Owned(key) => Identity {
            org: Some(Cow::Owned(key.org)),
            account: Some(Cow::Owned(key.account)),
            subject: Cow::Owned(key.id),
            scopes: Cow::Owned(key.scopes_header),
            kind: CredentialKind::ApiKey,
        },
    }
}

/// Decision-table rows 12–14: what a verified caller may do on this route.
fn authorize<'p>(policy: &Policy, on: Matched<'_>, identity: Identity<'p>) -> Verdict<'p> {
    let route = on.route;
    if !route.allow_reserved && identity.account.as_deref().is_some_and(|a| policy.accounts.is_reserved(a)) {
        return Verdict::Deny(Code::AccountForbidden.into());
    }
    // A session is exchanged for an API key, never for another session or a JWT.
    if !route.allows(identity.kind) || (on.exchange && identity.kind != CredentialKind::ApiKey) {
        return Verdict::Deny(Code::CredentialNotAllowed.into());
    }
    let has = |scope: &String| identity.scopes.split(' ').any(|s| s == scope);
    if !route.scopes.iter().all(has) {
        return Verdict::Deny(Code::InsufficientScope.into());
    }
    Verdict::Allow(Some(identity))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api_key::KeyHasher;
    use crate::config::Environment;
    use crate::jwt::NoSignatureHost;
    use crate::store::MemoryStore;
    use crate::testing::EveryVar;

    fn parse(json: &[u8], env: &dyn Environment) -> Result<Policy, crate::config::ConfigError> {
        Policy::from_json(json, env)
    }

    fn runtime<'a>(now_ns: u64, store: &'a MemoryStore, tokens: &'a RefCell<TokenCache>) -> Runtime<'a, 'static> {
        Runtime {
            now_ns,
            store,
            tokens,
            fetched: Box::leak(Box::new(Fetched::empty())),
            signatures: &NoSignatureHost,
            placement: Placement::shared(store).map(|p| &*Box::leak(Box::new(p))),
        }
    }

    const PEPPER: EveryVar = EveryVar("pepper");

    const NOW: u64 = 1_800_000_000 * NANOS;

    fn hash(key: &str) -> String {
        KeyHasher::new(b"pepper").unwrap().hash(key).to_hex()
    }

    fn policy() -> Policy {
        let json = format!(
            r#"{{
              "reserved_accounts": ["kataven-admin"],
              "api_keys": {{
                "keys": [
                  {{"id":"k_acme","hash":"{}","org":"org_1","account":"acme","scopes":["agents:read"]}},
                  {{"id":"k_opaque","hash":"{}","org":"org_1","account":"acme"}},
                  {{"id":"k_old","hash":"{}","org":"org_1","account":"acme","expires_at":"2020-01-01T00:00:00Z"}},
                  {{"id":"k_gone","hash":"{}","org":"org_1","account":"acme"}},
                  {{"id":"k_admin","hash":"{}","org":"org_0","account":"kataven-admin","scopes":["admin"]}}
                ],
                "revoked": ["k_gone"]
              }},
              "routes": [
                {{"prefix":"/public","auth":"none"}},
                {{"prefix":"/maybe","auth":"optional"}},
                {{"prefix":"/jwt-only","credentials":["jwt"]}},
                {{"prefix":"/agents","scopes":["agents:read"]}},
                {{"prefix":"/admin","allow_reserved":true,"scopes":["admin"]}}
              ]
            }}"#,
            hash("sk_live_acme_good"),
            hash("opaque-key"),
            hash("sk_live_acme_old"),
            hash("sk_live_acme_gone"),
            hash("sk_live_kataven-admin_root")
        );
        parse(json.as_bytes(), &PEPPER).unwrap()
    }

    fn run<'p>(policy: &'p Policy, path: &str, headers: &[(&str, &str)]) -> Decision<'p> {
        let headers: Vec<(String, Vec<u8>)> =
            headers.iter().map(|(n, v)| (n.to_string(), v.as_bytes().to_vec())).collect();
        let (store, tokens) = (MemoryStore::default(), RefCell::default());
        decide(policy, &Request { method: "GET", path, headers: &headers }, &runtime(NOW, &store, &tokens))
    }

    fn code(policy: &Policy, path: &str, headers: &[(&str, &str)]) -> Option<&'static str> {
        match run(policy, path, headers).verdict {
            Verdict::Deny(d) => Some(d.code.as_str()),
            Verdict::Allow(_) => None,
        }
    }

    fn bearer(key: &str) -> String {
        format!("Bearer {key}")
    }

    #[test]
    fn a_good_key_yields_its_identity() {
        let p = policy();
        for headers in [
            vec![("authorization", bearer("sk_live_acme_good"))],
            vec![("x-api-key", "sk_live_acme_good".to_owned())],
            vec![("authorization", "UserKey sk_live_acme_good".to_owned())],
        ] {
            let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            let decision = run(&p, "/v1/anything", &headers);
            assert_eq!(decision.key_id.as_deref(), Some("k_acme"));
            assert_eq!(
                decision.verdict,
                Verdict::Allow(Some(Identity {
                    org: Some("org_1".into()),
                    account: Some("acme".into()),
                    subject: "k_acme".into(),
                    scopes: "agents:read".into(),
                    kind: CredentialKind::ApiKey
                }))
            );
        }
        assert!(matches!(run(&p, "/x", &[("x-api-key", "opaque-key")]).verdict, Verdict::Allow(Some(_))));
    }

    #[test]
    fn decision_table_rows_for_api_keys() {
        let p = policy();
        let b = bearer;
        assert_eq!(code(&p, "/x", &[("x-api-key", "a"), ("x-api-key", "b")]), Some("malformed_credentials"));
        assert_eq!(code(&p, "/x", &[("authorization", "Basic Zm9vOmJhcg==")]), Some("malformed_credentials"));
        assert_eq!(code(&p, "/x", &[]), Some("missing_authentication"));
        assert_eq!(code(&p, "/x", &[("authorization", &b("sk_live_ACME_good"))]), Some("invalid_account"));
        assert_eq!(code(&p, "/x", &[("authorization", &b("sk_live_acme_wrong"))]), Some("invalid_api_key"));
        // The right secret under another account's prefix is not that key.
        assert_eq!(code(&p, "/x", &[("authorization", "UserKey sk_live_other_good")]), Some("invalid_api_key"));
        assert_eq!(code(&p, "/x", &[("authorization", &b("sk_live_acme_old"))]), Some("expired_api_key"));
        assert_eq!(code(&p, "/x", &[("authorization", &b("sk_live_acme_gone"))]), Some("revoked_api_key"));
        assert_eq!(code(&p, "/x", &[("authorization", &b("pk_live_acme_x"))]), Some("invalid_api_key"));
        assert_eq!(code(&p, "/x", &[("authorization", &b("sk_live_kataven-admin_root"))]), Some("account_forbidden"));
        assert_eq!(
            code(&p, "/jwt-only", &[("authorization", &b("sk_live_acme_good"))]),
            Some("credential_not_allowed")
        );
        assert_eq!(code(&p, "/agents", &[("x-api-key", "opaque-key")]), Some("insufficient_scope"));
        assert_eq!(code(&p, "/agents", &[("x-api-key", "sk_live_acme_good")]), None);
        assert_eq!(code(&p, "/admin", &[("authorization", &b("sk_live_kataven-admin_root"))]), None);
        assert_eq!(code(&p, "/admin", &[("authorization", &b("sk_live_acme_good"))]), Some("insufficient_scope"));
        assert_eq!(code(&p, "/x", &[("authorization", "Bearer aGk.eyJ9.c2ln")]), Some("invalid_token"));
    }

    #[test]
    fn earlier_rows_win() {
        let p = policy();
        // Ambiguity is refused even when one of the credentials is good.
        assert_eq!(
            code(&p, "/x", &[("authorization", "Bearer sk_live_acme_good"), ("x-api-key", "opaque-key")]),
            Some("malformed_credentials")
        );
        // An unknown key on a JWT-only route is an invalid key, not a disallowed kind.
        assert_eq!(code(&p, "/jwt-only", &[("x-api-key", "nope")]), Some("invalid_api_key"));
        // An expired key that is also revoked is reported expired (row 6 before 7).
        let d = run(&p, "/x", &[("authorization", "Bearer sk_live_acme_old")]);
        assert_eq!(d.key_id.as_deref(), Some("k_old"));
    }

    #[test]
    fn public_and_optional_routes() {
        let p = policy();
        assert_eq!(run(&p, "/public/x", &[("x-api-key", "a"), ("x-api-key", "b")]).verdict, Verdict::Allow(None));
        assert_eq!(run(&p, "/maybe", &[]).verdict, Verdict::Allow(None));
        assert!(matches!(run(&p, "/maybe", &[("x-api-key", "opaque-key")]).verdict, Verdict::Allow(Some(_))));
        assert_eq!(code(&p, "/maybe", &[("x-api-key", "bad")]), Some("invalid_api_key"));
        // A public prefix cannot be stretched into a protected path.
        assert_eq!(code(&p, "/public/../agents", &[]), Some("missing_authentication"));
        assert_eq!(code(&p, "/public/%2e%2e/agents", &[]), Some("missing_authentication"));
        // Row 0 comes first, even on a public route.
        assert_eq!(code(&p, "/public/x%2fy", &[]), Some("malformed_path"));
        assert_eq!(code(&p, "/public;x", &[("x-api-key", "a"), ("x-api-key", "b")]), Some("malformed_path"));
        assert_eq!(code(&p, "/%61gents", &[("x-api-key", "opaque-key")]), Some("insufficient_scope"));
        assert_eq!(code(&p, "/publicity", &[]), Some("missing_authentication"));
    }

    #[test]
    fn expiry_is_exact_to_the_second() {
        let p = policy();
        let headers = [("authorization".to_owned(), b"Bearer sk_live_acme_old".to_vec())];
        let (store, tokens) = (MemoryStore::default(), RefCell::default());
        let at = |now| {
            decide(&p, &Request { method: "GET", path: "/", headers: &headers }, &runtime(now, &store, &tokens)).verdict
        };
        let expiry = crate::api_key::parse_timestamp("2020-01-01T00:00:00Z").unwrap() * NANOS;
        assert!(matches!(at(expiry - 1), Verdict::Allow(_)));
        assert!(matches!(at(expiry), Verdict::Deny(d) if d.code == Code::ExpiredApiKey));
    }

    fn limited_policy() -> Policy {
        let json = format!(
            r#"{{
              "api_keys": {{"keys": [
                {{"id":"k_std","hash":"{}","org":"o","account":"acme"}},
                {{"id":"k_gold","hash":"{}","org":"o","account":"acme","plan":"gold"}},
                {{"id":"k_free","hash":"{}","org":"o","account":"acme","scopes":["s"]}}
              ]}},
              "rate_limits": {{
                "plans": {{"standard": [{{"name":"burst","requests":2,"per_s":10}}],
                           "gold": [{{"name":"burst","requests":5,"per_s":10}}]}},
                "default_plan": "standard"
              }},
              "routes": [{{"prefix":"/scoped","scopes":["s"]}}]
            }}"#,
            hash("std-key"),
            hash("gold-key"),
            hash("free-key")
        );
        parse(json.as_bytes(), &PEPPER).unwrap()
    }

    #[test]
    fn plans_limit_verified_callers_only() {
        let p = limited_policy();
        let (store, tokens) = (MemoryStore::default(), RefCell::default());
        let codes = |key: &str, path: &str, n: usize| -> Vec<&'static str> {
            let headers = [("x-api-key".to_owned(), key.as_bytes().to_vec())];
            let rt = runtime(NOW, &store, &tokens);
            (0..n)
                .map(|_| match decide(&p, &Request { method: "GET", path, headers: &headers }, &rt).verdict {
                    Verdict::Allow(_) => "ok",
                    Verdict::Deny(d) => d.code.as_str(),
                })
                .collect()
        };
        assert_eq!(codes("std-key", "/x", 3), ["ok", "ok", "rate_limited"]);
        assert_eq!(codes("gold-key", "/x", 6), ["ok", "ok", "ok", "ok", "ok", "rate_limited"]);
        // Failures before row 15 answer first and never drain a bucket.
        assert_eq!(codes("free-key", "/scoped", 1), ["ok"]);
        assert_eq!(codes("std-key", "/scoped", 3), ["insufficient_scope"; 3]);
        assert_eq!(codes("wrong-key", "/x", 3), ["invalid_api_key"; 3]);
        let d = run(&p, "/x", &[("x-api-key", "std-key")]);
        assert_eq!(d.quota().map(|q| (q.limit, q.remaining)), Some((2, 1)));
    }

    const SESSION_ENV: crate::testing::OnlyVars = crate::testing::OnlyVars(&[
        ("EDGE_AUTH_PEPPER", "pepper"),
        ("EDGE_AUTH_SESSION_KEY", "0123456789abcdef0123456789abcdef"),
    ]);

    fn session_policy() -> Policy {
        let json = format!(
            r#"{{
              "api_keys": {{"opaque_bearer": true, "keys": [
                {{"id":"k_1","hash":"{}","org":"o","account":"acme","scopes":["s"],"expires_at":"2030-01-01T00:00:00Z"}},
                {{"id":"k_gone","hash":"{}","org":"o","account":"acme"}},
                {{"id":"k_short","hash":"{}","org":"o","account":"acme","expires_at":"2027-01-15T08:00:10Z"}}
              ], "revoked": ["k_gone"]}},
              "sessions": {{"path": "/api/session", "ttl_s": 60}},
              "errors": {{"invalid_api_key": {{"code": "unauthorized", "message": "Invalid or expired API key"}}}},
              "routes": [
                {{"prefix":"/keys-only","credentials":["api_key"]}},
                {{"prefix":"/browser","credentials":["session"],"scopes":["s"]}}
              ]
            }}"#,
            hash("opaque-1"),
            hash("opaque-gone"),
            hash("opaque-short")
        );
        parse(json.as_bytes(), &SESSION_ENV).unwrap()
    }

    /// 2027-01-15T08:00:00Z.
    const T0: u64 = 1_800_000_000;

    fn at<'p>(p: &'p Policy, now_s: u64, method: &str, path: &str, auth: &str) -> Decision<'p> {
        let headers = vec![("authorization".to_owned(), auth.as_bytes().to_vec())];
        let (store, tokens) = (MemoryStore::default(), RefCell::default());
        decide(p, &Request { method, path, headers: &headers }, &runtime(now_s * NANOS, &store, &tokens))
    }

    fn exchange(p: &Policy, now_s: u64, key: &str) -> (String, serde_json::Value) {
        let decision = at(p, now_s, "POST", "/api/session", &bearer(key));
        let crate::effects::Effects::Reply(reply) = crate::effects::of(p, &decision) else { panic!("{decision:?}") };
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert!(reply.headers.contains(&("cache-control", "no-store".into())));
        let body: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
        (body["session_token"].as_str().unwrap().to_owned(), body)
    }

    fn denied_code(d: &Decision<'_>) -> Option<&'static str> {
        match &d.verdict {
            Verdict::Deny(denial) => Some(denial.code.as_str()),
            Verdict::Allow(_) => None,
        }
    }

    #[test]
    fn opaque_bearer_keys_authenticate_when_enabled() {
        let p = session_policy();
        let d = at(&p, T0, "GET", "/x", "Bearer opaque-1");
        assert_eq!(d.key_id.as_deref(), Some("k_1"));
        assert!(matches!(d.verdict, Verdict::Allow(Some(Identity { kind: CredentialKind::ApiKey, .. }))));
        assert_eq!(denied_code(&at(&p, T0, "GET", "/x", "Bearer opaque-nope")), Some("invalid_api_key"));
        // Off by default: the same header is malformed.
        assert_eq!(code(&policy(), "/x", &[("authorization", "Bearer opaque-key")]), Some("malformed_credentials"));
    }

    #[test]
    fn a_key_is_exchanged_for_a_session_that_acts_as_the_key() {
        let p = session_policy();
        let (token, body) = exchange(&p, T0, "opaque-1");
        assert!(token.starts_with("st_") && !token.contains("opaque-1"));
        assert_eq!(body["expires_at"], "2027-01-15T08:01:00Z");
        let d = at(&p, T0 + 59, "GET", "/browser/x", &bearer(&token));
        assert_eq!(d.key_id.as_deref(), Some("k_1"));
        let Verdict::Allow(Some(identity)) = d.verdict else { panic!("{d:?}") };
        assert_eq!((identity.subject.as_ref(), identity.kind.as_str()), ("k_1", "session"));
        assert_eq!(denied_code(&at(&p, T0 + 60, "GET", "/browser/x", &bearer(&token))), Some("expired_token"));
        // A session is its own credential kind, and never buys another session.
        assert_eq!(denied_code(&at(&p, T0, "GET", "/keys-only", &bearer(&token))), Some("credential_not_allowed"));
        assert_eq!(denied_code(&at(&p, T0, "POST", "/api/session", &bearer(&token))), Some("credential_not_allowed"));
        assert_eq!(denied_code(&at(&p, T0, "GET", "/browser/x", "Bearer opaque-1")), Some("credential_not_allowed"));
        // Tampering is an invalid token; so is a token of another edge.
        let tampered = format!("{}A", token.trim_end_matches(|c| c != '.'));
        assert_eq!(denied_code(&at(&p, T0, "GET", "/x", &bearer(&tampered))), Some("invalid_token"));
        // Only POST exchanges; other methods are the route's business.
        assert!(at(&p, T0, "GET", "/api/session", "Bearer opaque-1").issue.is_none());
        // The errors map restates the exchange's refusals too.
        let refused = at(&p, T0, "POST", "/api/session", "Bearer opaque-nope");
        let crate::effects::Effects::Reply(reply) = crate::effects::of(&p, &refused) else { panic!() };
        assert_eq!(reply.body, r#"{"error":{"code":"unauthorized","message":"Invalid or expired API key"}}"#);
    }

    #[test]
    fn a_session_never_outlives_its_key() {
        let p = session_policy();
        // Capped at the key's own expiry, and refused with the key's code after it.
        let (token, body) = exchange(&p, T0, "opaque-short");
        assert_eq!(body["expires_at"], "2027-01-15T08:00:10Z");
        assert_eq!(denied_code(&at(&p, T0 + 5, "GET", "/x", &bearer(&token))), None);
        assert_eq!(denied_code(&at(&p, T0 + 10, "GET", "/x", &bearer(&token))), Some("expired_token"));
        // A revoked key refuses its sessions at once (row 7).
        let sessions = p.sessions.as_ref().unwrap();
        let orphan = sessions.issue("k_gone", T0 + 60, [0; 12]).unwrap();
        assert_eq!(denied_code(&at(&p, T0, "GET", "/x", &bearer(&orphan))), Some("revoked_api_key"));
        let unknown = sessions.issue("k_never", T0 + 60, [0; 12]).unwrap();
        let d = at(&p, T0, "GET", "/x", &bearer(&unknown));
        assert_eq!(
            (denied_code(&d), d.detail),
            (Some("invalid_token"), Some(Detail::Session(SessionError::UnknownKey)))
        );
    }

    /// Row 16 and the fetched set: while the source never loaded, only the
    /// policy's own keys pass; once loaded, its keys (and its revocations of
    /// the policy's own) are read from shared data.
    #[test]
    fn fetched_keys_and_a_source_that_never_loaded() {
        let json = format!(
            r#"{{"api_keys": {{"opaque_bearer": true, "source": {{"cluster": "ks", "path": "/keys"}},
                "keys": [{{"id":"k_1","hash":"{}","org":"o","account":"acme"}}]}},
              "sessions": {{"path": "/api/session", "ttl_s": 60}}}}"#,
            hash("opaque-1")
        );
        let p = parse(json.as_bytes(), &SESSION_ENV).unwrap();
        let feeds = crate::fetched::feeds(&p);
        let fetched = Fetched::new(&feeds);
        let (store, tokens) = (MemoryStore::default(), RefCell::default());
        let run = |auth: &str| {
            let headers = vec![("authorization".to_owned(), auth.as_bytes().to_vec())];
            let runtime = Runtime { fetched: &fetched, ..runtime(T0 * NANOS, &store, &tokens) };
            let d = decide(&p, &Request { method: "GET", path: "/x", headers: &headers }, &runtime);
            (denied_code(&d), d.key_id.map(Cow::into_owned))
        };
        let sessions = p.sessions.as_ref().unwrap();
        let far = bearer(&sessions.issue("k_far", T0 + 60, [0; 12]).unwrap());
        let near = bearer(&sessions.issue("k_1", T0 + 60, [0; 12]).unwrap());
        assert_eq!(run("Bearer opaque-1"), (None, Some("k_1".into())));
        assert_eq!(run("Bearer opaque-far"), (Some("auth_unavailable"), None));
        assert_eq!(run(&far), (Some("auth_unavailable"), None));
        assert_eq!(run(&near), (None, Some("k_1".into())));

        let mut set = crate::api_key::Staged::new("1");
        let far_record = crate::config::KeyRecordDoc {
            id: "k_far".into(),
            hash: hash("opaque-far"),
            org: "o".into(),
            account: "acme".into(),
            scopes: vec!["s".into()],
            plan: None,
            expires_at: None,
        };
        crate::fetched::with_rules(&p, |rules| set.add(&[far_record], &["k_1".into()], rules, "k")).unwrap();
        feeds[0].index(&store).load(&set).unwrap();
        assert_eq!(run("Bearer opaque-far"), (None, Some("k_far".into())));
        assert_eq!(run(&far), (None, Some("k_far".into())));
        assert_eq!(run("Bearer opaque-1"), (Some("revoked_api_key"), Some("k_1".into())));
        assert_eq!(run(&near), (Some("revoked_api_key"), Some("k_1".into())));
        assert_eq!(run("Bearer opaque-nope"), (Some("invalid_api_key"), None));
    }
}
