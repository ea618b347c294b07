//! Token buckets as GCRA (generic cell rate algorithm), in exact integers.
//!
//! A bucket of `requests` tokens refilling at `requests / per_s` per second is
//! the same as a GCRA with emission interval `per_s / requests` and a burst of
//! `requests`. Its whole state is one instant, the theoretical arrival time
//! (TAT). Time is kept in units of `1 / requests` nanoseconds, so the emission
//! interval is the integer `per_s × 10⁹` and nothing ever drifts by rounding.
//! All arithmetic is `u128` and saturating: with `requests ≤ 2⁴⁰` and Unix
//! nanoseconds below 2⁶⁴ no product can exceed 2¹²⁸.

use super::plan::Bucket;

const NANOS: u128 = 1_000_000_000;

/// One bucket's state: the TAT in scaled units. Zero is a full bucket.
pub type Tat = u128;

/// What a bucket says about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Draw {
    /// Admitted: the new TAT and what is left.
    Admit { tat: Tat, remaining: u64, full_in_ns: u128 },
    /// Refused: nanoseconds until one token is back.
    Refuse { retry_in_ns: u128 },
}

#[derive(Debug, Clone, Copy)]
pub struct Gcra {
    requests: u128,
    /// Emission interval, scaled: `per_s × 10⁹`.
    interval: u128,
}

impl Gcra {
    pub fn new(bucket: &Bucket) -> Self {
        Self { requests: u128::from(bucket.requests.get()), interval: u128::from(bucket.per_s.get()) * NANOS }
    }

    pub fn capacity(&self) -> u64 {
        u64::try_from(self.requests).unwrap_or(u64::MAX)
    }

    fn scaled(&self, now_ns: u64) -> u128 {
        u128::from(now_ns).saturating_mul(self.requests)
    }

    /// The burst tolerance: a full bucket's worth of intervals.
    fn tolerance(&self) -> u128 {
        self.interval.saturating_mul(self.requests)
    }

    /// Takes one token at `now_ns` if there is one.
    pub fn check(&self, tat: Tat, now_ns: u64) -> Draw {
        let now = self.scaled(now_ns);
        let next = tat.max(now).saturating_add(self.interval);
        let ahead = next - now;
        if ahead > self.tolerance() {
            let retry = ahead - self.tolerance();
            return Draw::Refuse { retry_in_ns: retry.div_ceil(self.requests) };
        }
        let remaining = (self.tolerance() - ahead) / self.interval;
        Draw::Admit {
            tat: next,
            remaining: u64::try_from(remaining).unwrap_or(u64::MAX),
            full_in_ns: ahead.div_ceil(self.requests),
        }
    }

    /// The TAT before a token taken by [`Gcra::check`] was taken.
    pub fn give_back(&self, tat: Tat) -> Tat {
        tat.saturating_sub(self.interval)
    }

    /// Tokens left and nanoseconds until full, without taking one.
    pub fn peek(&self, tat: Tat, now_ns: u64) -> (u64, u128) {
        let ahead = tat.saturating_sub(self.scaled(now_ns)).min(self.tolerance());
        let remaining = (self.tolerance() - ahead) / self.interval;
        (u64::try_from(remaining).unwrap_or(u64::MAX), ahead.div_ceil(self.requests))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::num::NonZeroU64;

    fn gcra(requests: u64, per_s: u64) -> Gcra {
        Gcra::new(&Bucket {
            name: "b".into(),
            requests: NonZeroU64::new(requests).unwrap(),
            per_s: NonZeroU64::new(per_s).unwrap(),
        })
    }

    /// Runs requests at the given instants; returns how many were admitted.
    fn admitted(g: &Gcra, times: &[u64]) -> u64 {
        let mut tat = 0;
        let mut count = 0;
        for &t in times {
            if let Draw::Admit { tat: next, .. } = g.check(tat, t) {
                tat = next;
                count += 1;
            }
        }
        count
    }

    const T0: u64 = 1_800_000_000 * 1_000_000_000;

    #[test]
    fn a_full_bucket_admits_exactly_its_size_in_a_burst() {
        let g = gcra(20, 10);
        assert_eq!(admitted(&g, &[T0; 100]), 20);
        let mut tat = 0;
        for expected in (0..20).rev() {
            let Draw::Admit { tat: next, remaining, .. } = g.check(tat, T0) else { panic!() };
            assert_eq!(remaining, expected);
            tat = next;
        }
        // The 21st waits one interval: 10 s / 20 = 0.5 s.
        assert_eq!(g.check(tat, T0), Draw::Refuse { retry_in_ns: 500_000_000 });
        assert!(matches!(g.check(tat, T0 + 500_000_000), Draw::Admit { remaining: 0, .. }));
    }

    #[test]
    fn tokens_come_back_continuously() {
        let g = gcra(100, 60);
        let mut tat = 0;
        for _ in 0..100 {
            let Draw::Admit { tat: next, .. } = g.check(tat, T0) else { panic!() };
            tat = next;
        }
        assert!(matches!(g.check(tat, T0), Draw::Refuse { .. }));
        // 0.6 s later exactly one token is back.
        let later = T0 + 600_000_000;
        let Draw::Admit { tat: next, remaining: 0, .. } = g.check(tat, later) else { panic!() };
        assert!(matches!(g.check(next, later), Draw::Refuse { .. }));
        assert_eq!(g.peek(tat, T0 + 60_000_000_000), (100, 0));
        assert_eq!(g.peek(tat, T0 + 59_400_000_000), (99, 600_000_000));
    }

    #[test]
    fn uneven_rates_do_not_drift() {
        // 3 per 10 s: an interval of 3.333… s, kept exact.
        let g = gcra(3, 10);
        let day: Vec<u64> = (0..86_400u64).map(|s| T0 + s * 1_000_000_000).collect();
        assert_eq!(admitted(&g, &day), 3 + 86_400 * 3 / 10 - 1);
    }

    proptest! {
        /// Never more than capacity + rate × elapsed.
        #[test]
        fn never_admits_more_than_the_bound(
            requests in 1u64..1_000,
            per_s in 1u64..100_000,
            gaps in prop::collection::vec(0u64..2_000_000_000, 1..400),
        ) {
            let g = gcra(requests, per_s);
            let mut t = T0;
            let times: Vec<u64> = gaps.iter().map(|gap| { t += gap; t }).collect();
            let elapsed_ns = u128::from(t - T0);
            let bound = u128::from(requests) + u128::from(requests) * elapsed_ns / (u128::from(per_s) * NANOS);
            prop_assert!(u128::from(admitted(&g, &times)) <= bound);
        }

        /// Waiting never makes a request less admissible; remaining never exceeds capacity.
        #[test]
        fn refill_is_monotonic(requests in 1u64..1_000, per_s in 1u64..1_000, burst in 0u64..2_000, wait in 0u64..10_000_000_000) {
            let g = gcra(requests, per_s);
            let mut tat = 0;
            for _ in 0..burst {
                if let Draw::Admit { tat: next, .. } = g.check(tat, T0) { tat = next; }
            }
            let remaining = |v| match v { Draw::Admit { remaining, .. } => Some(remaining), Draw::Refuse { .. } => None };
            let now = remaining(g.check(tat, T0));
            let later = remaining(g.check(tat, T0 + wait));
            prop_assert!(later >= now);
            prop_assert!(later.unwrap_or(0) < requests);
        }

        /// Extreme sizes and times neither overflow nor panic.
        #[test]
        fn extremes_are_safe(requests in 1u64..=(1 << 40), per_s in 1u64..=(366 * 86_400), now in any::<u64>(), tat in any::<u128>()) {
            let g = gcra(requests, per_s);
            let _ = g.check(tat, now);
            let _ = g.peek(tat, now);
        }
    }
}
