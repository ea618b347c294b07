//! Reads a `RateLimitRequest` into the buckets to charge, refusing anything the
//! contract does not define: a typo in an Envoy rate-limit action must fail loudly,
//! never merge or drop a bucket.

use crate::limit::{Limit, LimitError};
use crate::proto::{RateLimitDescriptor, RateLimitRequest, Unit};
use std::fmt;

pub const CALLER: &str = "edge_auth_caller";
pub const BUCKET: &str = "edge_auth_bucket";
pub const REQUESTS: &str = "requests";
pub const PER_S: &str = "per_s";
/// Bounds the script's work per call.
pub const MAX_DESCRIPTORS: usize = 64;

/// One descriptor, validated: which bucket, its limit, and what this request costs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Charge {
    pub caller: String,
    pub bucket: String,
    pub limit: Limit,
    pub hits: u64,
    /// The Redis key, hash-tagged by domain and caller.
    pub key: String,
}

/// Why a request cannot be served; answered as INVALID_ARGUMENT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DescriptorError {
    NoDomain,
    NoDescriptors,
    TooManyDescriptors(usize),
    Missing { index: usize, key: &'static str },
    Repeated { index: usize, key: String },
    Unknown { index: usize, key: String },
    Empty { index: usize, key: &'static str },
    NotANumber { index: usize, key: &'static str, value: String },
    LimitTwice { index: usize },
    CalendarUnit { index: usize, unit: i32 },
    Limit { index: usize, error: LimitError },
}

impl fmt::Display for DescriptorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoDomain => write!(f, "domain is empty"),
            Self::NoDescriptors => write!(f, "no descriptors"),
            Self::TooManyDescriptors(n) => write!(f, "{n} descriptors; at most {MAX_DESCRIPTORS} per request"),
            Self::Missing { index, key } => write!(f, "descriptors[{index}]: entry {key} is missing"),
            Self::Repeated { index, key } => write!(f, "descriptors[{index}]: entry {key} is repeated"),
            Self::Unknown { index, key } => write!(
                f,
                "descriptors[{index}]: unknown entry {key:?} (expected {CALLER}, {BUCKET}, {REQUESTS}, {PER_S})"
            ),
            Self::Empty { index, key } => write!(f, "descriptors[{index}]: entry {key} is empty"),
            Self::NotANumber { index, key, value } => {
                write!(f, "descriptors[{index}]: {key} {value:?} is not a whole decimal number")
            }
            Self::LimitTwice { index } => {
                write!(f, "descriptors[{index}]: give either the limit override or {REQUESTS}/{PER_S}, not both")
            }
            Self::CalendarUnit { index, unit } => write!(
                f,
                "descriptors[{index}]: limit unit {unit} is not one of SECOND, MINUTE, HOUR, DAY \
                 (months and years have no fixed length)"
            ),
            Self::Limit { index, error } => write!(f, "descriptors[{index}]: {error}"),
        }
    }
}

/// Every descriptor of `request`, in order.
pub fn charges(request: &RateLimitRequest) -> Result<Vec<Charge>, DescriptorError> {
    if request.domain.is_empty() {
        return Err(DescriptorError::NoDomain);
    }
    match request.descriptors.len() {
        0 => return Err(DescriptorError::NoDescriptors),
        n if n > MAX_DESCRIPTORS => return Err(DescriptorError::TooManyDescriptors(n)),
        _ => {}
    }
    let hits = u64::from(request.hits_addend.max(1));
    request.descriptors.iter().enumerate().map(|(index, d)| charge(&request.domain, index, d, hits)).collect()
}

fn charge(domain: &str, index: usize, descriptor: &RateLimitDescriptor, hits: u64) -> Result<Charge, DescriptorError> {
    let mut entries = Entries::default();
    for entry in &descriptor.entries {
        let slot = match entry.key.as_str() {
            CALLER => &mut entries.caller,
            BUCKET => &mut entries.bucket,
            REQUESTS => &mut entries.requests,
            PER_S => &mut entries.per_s,
            other => return Err(DescriptorError::Unknown { index, key: other.to_owned() }),
        };
        if slot.replace(entry.value.as_str()).is_some() {
            return Err(DescriptorError::Repeated { index, key: entry.key.clone() });
        }
    }
    let caller = required(index, CALLER, entries.caller)?;
    let bucket = required(index, BUCKET, entries.bucket)?;
    let limit = match (&descriptor.limit, entries.requests, entries.per_s) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => return Err(DescriptorError::LimitTwice { index }),
        (Some(limit), None, None) => {
            let per_s = match Unit::try_from(limit.unit) {
                Ok(Unit::Second) => 1,
                Ok(Unit::Minute) => 60,
                Ok(Unit::Hour) => 3600,
                Ok(Unit::Day) => 86400,
                _ => return Err(DescriptorError::CalendarUnit { index, unit: limit.unit }),
            };
            (u64::from(limit.requests_per_unit), per_s)
        }
        (None, requests, per_s) => (number(index, REQUESTS, requests)?, number(index, PER_S, per_s)?),
    };
    let limit = Limit::new(limit.0, limit.1).map_err(|error| DescriptorError::Limit { index, error })?;
    let key = key(domain, caller, bucket, &limit);
    Ok(Charge {
        caller: caller.to_owned(),
        bucket: bucket.to_owned(),
        limit,
        hits: descriptor.hits_addend.unwrap_or(hits),
        key,
    })
}

#[derive(Default)]
struct Entries<'a> {
    caller: Option<&'a str>,
    bucket: Option<&'a str>,
    requests: Option<&'a str>,
    per_s: Option<&'a str>,
}

fn required<'a>(index: usize, key: &'static str, value: Option<&'a str>) -> Result<&'a str, DescriptorError> {
    match value {
        None => Err(DescriptorError::Missing { index, key }),
        Some("") => Err(DescriptorError::Empty { index, key }),
        Some(value) => Ok(value),
    }
}

/// Plain ASCII digits only: no sign, spaces or exponent that a parser might forgive.
fn number(index: usize, key: &'static str, value: Option<&str>) -> Result<u64, DescriptorError> {
    let value = required(index, key, value)?;
    let not_a_number = || DescriptorError::NotANumber { index, key, value: value.to_owned() };
    if !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(not_a_number());
    }
    value.parse().map_err(|_| not_a_number())
}

/// `rl:{<domain>:<caller>}:<bucket>:<requests>/<per_s>`. The braces make Redis Cluster
/// hash only the domain and caller, so all of a caller's buckets share one slot. The
/// limit is part of the name because stored units only mean something at one scale: a
/// changed plan starts a fresh (full) bucket. Components are escaped so that distinct
/// (domain, caller, bucket) never share a key.
fn key(domain: &str, caller: &str, bucket: &str, limit: &Limit) -> String {
    format!("rl:{{{}:{}}}:{}:{}/{}", escape(domain), escape(caller), escape(bucket), limit.requests(), limit.per_s())
}

fn escape(component: &str) -> String {
    let mut out = String::with_capacity(component.len());
    for c in component.chars() {
        match c {
            '%' | ':' | '{' | '}' => out.push_str(&format!("%{:02X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Entry, RateLimitOverride};

    fn descriptor(entries: &[(&str, &str)]) -> RateLimitDescriptor {
        RateLimitDescriptor {
            entries: entries.iter().map(|(k, v)| Entry { key: (*k).into(), value: (*v).into() }).collect(),
            limit: None,
            hits_addend: None,
        }
    }

    fn ours(caller: &str, bucket: &str, requests: &str, per_s: &str) -> RateLimitDescriptor {
        descriptor(&[(CALLER, caller), (BUCKET, bucket), (REQUESTS, requests), (PER_S, per_s)])
    }

    fn request(descriptors: Vec<RateLimitDescriptor>) -> RateLimitRequest {
        RateLimitRequest { domain: "edge-auth".into(), descriptors, hits_addend: 0 }
    }

    fn error(descriptor: RateLimitDescriptor) -> String {
        charges(&request(vec![descriptor])).unwrap_err().to_string()
    }

    #[test]
    fn the_filters_descriptor() {
        let charges = charges(&request(vec![ours("key_01", "standard.day", "5000", "86400")])).unwrap();
        assert_eq!(charges.len(), 1);
        let c = &charges[0];
        assert_eq!((c.caller.as_str(), c.bucket.as_str(), c.hits), ("key_01", "standard.day", 1));
        assert_eq!((c.limit.requests(), c.limit.per_s()), (5000, 86400));
        assert_eq!(c.key, "rl:{edge-auth:key_01}:standard.day:5000/86400");
    }

    #[test]
    fn entry_order_does_not_matter() {
        let d = descriptor(&[(PER_S, "1"), (REQUESTS, "2"), (BUCKET, "b"), (CALLER, "c")]);
        assert_eq!(charges(&request(vec![d])).unwrap()[0].key, "rl:{edge-auth:c}:b:2/1");
    }

    #[test]
    fn limit_override_replaces_requests_and_per_s() {
        let mut d = descriptor(&[(CALLER, "c"), (BUCKET, "b")]);
        d.limit = Some(RateLimitOverride { requests_per_unit: 100, unit: Unit::Minute as i32 });
        let c = &charges(&request(vec![d.clone()])).unwrap()[0];
        assert_eq!((c.limit.requests(), c.limit.per_s()), (100, 60));

        d.entries.push(Entry { key: REQUESTS.into(), value: "5".into() });
        assert!(error(d.clone()).contains("not both"));

        d.entries.pop();
        d.limit = Some(RateLimitOverride { requests_per_unit: 100, unit: Unit::Month as i32 });
        assert!(error(d.clone()).contains("no fixed length"));
        d.limit = Some(RateLimitOverride { requests_per_unit: 0, unit: Unit::Second as i32 });
        assert!(error(d).contains("requests must be at least 1"));
    }

    #[test]
    fn hits_come_from_the_descriptor_else_the_request_else_one() {
        let mut with_own = ours("c", "b", "10", "1");
        with_own.hits_addend = Some(7);
        let mut req = request(vec![with_own, ours("c", "b2", "10", "1")]);
        assert_eq!(charges(&req).unwrap().iter().map(|c| c.hits).collect::<Vec<_>>(), [7, 1]);
        req.hits_addend = 3;
        assert_eq!(charges(&req).unwrap().iter().map(|c| c.hits).collect::<Vec<_>>(), [7, 3]);
        req.descriptors[0].hits_addend = Some(0);
        assert_eq!(charges(&req).unwrap()[0].hits, 0);
    }

    #[test]
    fn bad_descriptors_say_what_is_wrong() {
        assert_eq!(
            error(descriptor(&[(BUCKET, "b"), (REQUESTS, "1"), (PER_S, "1")])),
            "descriptors[0]: entry edge_auth_caller is missing"
        );
        assert_eq!(
            error(descriptor(&[(CALLER, "c"), (BUCKET, "b"), (PER_S, "1")])),
            "descriptors[0]: entry requests is missing"
        );
        assert_eq!(error(ours("", "b", "1", "1")), "descriptors[0]: entry edge_auth_caller is empty");
        assert_eq!(error(ours("c", "b", "ten", "1")), "descriptors[0]: requests \"ten\" is not a whole decimal number");
        for bad in ["-1", "+1", " 1", "1e3", "1.0", "", "99999999999999999999999"] {
            assert!(charges(&request(vec![ours("c", "b", "1", bad)])).is_err(), "{bad:?}");
        }
        assert_eq!(error(ours("c", "b", "0", "1")), "descriptors[0]: requests must be at least 1");
        assert_eq!(error(ours("c", "b", "1", "0")), "descriptors[0]: per_s must be at least 1");
        assert!(error(ours("c", "b", "4294967291", "86400")).contains("beyond exact arithmetic"));
        assert!(error(ours("c", "b", "4294967296", "1")).contains("above 4294967295"));
        let mut repeated = ours("c", "b", "1", "1");
        repeated.entries.push(Entry { key: CALLER.into(), value: "d".into() });
        assert_eq!(error(repeated), "descriptors[0]: entry edge_auth_caller is repeated");
        let mut unknown = ours("c", "b", "1", "1");
        unknown.entries.push(Entry { key: "remote_address".into(), value: "1.2.3.4".into() });
        assert!(error(unknown).contains("unknown entry \"remote_address\""));
    }

    #[test]
    fn requests_need_a_domain_and_a_bounded_number_of_descriptors() {
        let mut req = request(vec![]);
        assert_eq!(charges(&req), Err(DescriptorError::NoDescriptors));
        req.descriptors = vec![ours("c", "b", "1", "1"); MAX_DESCRIPTORS + 1];
        assert_eq!(charges(&req), Err(DescriptorError::TooManyDescriptors(MAX_DESCRIPTORS + 1)));
        req.descriptors.truncate(1);
        req.domain.clear();
        assert_eq!(charges(&req), Err(DescriptorError::NoDomain));
    }

    #[test]
    fn keys_keep_domains_callers_and_buckets_apart() {
        let key = |domain: &str, caller: &str, bucket: &str| {
            let mut req = request(vec![ours(caller, bucket, "1", "1")]);
            req.domain = domain.into();
            charges(&req).unwrap()[0].key.clone()
        };
        assert_ne!(key("a:b", "c", "x"), key("a", "b:c", "x"));
        assert_ne!(key("a", "b}:x", "y"), key("a", "b", "x}:y"));
        assert_eq!(key("d", "{c}%", "b"), "rl:{d:%7Bc%7D%25}:b:1/1");
        assert_ne!(key("edge-auth", "c", "b"), key("other", "c", "b"));
    }
}
