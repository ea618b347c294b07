//! Documents the policy fetches from Envoy clusters (key sets, JWKS): where
//! they come from, and how one fetch per Envoy process reaches every worker.

mod shared;

pub use shared::{Meta, Outcome, Published, SharedDocument, EARLY_REFETCH, MAX_BODY, MAX_DELTA, RETRY};

use crate::config::{ConfigError, SourceDoc};
use crate::text::is_header_safe;
use std::time::Duration;

/// A document served by an Envoy cluster at a path, fetched every `refresh`
/// (or held open by the server for up to `wait`: a long poll).
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    pub cluster: String,
    pub path: String,
    pub refresh: Duration,
    /// Sent as `Prefer: wait=<s>`; `None` when long polls are off.
    pub wait: Option<Duration>,
}

const MIN_REFRESH: Duration = Duration::from_millis(50);
const MAX_REFRESH: Duration = Duration::from_secs(86_400);
/// Long enough that an idle long poll costs the server little; short enough
/// that proxies and load balancers between Envoy and the server keep it open.
const DEFAULT_WAIT_S: f64 = 20.0;
const MAX_WAIT: Duration = Duration::from_secs(300);
/// How long a server may take beyond the wait before the call counts as failed.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// Beyond the call's own timeout, before another worker may take a lease
/// whose holder never reported (a worker reconfigured mid-call).
const LEASE_MARGIN: Duration = Duration::from_secs(5);

impl Endpoint {
    /// Compiles a `source` or `jwks_source`; `at` names it in errors.
    pub fn compile(doc: &SourceDoc, at: &str, default_refresh_s: f64) -> Result<Self, ConfigError> {
        if doc.cluster.is_empty() {
            return Err(ConfigError::new(format!("{at}.cluster"), "names the Envoy cluster to fetch from"));
        }
        if !doc.path.starts_with('/') || !is_header_safe(&doc.path) || doc.path.contains(' ') {
            return Err(ConfigError::new(format!("{at}.path"), "an absolute request path like /v1/keys"));
        }
        let seconds = doc.refresh_s.unwrap_or(default_refresh_s);
        let refresh = Duration::try_from_secs_f64(seconds)
            .ok()
            .filter(|d| (MIN_REFRESH..=MAX_REFRESH).contains(d))
            .ok_or_else(|| {
                ConfigError::new(
                    format!("{at}.refresh_s"),
                    format!("must be {} to {} seconds", MIN_REFRESH.as_secs_f64(), MAX_REFRESH.as_secs()),
                )
            })?;
        let wait = Duration::try_from_secs_f64(doc.wait_s.unwrap_or(DEFAULT_WAIT_S))
            .ok()
            .filter(|d| *d <= MAX_WAIT)
            .ok_or_else(|| {
                ConfigError::new(format!("{at}.wait_s"), format!("must be 0 (off) to {} seconds", MAX_WAIT.as_secs()))
            })?;
        // `Prefer: wait` takes whole seconds.
        let wait = Some(Duration::from_secs(wait.as_secs())).filter(|w| !w.is_zero());
        Ok(Self { cluster: doc.cluster.clone(), path: doc.path.clone(), refresh, wait })
    }

    /// The request headers of a fetch: `If-None-Match` with the `etag`
    /// held (if any), and `Prefer: wait` for a long poll.
    pub fn request_headers(&self, etag: &str) -> Vec<(&'static str, String)> {
        let mut headers =
            vec![(":method", "GET".to_owned()), (":path", self.path.clone()), (":authority", self.cluster.clone())];
        if !etag.is_empty() {
            headers.push(("if-none-match", etag.to_owned()));
        }
        if let Some(wait) = self.wait {
            headers.push(("prefer", format!("wait={}", wait.as_secs())));
        }
        headers
    }

    /// The request headers of one page of a whole set (`cursor`; `None`:
    /// the first): never `If-None-Match` nor a long poll, since the pages
    /// of one set must all be fetched.
    pub fn page_headers(&self, cursor: Option<&str>) -> Vec<(&'static str, String)> {
        let path = match cursor {
            None => self.path.clone(),
            Some(cursor) => {
                let join = if self.path.contains('?') { '&' } else { '?' };
                format!("{}{join}page={}", self.path, percent_encode(cursor))
            }
        };
        vec![(":method", "GET".to_owned()), (":path", path), (":authority", self.cluster.clone())]
    }

    /// The call's timeout: the wait the server may hold it, plus time to answer.
    pub fn call_timeout(&self) -> Duration {
        self.wait.unwrap_or_default().saturating_add(ANSWER_TIMEOUT)
    }

    /// How long the fetch lease lasts: a long poll legitimately in flight is
    /// never taken over.
    pub fn lease(&self) -> Duration {
        self.call_timeout().saturating_add(LEASE_MARGIN)
    }

    /// When the next fetch is due after an answer to a call started at
    /// `started_ns`, or `None` to keep the polling schedule. A server that
    /// long-polls says so (`Preference-Applied: wait`): a change (200) or a
    /// wait it held to the end (304) re-arms at once; a 304 it cut short
    /// (a restart, a drain) is retried soon, not in a tight loop.
    pub fn rearm(&self, status: &str, applied: bool, started_ns: u64, now_ns: u64) -> Option<u64> {
        let wait = self.wait?;
        if !applied {
            return None;
        }
        let held = now_ns.saturating_sub(started_ns);
        match status {
            "200" => Some(now_ns),
            "304" if u128::from(held) * 2 >= wait.as_nanos() => Some(now_ns),
            "304" => Some(now_ns.saturating_add(nanos(RETRY.min(self.refresh)))),
            _ => None,
        }
    }
}

/// A cursor is opaque: everything but unreserved characters is escaped.
fn percent_encode(text: &str) -> String {
    text.bytes().fold(String::with_capacity(text.len()), |mut out, b| {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
        out
    })
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(wait_s: Option<f64>) -> Result<Endpoint, ConfigError> {
        let doc = SourceDoc { cluster: "k".into(), path: "/keys".into(), refresh_s: Some(30.0), wait_s };
        Endpoint::compile(&doc, "api_keys.source", 1.0)
    }

    #[test]
    fn fetches_say_what_they_hold_and_how_long_to_wait() {
        let long = endpoint(None).unwrap().request_headers("\"v7\"");
        assert!(long.contains(&("if-none-match", "\"v7\"".to_owned())));
        assert!(long.contains(&("prefer", "wait=20".to_owned())));
        let first = endpoint(Some(0.0)).unwrap().request_headers("");
        assert_eq!(first.iter().map(|(n, _)| *n).collect::<Vec<_>>(), [":method", ":path", ":authority"]);
    }

    #[test]
    fn the_wait_is_bounded_and_the_lease_outlasts_the_call() {
        let e = endpoint(None).unwrap();
        assert_eq!(e.wait, Some(Duration::from_secs(20)));
        assert_eq!(e.call_timeout(), Duration::from_secs(25));
        assert!(e.lease() > e.call_timeout());
        assert_eq!(endpoint(Some(0.0)).unwrap().wait, None);
        assert_eq!(endpoint(Some(0.0)).unwrap().call_timeout(), Duration::from_secs(5));
        let err = endpoint(Some(301.0)).unwrap_err().to_string();
        assert_eq!(err, "api_keys.source.wait_s: must be 0 (off) to 300 seconds");
        assert!(endpoint(Some(-1.0)).is_err());
    }

    #[test]
    fn only_a_long_polling_server_re_arms_at_once() {
        const S: u64 = 1_000_000_000;
        let e = endpoint(None).unwrap();
        assert_eq!(e.rearm("200", false, 0, S), None, "plain polling keeps refresh_s");
        assert_eq!(e.rearm("304", false, 0, 20 * S), None);
        assert_eq!(e.rearm("200", true, 0, S), Some(S));
        assert_eq!(e.rearm("304", true, 0, 20 * S), Some(20 * S));
        assert_eq!(e.rearm("304", true, 0, S), Some(3 * S), "cut short: retried, not spun");
        assert_eq!(e.rearm("503", true, 0, S), None);
        assert_eq!(endpoint(Some(0.0)).unwrap().rearm("200", true, 0, S), None);
    }
}
