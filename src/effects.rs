//! What the filter does with a decision, given the policy's mode.
//!
//! A host applies [`Effects`] after it has removed every header the filter
//! owns (identity headers and the shadow verdict) that the request carries:
//! [`spoofed`] names them.

use crate::config::Mode;
use crate::credential::{AUTHORIZATION, X_API_KEY};
use crate::decision::{Decision, Grant, Identity, Verdict};
use crate::denial::{Code, Denial, Reply};
use crate::headers::SHADOW_HEADER;
use crate::policy::Policy;
use crate::rate_limit::Quota;
use crate::route::CredentialKind;
use crate::session::{self, Sessions};
use crate::text::same_header_name;
use serde::Serialize;
use std::borrow::Cow;
use std::time::{Duration, UNIX_EPOCH};

#[derive(Debug, PartialEq, Eq)]
pub enum Effects<'p> {
    /// Send the request upstream with these headers set (replacing any value).
    Forward {
        set: Vec<(Cow<'p, str>, String)>,
        /// Credential headers to remove (`strip_credentials`).
        remove: &'static [&'static str],
        /// Headers to add to upstream's response (`x-ratelimit-*`).
        response: Vec<(&'static str, String)>,
    },
    /// Answer locally; the request never reaches upstream.
    Reply(Reply),
}

impl Effects<'_> {
    /// The same effects, owning their header names, to be applied later
    /// (after the fleet-wide engine answers).
    pub fn into_owned(self) -> Effects<'static> {
        match self {
            Effects::Forward { set, remove, response } => Effects::Forward {
                set: set.into_iter().map(|(name, value)| (Cow::Owned(name.into_owned()), value)).collect(),
                remove,
                response,
            },
            Effects::Reply(reply) => Effects::Reply(reply),
        }
    }
}

/// The headers a credential may arrive in.
pub const CREDENTIAL_HEADERS: &[&str] = &[AUTHORIZATION, X_API_KEY];

/// The effects of `decision` under the policy's mode.
pub fn of<'p>(policy: &'p Policy, decision: &Decision<'_>) -> Effects<'p> {
    let quota = decision.quota();
    match (&decision.verdict, &decision.issue, &policy.sessions) {
        (Verdict::Allow(_), Some(grant), Some(sessions)) => issued(policy, sessions, grant, quota),
        (Verdict::Allow(identity), _, _) => {
            forward(policy, identity.as_ref(), quota.map(quota_headers).unwrap_or_default())
        }
        (Verdict::Deny(denial), _, _) => denied(policy, denial, quota),
    }
}

#[derive(Serialize)]
struct SessionBody<'a> {
    session_token: &'a str,
    expires_at: &'a str,
}

/// The answer to `POST sessions.path`: a fresh token, never cached. No
/// randomness for its nonce is the filter being unable to authenticate.
fn issued(policy: &Policy, sessions: &Sessions, grant: &Grant<'_>, quota: Option<Quota>) -> Effects<'static> {
    let token = session::nonce().and_then(|nonce| sessions.issue(&grant.key_id, grant.expires_at, nonce));
    let Some(token) = token else {
        return denied(policy, &Code::AuthUnavailable.into(), quota);
    };
    let expires_at = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(grant.expires_at)).to_string();
    // Serialising plain strings cannot fail.
    let body =
        serde_json::to_string(&SessionBody { session_token: &token, expires_at: &expires_at }).unwrap_or_default();
    let mut headers = vec![("content-type", "application/json".to_owned()), ("cache-control", "no-store".to_owned())];
    headers.extend(quota.map(quota_headers).unwrap_or_default());
    Effects::Reply(Reply { status: 200, headers, body })
}

/// The effects of a denial under the policy's mode, with the caller's most
/// constrained bucket if it has one.
pub fn denied(policy: &Policy, denial: &Denial, quota: Option<Quota>) -> Effects<'static> {
    let quota = quota.map(quota_headers).unwrap_or_default();
    match policy.mode {
        Mode::Enforce => {
            let mut reply = denial.reply(&policy.errors);
            reply.headers.extend(quota);
            Effects::Reply(reply)
        }
        // Shadow: forward as anonymous, with the would-be verdict for upstream to see.
        Mode::Shadow => Effects::Forward {
            set: vec![(Cow::Borrowed(SHADOW_HEADER), shadow_verdict(denial))],
            remove: &[],
            response: quota,
        },
    }
}

/// The request's headers that the filter owns, by the names the request
/// spells them with (any case, `_` for `-`). A client may not send them, so
/// they are removed; most requests carry none, and naming only the present
/// ones spares a host call per owned header on every request.
pub fn spoofed<N: AsRef<str>, V>(policy: &Policy, headers: &[(N, V)]) -> Vec<String> {
    let mut found: Vec<String> = Vec::new();
    for (name, _) in headers {
        let name = name.as_ref();
        let owned = policy.identity_headers.owned().any(|owned| same_header_name(name, owned));
        if owned && !found.iter().any(|f| f.eq_ignore_ascii_case(name)) {
            found.push(name.to_owned());
        }
    }
    found
}

/// Whether the request has a header of this name (names are case-insensitive).
pub fn carries<N: AsRef<str>, V>(headers: &[(N, V)], name: &str) -> bool {
    headers.iter().any(|(n, _)| n.as_ref().eq_ignore_ascii_case(name))
}

/// `x-ratelimit-*` for a caller's most constrained bucket.
pub fn quota_headers(quota: Quota) -> Vec<(&'static str, String)> {
    vec![
        ("x-ratelimit-limit", quota.limit.to_string()),
        ("x-ratelimit-remaining", quota.remaining.to_string()),
        ("x-ratelimit-reset", quota.reset_s.to_string()),
    ]
}

/// The table's own status and code, whatever `errors` shows clients: the
/// shadow verdict is for the platform team, like logs and metrics.
fn shadow_verdict(denial: &Denial) -> String {
    format!("{} {}", denial.code.status(), denial.code.as_str())
}

fn forward<'p>(
    policy: &'p Policy,
    identity: Option<&Identity<'_>>,
    response: Vec<(&'static str, String)>,
) -> Effects<'p> {
    let Some(identity) = identity else {
        return Effects::Forward { set: Vec::new(), remove: &[], response };
    };
    let names = &policy.identity_headers;
    // Absent or empty parts are not set: the client's copies are already
    // stripped, so upstream sees nothing rather than an empty value.
    let parts = [
        (&names.org, identity.org.as_deref()),
        (&names.account, identity.account.as_deref()),
        // A webhook sender is named, but it has no key.
        (&names.key_id, (identity.kind != CredentialKind::Webhook).then_some(&*identity.subject)),
        (&names.subject, Some(&*identity.subject)),
        (&names.method, Some(identity.kind.as_str())),
        (&names.scopes, Some(&*identity.scopes)),
    ];
    let set = parts
        .into_iter()
        .filter_map(|(name, value)| {
            value.filter(|v| !v.is_empty()).map(|v| (Cow::Borrowed(name.as_str()), v.to_owned()))
        })
        .collect();
    let remove = if policy.strip_credentials { CREDENTIAL_HEADERS } else { &[] };
    Effects::Forward { set, remove, response }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::denial::Code;
    use crate::rate_limit::{Charge, ChargeResult};
    use crate::route::CredentialKind;
    use crate::testing::EveryVar;

    fn policy(extra: &str) -> Policy {
        Policy::from_json(format!(r#"{{"api_keys":{{}}{extra}}}"#).as_bytes(), &EveryVar("pepper")).unwrap()
    }

    const IDENTITY: Identity<'static> = Identity {
        org: Some(Cow::Borrowed("o")),
        account: Some(Cow::Borrowed("a")),
        subject: Cow::Borrowed("k1"),
        scopes: Cow::Borrowed(""),
        kind: CredentialKind::ApiKey,
    };

    fn allowed(identity: Option<Identity<'static>>) -> Decision<'static> {
        Decision::new(None, Verdict::Allow(identity))
    }

    fn denied(code: Code) -> Decision<'static> {
        Decision::new(None, Verdict::Deny(code.into()))
    }

    #[test]
    fn allowed_callers_get_identity_headers_and_empty_scopes_are_omitted() {
        let p = policy("");
        let Effects::Forward { set, remove, response } = of(&p, &allowed(Some(IDENTITY))) else { panic!() };
        assert!(response.is_empty());
        assert_eq!(
            set,
            [
                (Cow::Borrowed("x-org-id"), "o".to_owned()),
                (Cow::Borrowed("x-account-id"), "a".to_owned()),
                (Cow::Borrowed("x-key-id"), "k1".to_owned()),
                (Cow::Borrowed("x-auth-subject"), "k1".to_owned()),
                (Cow::Borrowed("x-auth-method"), "api_key".to_owned()),
            ]
        );
        assert!(remove.is_empty());
        let scoped = Identity { scopes: Cow::Borrowed("a b"), ..IDENTITY };
        let Effects::Forward { set, .. } = of(&p, &allowed(Some(scoped))) else { panic!() };
        assert!(set.contains(&(Cow::Borrowed("x-auth-scopes"), "a b".to_owned())));
    }

    #[test]
    fn only_owned_headers_the_request_carries_are_named_for_removal() {
        let p = policy(r#","identity_headers":{"org":"x-tenant"}"#);
        let headers = [
            ("X-Tenant", "spoof"),
            ("x-edge-auth-shadow", "200 ok"),
            ("x-org-id", "default name, not owned"),
            ("x_tenant", "the same name to CGI, WSGI, Rack and PHP"),
            ("X-HTTP-Method-Override", "POST"),
            ("x-tenant", "repeated"),
        ];
        assert_eq!(spoofed(&p, &headers), ["X-Tenant", "x-edge-auth-shadow", "x_tenant", "X-HTTP-Method-Override"]);
        let clean: [(&str, &str); 1] = [("x-api-key", "k")];
        assert!(spoofed(&p, &clean).is_empty());
    }

    #[test]
    fn strip_credentials_removes_both_credential_headers_on_success_only() {
        let p = policy(r#","strip_credentials":true"#);
        let Effects::Forward { remove, .. } = of(&p, &allowed(Some(IDENTITY))) else { panic!() };
        assert_eq!(remove, ["authorization", "x-api-key"]);
        let Effects::Forward { remove, .. } = of(&p, &allowed(None)) else { panic!() };
        assert!(remove.is_empty());
    }

    #[test]
    fn enforce_replies_and_shadow_forwards_the_verdict() {
        let Effects::Reply(reply) = of(&policy(""), &denied(Code::RevokedApiKey)) else { panic!() };
        assert_eq!(reply.status, 403);
        let shadow = policy(r#","mode":"shadow""#);
        assert_eq!(
            of(&shadow, &denied(Code::RevokedApiKey)),
            Effects::Forward {
                set: vec![(Cow::Borrowed("x-edge-auth-shadow"), "403 revoked_api_key".into())],
                remove: &[],
                response: vec![]
            }
        );
    }

    #[test]
    fn quotas_become_ratelimit_headers_and_429s_carry_retry_after() {
        let p = policy("");
        let quota = Quota { limit: 20, remaining: 0, reset_s: 10 };
        let limited = Decision {
            verdict: Verdict::Deny(Denial::rate_limited(2)),
            rate: Some(ChargeResult { charge: Charge::Limited { quota, retry_after_s: 2 }, conflicts: 0 }),
            ..denied(Code::RateLimited)
        };
        let Effects::Reply(reply) = of(&p, &limited) else { panic!() };
        assert_eq!(reply.status, 429);
        for header in [
            ("retry-after", "2"),
            ("x-ratelimit-limit", "20"),
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", "10"),
        ] {
            assert!(reply.headers.contains(&(header.0, header.1.to_owned())), "{header:?}");
        }
        assert!(reply.body.contains(r#""retry_after":2"#));

        let quota = Quota { limit: 20, remaining: 19, reset_s: 1 };
        let admitted = Decision {
            rate: Some(ChargeResult { charge: Charge::Admitted(quota), conflicts: 0 }),
            ..allowed(Some(IDENTITY))
        };
        let Effects::Forward { response, .. } = of(&p, &admitted) else { panic!() };
        assert_eq!(response[1], ("x-ratelimit-remaining", "19".to_owned()));
    }
}
