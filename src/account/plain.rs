//! Account patterns that need no regex machine: character classes with fixed
//! repeat counts, only the last one ranged, as the default
//! `^[a-z0-9][a-z0-9_-]{0,62}$`. Such a pattern decides a name in one pass
//! over its bytes, where regex-lite's backtracking-free machine costs about
//! 0.7 µs a request inside Envoy. Any other pattern stays with the regex.

/// The ASCII bytes a position admits, as bits.
type Class = u128;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Atom {
    class: Class,
    min: usize,
    max: usize,
}

impl Atom {
    fn admits(&self, byte: u8) -> bool {
        byte < 128 && self.class >> byte & 1 == 1
    }

    fn admits_all(&self, bytes: &[u8]) -> bool {
        bytes.iter().all(|&b| self.admits(b))
    }
}

/// A pattern every atom of which but the last repeats a fixed number of
/// times: where each atom's text starts is then known without searching.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plain {
    fixed: Vec<Atom>,
    last: Option<Atom>,
}

impl Plain {
    /// `None` for anything outside the plain form (the regex decides then).
    /// Anchors at the ends change nothing: a name must match whole anyway.
    pub fn parse(pattern: &str) -> Option<Self> {
        let body = pattern.strip_prefix('^').unwrap_or(pattern);
        let body = body.strip_suffix('$').unwrap_or(body);
        let mut chars = body.chars().peekable();
        let mut atoms = Vec::new();
        while let Some(c) = chars.next() {
            let class = match c {
                '[' => class(&mut chars)?,
                c if is_plain_literal(c) => bit(c)?,
                _ => return None,
            };
            let (min, max) = quantifier(&mut chars)?;
            atoms.push(Atom { class, min, max });
        }
        let last = atoms.pop();
        atoms.iter().all(|a| a.min == a.max).then_some(Self { fixed: atoms, last })
    }

    pub fn is_match(&self, name: &str) -> bool {
        let mut rest = name.as_bytes();
        for atom in &self.fixed {
            let Some((head, tail)) = rest.split_at_checked(atom.min) else { return false };
            if !atom.admits_all(head) {
                return false;
            }
            rest = tail;
        }
        match &self.last {
            Some(last) => (last.min..=last.max).contains(&rest.len()) && last.admits_all(rest),
            None => rest.is_empty(),
        }
    }
}

/// Letters, digits and `_` mean themselves in and out of classes; `-`
/// means itself outside one.
fn is_plain_literal(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

fn bit(c: char) -> Option<Class> {
    let code = u32::from(c);
    (code < 128).then(|| 1 << code)
}

/// The rest of a `[...]` class: letters, digits, `_`, `.` and ranges
/// between letters or digits; `-` only first or last. Negation, escapes,
/// nested classes and set operations are left to the regex.
fn class(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Option<Class> {
    let mut class: Class = 0;
    let mut first = true;
    loop {
        let c = chars.next()?;
        match c {
            ']' if !first => return Some(class),
            '-' if first || chars.peek() == Some(&']') => class |= bit('-')?,
            c if c.is_ascii_alphanumeric() || c == '_' || c == '.' => {
                if chars.peek() == Some(&'-') {
                    let mut ahead = chars.clone();
                    ahead.next();
                    match ahead.next()? {
                        ']' => class |= bit(c)?,
                        end if c.is_ascii_alphanumeric() && end.is_ascii_alphanumeric() && c <= end => {
                            *chars = ahead;
                            for code in u32::from(c)..=u32::from(end) {
                                class |= bit(char::from_u32(code)?)?;
                            }
                        }
                        _ => return None,
                    }
                } else {
                    class |= bit(c)?;
                }
            }
            _ => return None,
        }
        first = false;
    }
}

/// `?`, `*`, `+`, `{m}`, `{m,}`, `{m,n}` or none; a lazy `?` after one, or
/// a malformed count, is left to the regex.
fn quantifier(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Option<(usize, usize)> {
    let range = match chars.peek() {
        Some('?') => (0, 1),
        Some('*') => (0, usize::MAX),
        Some('+') => (1, usize::MAX),
        Some('{') => {
            chars.next();
            let mut text = String::new();
            loop {
                match chars.next()? {
                    '}' => break,
                    c if c.is_ascii_digit() || c == ',' => text.push(c),
                    _ => return None,
                }
            }
            let (min, max) = match text.split_once(',') {
                None => (text.parse().ok()?, text.parse().ok()?),
                Some((min, "")) => (min.parse().ok()?, usize::MAX),
                Some((min, max)) => (min.parse().ok()?, max.parse().ok()?),
            };
            if min > max || chars.peek() == Some(&'?') {
                return None;
            }
            return Some((min, max));
        }
        _ => return Some((1, 1)),
    };
    chars.next();
    if matches!(chars.peek(), Some('?' | '*' | '+' | '{')) {
        return None;
    }
    Some(range)
}

#[cfg(test)]
mod tests {
    use super::*;
    use regex_lite::Regex;

    const PLAIN: &[&str] = &[
        "^[a-z0-9][a-z0-9_-]{0,62}$",
        "[a-z]+",
        "[a-z]{3,8}",
        "acct_[0-9]{4}",
        "[A-Z][a-z]*",
        "[-a-z]{2}[._0-9-]?",
        "x",
        "",
        "^$",
        "[a-c]{0}[0-9]{1,}",
    ];

    const NOT_PLAIN: &[&str] =
        &["[a-z]+[0-9]", "(a|b)", "[^a-z]+", "[a-z&&b]", r"\d+", ".*", "a{2,1}", "a+?", "[a--z]", "[z-a]", "[:alpha:]"];

    #[test]
    fn recognises_the_plain_form_only() {
        for pattern in PLAIN {
            assert!(Plain::parse(pattern).is_some(), "{pattern}");
        }
        for pattern in NOT_PLAIN {
            assert_eq!(Plain::parse(pattern), None, "{pattern}");
        }
    }

    /// Every plain pattern decides exactly as the anchored regex on names
    /// made of letters, digits, punctuation and non-ASCII characters.
    #[test]
    fn agrees_with_the_regex() {
        let alphabet: Vec<char> = "azAZ09_-.!é\u{0}ẞ ".chars().collect();
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        for pattern in PLAIN {
            let plain = Plain::parse(pattern).unwrap();
            let regex = Regex::new(&format!("^(?:{pattern})$")).unwrap();
            let mut seen = [false; 2];
            for _ in 0..20_000 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let len = (seed % 12) as usize;
                let name: String =
                    (0..len).map(|i| alphabet[((seed >> (i * 5 % 60)) as usize) % alphabet.len()]).collect();
                assert_eq!(plain.is_match(&name), regex.is_match(&name), "{pattern} on {name:?}");
                seen[usize::from(regex.is_match(&name))] = true;
            }
            for name in ["", "acme", "a", "x", "acct_0042", "Abc", "-a.", "7", &"a".repeat(63), &"a".repeat(64)] {
                assert_eq!(plain.is_match(name), regex.is_match(name), "{pattern} on {name:?}");
                seen[usize::from(regex.is_match(name))] = true;
            }
            assert_eq!(seen, [true, true], "{pattern}: both answers tried");
        }
    }
}
