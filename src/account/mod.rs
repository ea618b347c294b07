//! Account names: the pattern every account must match and the reserved list.

mod plain;

use plain::Plain;
use regex_lite::Regex;
use std::collections::HashSet;

#[derive(Debug)]
pub struct AccountRules {
    pattern: Pattern,
    reserved: HashSet<String>,
}

/// Anchored at both ends whatever the configured text says: an account must
/// match as a whole, never merely contain a matching part.
#[derive(Debug)]
enum Pattern {
    Plain(Plain),
    Regex(Regex),
}

impl AccountRules {
    pub fn new(pattern: &str, reserved: impl IntoIterator<Item = String>) -> Result<Self, regex_lite::Error> {
        // Compiled either way: the regex is what accepts or refuses the text.
        let regex = Regex::new(&format!("^(?:{pattern})$"))?;
        let pattern = Plain::parse(pattern).map_or(Pattern::Regex(regex), Pattern::Plain);
        Ok(Self { pattern, reserved: reserved.into_iter().collect() })
    }

    pub fn is_valid(&self, account: &str) -> bool {
        match &self.pattern {
            Pattern::Plain(plain) => plain.is_match(account),
            Pattern::Regex(regex) => regex.is_match(account),
        }
    }

    pub fn is_reserved(&self, account: &str) -> bool {
        self.reserved.contains(account)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_pattern_and_whole_match() {
        let rules = AccountRules::new("^[a-z0-9][a-z0-9_-]{0,62}$", ["admin".to_string()]).unwrap();
        assert!(rules.is_valid("acme") && rules.is_valid("big_co-2"));
        assert!(!rules.is_valid("") && !rules.is_valid("Acme") && !rules.is_valid("-x"));
        assert!(!rules.is_valid(&"a".repeat(64)));
        let loose = AccountRules::new("[a-z]+", []).unwrap();
        assert!(loose.is_valid("acme") && !loose.is_valid("acme!") && !loose.is_valid("!acme"));
        assert!(rules.is_reserved("admin") && !rules.is_reserved("acme"));
    }
}
