//! Stand-ins for host tests, benchmarks and fuzzing; never in the module.

use crate::config::Environment;

/// An environment in which every variable holds the same value (a pepper,
/// a session key, or `""` for "set but empty").
pub struct EveryVar(pub &'static str);

impl Environment for EveryVar {
    fn var(&self, _: &str) -> Option<String> {
        Some(self.0.to_owned())
    }
}

/// An environment with exactly these variables.
pub struct OnlyVars(pub &'static [(&'static str, &'static str)]);

impl Environment for OnlyVars {
    fn var(&self, name: &str) -> Option<String> {
        self.0.iter().find(|(n, _)| *n == name).map(|(_, value)| (*value).to_owned())
    }
}
