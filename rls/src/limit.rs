//! A bucket's limit and the exact integer scale its state is kept in.
//!
//! Redis runs Lua with doubles only, so every number the script touches must be an
//! integer below 2^53. Tokens are counted in *units*: one token is `per_token` units,
//! with `per_token = per_s·10^6 / gcd(requests, per_s·10^6)`, so that a bucket refills by
//! a whole number of units (`rate = requests / gcd(..)`) every microsecond of Redis time.
//! A full bucket is `capacity = requests · per_token = lcm(requests, per_s·10^6)` units.
//! Accepted limits keep `capacity ≤ 2^52`, leaving headroom for the script's sums.

use crate::proto::Unit;
use std::fmt;

/// The largest bucket, in units, the script can handle exactly.
pub const MAX_CAPACITY: u64 = 1 << 52;
const MICROS_PER_SECOND: u64 = 1_000_000;

/// `requests` tokens, refilled continuously over `per_s` seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    requests: u32,
    per_s: u64,
    per_token: u64,
    rate: u64,
}

/// Why a limit cannot be served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitError {
    ZeroRequests,
    ZeroPeriod,
    TooManyRequests(u64),
    OutOfRange { requests: u32, per_s: u64 },
}

impl fmt::Display for LimitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ZeroRequests => write!(f, "requests must be at least 1"),
            Self::ZeroPeriod => write!(f, "per_s must be at least 1"),
            Self::TooManyRequests(n) => write!(f, "requests {n} is above {}", u32::MAX),
            Self::OutOfRange { requests, per_s } => write!(
                f,
                "requests {requests} per {per_s} s is beyond exact arithmetic \
                 (lcm(requests, per_s·10^6) must be at most 2^52; requests × per_s ≤ 4.5·10^9 always is)"
            ),
        }
    }
}

impl Limit {
    pub fn new(requests: u64, per_s: u64) -> Result<Self, LimitError> {
        if requests == 0 {
            return Err(LimitError::ZeroRequests);
        }
        if per_s == 0 {
            return Err(LimitError::ZeroPeriod);
        }
        let requests = u32::try_from(requests).map_err(|_| LimitError::TooManyRequests(requests))?;
        let out_of_range = LimitError::OutOfRange { requests, per_s };
        let period = per_s.checked_mul(MICROS_PER_SECOND).ok_or(out_of_range)?;
        let common = gcd(u64::from(requests), period);
        let per_token = period / common;
        let capacity = per_token.checked_mul(u64::from(requests)).ok_or(out_of_range)?;
        if capacity > MAX_CAPACITY {
            return Err(out_of_range);
        }
        Ok(Self { requests, per_s, per_token, rate: u64::from(requests) / common })
    }

    pub fn requests(&self) -> u32 {
        self.requests
    }

    pub fn per_s(&self) -> u64 {
        self.per_s
    }

    /// Units in a full bucket.
    pub fn capacity(&self) -> u64 {
        self.per_token * u64::from(self.requests)
    }

    /// Units added per microsecond.
    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// The units `hits` tokens cost. More than the bucket holds can never be admitted;
    /// it is sent as one unit over capacity, which the script refuses like any shortfall.
    pub fn cost(&self, hits: u64) -> u64 {
        match hits.checked_mul(self.per_token) {
            Some(cost) if cost <= self.capacity() => cost,
            _ => self.capacity() + 1,
        }
    }

    /// Whole tokens in `units`.
    pub fn tokens(&self, units: u64) -> u32 {
        u32::try_from(units / self.per_token).unwrap_or(self.requests)
    }

    /// Microseconds of refill until a bucket holding `units` holds `target` units.
    pub fn micros_until(&self, units: u64, target: u64) -> u64 {
        target.saturating_sub(units).div_ceil(self.rate)
    }

    /// The response's unit when the period is exactly one of them.
    pub fn unit(&self) -> Unit {
        match self.per_s {
            1 => Unit::Second,
            60 => Unit::Minute,
            3600 => Unit::Hour,
            86400 => Unit::Day,
            _ => Unit::Unknown,
        }
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn plans_of_the_spec_scale_exactly() {
        let burst = Limit::new(20, 10).unwrap();
        assert_eq!((burst.per_token, burst.rate, burst.capacity()), (500_000, 1, 10_000_000));
        let day = Limit::new(5000, 86400).unwrap();
        assert_eq!(day.capacity(), 86_400_000_000);
        assert_eq!(day.unit(), Unit::Day);
        assert_eq!(Limit::new(7, 10).unwrap().unit(), Unit::Unknown);
    }

    #[test]
    fn fast_buckets_refill_several_units_a_microsecond() {
        let fast = Limit::new(3_000_000, 1).unwrap();
        assert_eq!((fast.per_token, fast.rate), (1, 3));
        assert_eq!(fast.micros_until(0, 7), 3);
    }

    #[test]
    fn bounds_are_refused_with_reasons() {
        assert_eq!(Limit::new(0, 1), Err(LimitError::ZeroRequests));
        assert_eq!(Limit::new(1, 0), Err(LimitError::ZeroPeriod));
        assert_eq!(Limit::new(1 << 32, 1), Err(LimitError::TooManyRequests(1 << 32)));
        // Coprime with 10^6 and large: lcm is the product.
        assert!(matches!(Limit::new(4_294_967_291, 86400), Err(LimitError::OutOfRange { .. })));
        assert!(matches!(Limit::new(1, u64::MAX), Err(LimitError::OutOfRange { .. })));
        // The documented safe rule: requests × per_s ≤ 4.5·10^9.
        assert!(Limit::new(4_500_000_007, 1).is_err());
        assert!(Limit::new(999_983, 4500).is_ok());
        assert!(Limit::new(1, 4_503_599_627).is_ok());
        assert!(Limit::new(1, 4_503_599_628).is_err());
    }

    #[test]
    fn oversized_hits_cost_more_than_any_bucket_holds() {
        let limit = Limit::new(10, 1).unwrap();
        assert_eq!(limit.cost(10), limit.capacity());
        assert_eq!(limit.cost(11), limit.capacity() + 1);
        assert_eq!(limit.cost(u64::MAX), limit.capacity() + 1);
        assert_eq!(limit.cost(0), 0);
    }

    proptest! {
        #[test]
        fn accepted_limits_stay_exact(requests in 1u64..=u64::from(u32::MAX), per_s in 1u64..=10_000_000) {
            if let Ok(limit) = Limit::new(requests, per_s) {
                prop_assert!(limit.capacity() <= MAX_CAPACITY);
                // One period refills exactly the whole bucket.
                prop_assert_eq!(u128::from(limit.rate) * u128::from(per_s) * 1_000_000, u128::from(limit.capacity()));
                prop_assert_eq!(limit.tokens(limit.capacity()), limit.requests());
            } else {
                prop_assert!(requests.saturating_mul(per_s) > 4_500_000_000);
            }
        }
    }
}
