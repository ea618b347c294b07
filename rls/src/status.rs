//! The answer to a request, from the script's outcome.

use crate::descriptor::Charge;
use crate::limit::Limit;
use crate::proto::{Code, DescriptorStatus, Duration, RateLimit, RateLimitResponse};
use crate::script::Outcome;

const MICROS_PER_SECOND: u64 = 1_000_000;

pub fn response(charges: &[Charge], outcome: &Outcome) -> RateLimitResponse {
    let statuses =
        charges.iter().zip(&outcome.before).map(|(charge, &before)| status(charge, before, outcome.admitted));
    let overall = if outcome.admitted { Code::Ok } else { Code::OverLimit };
    RateLimitResponse { overall_code: overall as i32, statuses: statuses.collect() }
}

/// `limit_remaining`: whole tokens left after this request (nothing is taken from a
/// refused request). `duration_until_reset`: when the descriptor fits, the time until
/// its bucket is full again; when it does not, the time until it would fit (for a cost
/// above the bucket's size, which never fits, the time until it is full).
fn status(charge: &Charge, before: u64, admitted: bool) -> DescriptorStatus {
    let limit: &Limit = &charge.limit;
    let cost = limit.cost(charge.hits);
    let fits = before >= cost;
    let after = if admitted { before - cost } else { before };
    let wait = if fits || cost > limit.capacity() {
        limit.micros_until(after, limit.capacity())
    } else {
        limit.micros_until(before, cost)
    };
    DescriptorStatus {
        code: if fits { Code::Ok } else { Code::OverLimit } as i32,
        current_limit: Some(RateLimit {
            name: charge.bucket.clone(),
            requests_per_unit: limit.requests(),
            unit: limit.unit() as i32,
        }),
        limit_remaining: limit.tokens(after),
        duration_until_reset: Some(duration(wait)),
    }
}

fn duration(micros: u64) -> Duration {
    Duration {
        seconds: i64::try_from(micros / MICROS_PER_SECOND).unwrap_or(i64::MAX),
        // Below 10^9, so it fits.
        nanos: i32::try_from(micros % MICROS_PER_SECOND * 1000).unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Unit;

    fn charge(requests: u64, per_s: u64, hits: u64) -> Charge {
        Charge {
            caller: "c".into(),
            bucket: "plan.b".into(),
            limit: Limit::new(requests, per_s).unwrap(),
            hits,
            key: "k".into(),
        }
    }

    fn micros(d: &Option<Duration>) -> i64 {
        let d = d.unwrap();
        d.seconds * 1_000_000 + i64::from(d.nanos) / 1000
    }

    #[test]
    fn admitted_reports_tokens_left_and_time_to_full() {
        // 10 per second: one token is 100 ms of refill.
        let c = charge(10, 1, 1);
        let full = c.limit.capacity();
        let r = response(&[c], &Outcome { admitted: true, before: vec![full] });
        assert_eq!(r.overall_code, Code::Ok as i32);
        let s = &r.statuses[0];
        assert_eq!((s.code, s.limit_remaining), (Code::Ok as i32, 9));
        assert_eq!(micros(&s.duration_until_reset), 100_000);
        assert_eq!(
            s.current_limit,
            Some(RateLimit { name: "plan.b".into(), requests_per_unit: 10, unit: Unit::Second as i32 })
        );
    }

    #[test]
    fn refused_reports_time_until_it_would_fit_and_takes_nothing() {
        let (tight, roomy) = (charge(10, 1, 3), charge(100, 60, 1));
        let per_token = tight.limit.capacity() / 10;
        // 2.5 tokens in the tight bucket: 3 more need half a token, 50 ms.
        let before = vec![per_token * 5 / 2, roomy.limit.capacity()];
        let r = response(&[tight, roomy], &Outcome { admitted: false, before });
        assert_eq!(r.overall_code, Code::OverLimit as i32);
        assert_eq!((r.statuses[0].code, r.statuses[0].limit_remaining), (Code::OverLimit as i32, 2));
        assert_eq!(micros(&r.statuses[0].duration_until_reset), 50_000);
        // The roomy bucket fit; it was not charged and stays full.
        assert_eq!((r.statuses[1].code, r.statuses[1].limit_remaining), (Code::Ok as i32, 100));
        assert_eq!(micros(&r.statuses[1].duration_until_reset), 0);
        assert_eq!(r.statuses[1].current_limit.as_ref().unwrap().unit, Unit::Minute as i32);
    }

    #[test]
    fn a_cost_above_the_bucket_waits_for_a_full_bucket() {
        let c = charge(10, 1, 11);
        let r = response(&[c], &Outcome { admitted: false, before: vec![0] });
        assert_eq!(r.statuses[0].code, Code::OverLimit as i32);
        assert_eq!(micros(&r.statuses[0].duration_until_reset), 1_000_000);
    }

    #[test]
    fn durations_split_seconds_and_nanos() {
        assert_eq!(duration(86_400_000_001), Duration { seconds: 86_400, nanos: 1000 });
    }
}
