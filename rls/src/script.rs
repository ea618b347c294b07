//! The charging script (`charge.lua`) and its reply.

use crate::descriptor::Charge;
use std::fmt;

const SOURCE: &str = include_str!("charge.lua");

/// The script, sent by SHA (EVALSHA) and loaded on NOSCRIPT.
pub struct ChargeScript(redis::Script);

/// What the script did: whether the request was admitted, and each bucket's units
/// before this request's charge, in descriptor order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub admitted: bool,
    pub before: Vec<u64>,
}

/// A reply that is not what `charge.lua` returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadReply(Vec<i64>);

impl fmt::Display for BadReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unexpected script reply {:?}", self.0)
    }
}

impl Default for ChargeScript {
    fn default() -> Self {
        Self(redis::Script::new(SOURCE))
    }
}

impl ChargeScript {
    pub fn invocation(&self, charges: &[Charge]) -> redis::ScriptInvocation<'_> {
        invocation(&self.0, charges)
    }
}

fn invocation<'a>(script: &'a redis::Script, charges: &[Charge]) -> redis::ScriptInvocation<'a> {
    let mut invocation = script.prepare_invoke();
    for charge in charges {
        let limit = &charge.limit;
        invocation.key(&charge.key).arg(limit.capacity()).arg(limit.rate()).arg(limit.cost(charge.hits));
    }
    invocation
}

impl Outcome {
    pub fn from_reply(reply: Vec<i64>, descriptors: usize) -> Result<Self, BadReply> {
        let decoded = match reply.split_first() {
            Some((&flag, units)) if (flag == 0 || flag == 1) && units.len() == descriptors => units
                .iter()
                .map(|&u| u64::try_from(u).ok())
                .collect::<Option<Vec<_>>>()
                .map(|before| Self { admitted: flag == 1, before }),
            _ => None,
        };
        decoded.ok_or(BadReply(reply))
    }
}

/// The script with its clock read from an extra last argument instead of Redis's
/// `TIME`, so tests can drive it through any sequence of instants; its keys live an
/// hour longer, since Redis expires them by its real clock. Never used in production.
#[cfg(test)]
pub struct FakeClockScript(redis::Script);

#[cfg(test)]
impl FakeClockScript {
    pub fn new() -> Self {
        const CLOCK: &str = "local now = tonumber(time[1]) * 1000000 + tonumber(time[2])";
        const EXPIRY: &str = "ceil_div(until_full, 1000)";
        assert!(SOURCE.contains(CLOCK) && SOURCE.contains(EXPIRY), "charge.lua changed under the tests");
        let source = SOURCE.replace(CLOCK, "local now = tonumber(ARGV[#ARGV])");
        Self(redis::Script::new(&source.replace(EXPIRY, "3600000 + ceil_div(until_full, 1000)")))
    }

    pub fn charge(&self, con: &mut redis::Connection, charges: &[Charge], now: u64) -> Outcome {
        let reply = invocation(&self.0, charges).arg(now).invoke(con).unwrap();
        Outcome::from_reply(reply, charges.len()).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_decode_only_when_well_formed() {
        assert_eq!(Outcome::from_reply(vec![1, 5, 0], 2), Ok(Outcome { admitted: true, before: vec![5, 0] }));
        assert_eq!(Outcome::from_reply(vec![0, 5], 1), Ok(Outcome { admitted: false, before: vec![5] }));
        assert!(Outcome::from_reply(vec![1, 5], 2).is_err());
        assert!(Outcome::from_reply(vec![2, 5], 1).is_err());
        assert!(Outcome::from_reply(vec![1, -5], 1).is_err());
        assert!(Outcome::from_reply(vec![], 0).is_err());
    }
}
