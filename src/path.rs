//! The request path as upstream will understand it, or a refusal when
//! upstream servers could understand it in more than one way.
//!
//! Envoy forwards the path as the client spelled it (unless the connection
//! manager is told otherwise), and upstream servers decode it before routing:
//! `/%61dmin` and `/x/%2e%2e/admin` are `/admin` to Go, Spring, Flask, nginx
//! or IIS. Routes are therefore matched on [`canonical`]: query and fragment
//! cut off, percent-encoded unreserved characters decoded, dot-segments
//! resolved after decoding, repeated slashes merged. Spellings that servers
//! disagree on (encoded `/` or `\`, `;` parameters, double encoding, …) are
//! refused, so no route decision rests on a guess about the upstream.

use std::borrow::Cow;
use std::fmt;

/// Why a path is refused (decision row 0, `malformed_path`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MalformedPath {
    /// No path at all before the query or fragment.
    Empty,
    /// Neither `/…` nor `*`.
    NotAbsolute,
    /// `%` not followed by two hex digits.
    InvalidEscape,
    /// `%2F`: a segment separator to servers that decode before splitting, data to others.
    EncodedSlash,
    /// `%5C`: a separator to IIS and others once decoded.
    EncodedBackslash,
    /// A raw `\`: a separator to IIS, Windows hosts and some Java servers.
    Backslash,
    /// `;` or `%3B`: Java servers strip `;…` path parameters, others keep them.
    PathParameter,
    /// `%00`–`%1F` or `%7F`: truncates or splits the path in some servers.
    EncodedControl,
    /// `%3F` or `%23`: a query or fragment start to servers that decode before splitting.
    EncodedDelimiter,
    /// `%25` followed by two hex digits: a different path to servers that decode twice.
    DoubleEncoded,
    /// Encoded bytes that are not UTF-8, e.g. the overlong `%C0%AE` that old decoders read as `.`.
    NotUtf8,
    /// A raw space, control character or non-ASCII byte.
    RawByte,
    /// Letter case decides the route: case-insensitive servers (Express by
    /// default, IIS) serve it as the path another route protects.
    CaseDecidesRoute,
}

impl fmt::Display for MalformedPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MalformedPath::Empty => "empty path",
            MalformedPath::NotAbsolute => "path does not start with '/'",
            MalformedPath::InvalidEscape => "invalid percent-escape",
            MalformedPath::EncodedSlash => "encoded '/' (%2F)",
            MalformedPath::EncodedBackslash => "encoded '\\' (%5C)",
            MalformedPath::Backslash => "'\\' in path",
            MalformedPath::PathParameter => "';' path parameter",
            MalformedPath::EncodedControl => "encoded control character",
            MalformedPath::EncodedDelimiter => "encoded '?' or '#'",
            MalformedPath::DoubleEncoded => "double percent-encoding (%25 followed by hex)",
            MalformedPath::NotUtf8 => "encoded bytes are not UTF-8",
            MalformedPath::RawByte => "space, control or non-ASCII byte in path",
            MalformedPath::CaseDecidesRoute => "letter case decides the route",
        })
    }
}

impl std::error::Error for MalformedPath {}

/// The path routes are matched against: `raw` (a `:path` value) without its
/// query and fragment, with percent-encoded unreserved characters (RFC 3986:
/// letters, digits, `-` `.` `_` `~`) decoded, other escapes kept with
/// upper-case hex, dot-segments resolved (`..` above the root stays there)
/// and repeated slashes merged. `*` (OPTIONS) is its own path. Borrowed when
/// nothing changes, which is almost every request.
pub fn canonical(raw: &str) -> Result<Cow<'_, str>, MalformedPath> {
    let end = raw.bytes().position(|b| b == b'?' || b == b'#').unwrap_or(raw.len());
    let path = raw.get(..end).unwrap_or_default();
    if path == "*" {
        return Ok(Cow::Borrowed(path));
    }
    if path.is_empty() {
        return Err(MalformedPath::Empty);
    }
    if !path.starts_with('/') {
        return Err(MalformedPath::NotAbsolute);
    }
    let scan = scan(path)?;
    let decoded = if scan.decode { Cow::Owned(decode_unreserved(path)) } else { Cow::Borrowed(path) };
    if scan.percent && double_encoded(&decoded) {
        return Err(MalformedPath::DoubleEncoded);
    }
    if scan.high && !decodes_to_utf8(path) {
        return Err(MalformedPath::NotUtf8);
    }
    Ok(match decoded {
        Cow::Borrowed(p) if !scan.dots => Cow::Borrowed(p),
        Cow::Borrowed(p) => resolve(p).map_or(Cow::Borrowed(p), Cow::Owned),
        Cow::Owned(p) => Cow::Owned(resolve(&p).unwrap_or(p)),
    })
}

/// What one pass over the raw path found.
#[derive(Default)]
struct Scan {
    /// An escape to decode (unreserved) or to upper-case.
    decode: bool,
    /// A `%25`, which may start a double encoding once decoded.
    percent: bool,
    /// An escape of a byte ≥ 0x80, whose sequence must be UTF-8.
    high: bool,
    /// A raw empty, `.` or `..` segment (escapes are covered by `decode`).
    dots: bool,
}

fn scan(path: &str) -> Result<Scan, MalformedPath> {
    let mut found = Scan::default();
    // The current segment's length and how many of it are raw dots; the
    // path starts with `/`, which opens the first segment.
    let (mut length, mut dots) = (0u32, 0u32);
    let mut bytes = path.bytes().skip(1);
    while let Some(b) = bytes.next() {
        if b == b'/' {
            found.dots |= length == dots && length <= 2;
            (length, dots) = (0, 0);
            continue;
        }
        length = length.saturating_add(1);
        match b {
            b'.' => dots = dots.saturating_add(1),
            b'%' => {
                let (hi, lo) = (bytes.next(), bytes.next());
                let byte = hi.and_then(hex).zip(lo.and_then(hex)).map(|(h, l)| h << 4 | l);
                let byte = byte.ok_or(MalformedPath::InvalidEscape)?;
                refuse_encoded(byte)?;
                let lower = hi.is_some_and(|c| c.is_ascii_lowercase()) || lo.is_some_and(|c| c.is_ascii_lowercase());
                found.decode |= unreserved(byte) || lower;
                found.percent |= byte == b'%';
                found.high |= byte >= 0x80;
            }
            b'\\' => return Err(MalformedPath::Backslash),
            b';' => return Err(MalformedPath::PathParameter),
            b if b <= b' ' || b >= 0x7f => return Err(MalformedPath::RawByte),
            _ => {}
        }
    }
    found.dots |= length > 0 && length == dots && length <= 2;
    Ok(found)
}

fn refuse_encoded(byte: u8) -> Result<(), MalformedPath> {
    match byte {
        b'/' => Err(MalformedPath::EncodedSlash),
        b'\\' => Err(MalformedPath::EncodedBackslash),
        b';' => Err(MalformedPath::PathParameter),
        b'?' | b'#' => Err(MalformedPath::EncodedDelimiter),
        b if b < b' ' || b == 0x7f => Err(MalformedPath::EncodedControl),
        _ => Ok(()),
    }
}

fn hex(c: u8) -> Option<u8> {
    char::from(c).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

fn unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

/// Decodes escapes of unreserved characters and upper-cases the hex of the
/// others. Only called on a path [`scan`] accepted, so every `%` starts a
/// valid escape.
fn decode_unreserved(path: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(path.len());
    let mut bytes = path.bytes();
    while let Some(b) = bytes.next() {
        if b != b'%' {
            out.push(char::from(b));
            continue;
        }
        let byte = bytes.next().and_then(hex).zip(bytes.next().and_then(hex)).map_or(0, |(h, l)| h << 4 | l);
        if unreserved(byte) {
            out.push(char::from(byte));
        } else {
            out.push('%');
            for nibble in [byte >> 4, byte & 0xf] {
                out.push(HEX.get(usize::from(nibble)).map_or('0', |&c| char::from(c)));
            }
        }
    }
    out
}

/// `%25` followed by two hex digits: a server that decodes twice reads an
/// escape there. Checked after the first decoding, so `%25%34%31` counts.
fn double_encoded(decoded: &str) -> bool {
    decoded.match_indices("%25").any(|(at, _)| {
        let next = decoded.as_bytes().get(at + 3..at + 5).unwrap_or_default();
        next.len() == 2 && next.iter().all(u8::is_ascii_hexdigit)
    })
}

/// Whether the path, fully percent-decoded, is UTF-8 (raw bytes are ASCII).
fn decodes_to_utf8(path: &str) -> bool {
    let mut out = Vec::with_capacity(path.len());
    let mut bytes = path.bytes();
    while let Some(b) = bytes.next() {
        out.push(if b == b'%' {
            bytes.next().and_then(hex).zip(bytes.next().and_then(hex)).map_or(0, |(h, l)| h << 4 | l)
        } else {
            b
        });
    }
    std::str::from_utf8(&out).is_ok()
}

/// Merges repeated slashes and resolves `.` and `..`; `None` when there is
/// nothing to do. A trailing `/`, `/.` or `/..` leaves a trailing slash.
fn resolve(path: &str) -> Option<String> {
    let clean = !path.contains("//") && !path.split('/').any(|s| s == "." || s == "..");
    if clean {
        return None;
    }
    let mut segments: Vec<&str> = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let trailing = path.ends_with('/') || path.ends_with("/.") || path.ends_with("/..");
    let mut out = String::with_capacity(path.len());
    for segment in &segments {
        out.push('/');
        out.push_str(segment);
    }
    if trailing || segments.is_empty() {
        out.push('/');
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ok(raw: &str) -> String {
        canonical(raw).unwrap_or_else(|e| panic!("{raw}: {e}")).into_owned()
    }

    fn err(raw: &str) -> MalformedPath {
        canonical(raw).err().unwrap_or_else(|| panic!("{raw} accepted"))
    }

    #[test]
    fn clean_paths_are_borrowed() {
        for raw in
            ["/", "/v1/agents", "/v1/agents/7/", "/a.b/c-d_e~f", "/files/my%20doc", "/a%C3%A9", "/a+b", "/x?y=%2f"]
        {
            assert!(matches!(canonical(raw), Ok(Cow::Borrowed(_))), "{raw}");
        }
    }

    #[test]
    fn query_and_fragment_are_cut_first() {
        assert_eq!(ok("/v1/agents?x=/admin"), "/v1/agents");
        assert_eq!(ok("/v1/agents#/../admin"), "/v1/agents");
        assert_eq!(ok("/v1/agents?a=%zz;\\"), "/v1/agents");
        assert_eq!(ok("/v1/../admin?x"), "/admin");
        assert_eq!(err("?x=1"), MalformedPath::Empty);
        assert_eq!(err("#/admin"), MalformedPath::Empty);
    }

    #[test]
    fn unreserved_escapes_are_decoded_in_either_case() {
        assert_eq!(ok("/%61dmin"), "/admin");
        assert_eq!(ok("/%41%5a%30%39"), "/AZ09");
        assert_eq!(ok("/%2D%2e%5F%7e"), "/-._~");
        assert_eq!(ok("/%7Euser"), "/~user");
    }

    #[test]
    fn other_escapes_are_kept_with_upper_case_hex() {
        assert_eq!(ok("/files/my%20doc"), "/files/my%20doc");
        assert_eq!(ok("/a%3a%40%2b%c3%a9"), "/a%3A%40%2B%C3%A9");
        assert_eq!(ok("/50%25"), "/50%25");
        assert_eq!(ok("/50%25-off"), "/50%25-off");
        assert_eq!(ok("/a+b"), "/a+b");
    }

    #[test]
    fn dot_segments_are_resolved_after_decoding() {
        assert_eq!(ok("/public/../v1/admin"), "/v1/admin");
        assert_eq!(ok("/public/%2e%2e/admin"), "/admin");
        assert_eq!(ok("/public/%2E%2e/admin"), "/admin");
        assert_eq!(ok("/public/.%2e/admin"), "/admin");
        assert_eq!(ok("/public/%2e./admin"), "/admin");
        assert_eq!(ok("/v1/%2e/admin/"), "/v1/admin/");
        assert_eq!(ok("/v1/./admin/"), "/v1/admin/");
        assert_eq!(ok("/.."), "/");
        assert_eq!(ok("/../../%2e%2e/admin"), "/admin");
        assert_eq!(ok("/a/b/.."), "/a/");
        assert_eq!(ok("/a/b/%2e"), "/a/b/");
        assert_eq!(ok("/a/..."), "/a/...");
        assert_eq!(ok("/a/.b/..c"), "/a/.b/..c");
    }

    #[test]
    fn repeated_slashes_are_merged() {
        assert_eq!(ok("//v1//admin"), "/v1/admin");
        assert_eq!(ok("///"), "/");
        assert_eq!(ok("/v1/%2e//admin"), "/v1/admin");
    }

    #[test]
    fn star_is_its_own_path_and_others_must_be_absolute() {
        assert_eq!(ok("*"), "*");
        assert_eq!(err(""), MalformedPath::Empty);
        assert_eq!(err("v1/agents"), MalformedPath::NotAbsolute);
        assert_eq!(err("http://host/admin"), MalformedPath::NotAbsolute);
        assert_eq!(err("*/admin"), MalformedPath::NotAbsolute);
        assert_eq!(err("%2Fadmin"), MalformedPath::NotAbsolute);
    }

    #[test]
    fn ambiguous_spellings_are_refused() {
        use MalformedPath::*;
        let cases = [
            ("/a%2fb", EncodedSlash),
            ("/a%2Fb", EncodedSlash),
            ("/a%5cb", EncodedBackslash),
            ("/a%5Cb", EncodedBackslash),
            ("/a\\b", Backslash),
            ("/admin;x=1", PathParameter),
            ("/admin;", PathParameter),
            ("/admin%3bx", PathParameter),
            ("/admin%3B", PathParameter),
            ("/a%00", EncodedControl),
            ("/a%0a", EncodedControl),
            ("/a%1F", EncodedControl),
            ("/a%7f", EncodedControl),
            ("/a%3fadmin", EncodedDelimiter),
            ("/a%23admin", EncodedDelimiter),
            ("/a%", InvalidEscape),
            ("/a%2", InvalidEscape),
            ("/a%g1", InvalidEscape),
            ("/a%%41", InvalidEscape),
            ("/a%u002e", InvalidEscape),
            ("/%252e%252e/admin", DoubleEncoded),
            ("/a%252f", DoubleEncoded),
            ("/a%255c", DoubleEncoded),
            ("/%2561dmin", DoubleEncoded),
            ("/a%2525", DoubleEncoded),
            ("/a%25%32%65", DoubleEncoded),
            ("/a%25%34%31", DoubleEncoded),
            ("/a%c0%ae", NotUtf8),
            ("/a%c0%af", NotUtf8),
            ("/a%e9", NotUtf8),
            ("/a%ed%a0%80", NotUtf8),
            ("/a b", RawByte),
            ("/a\tb", RawByte),
            ("/a\u{7f}", RawByte),
            ("/caf\u{e9}", RawByte),
            ("/a\0", RawByte),
        ];
        for (raw, why) in cases {
            assert_eq!(canonical(raw), Err(why), "{raw}");
        }
    }

    #[test]
    fn errors_name_the_reason() {
        assert_eq!(MalformedPath::EncodedSlash.to_string(), "encoded '/' (%2F)");
        assert_eq!(MalformedPath::DoubleEncoded.to_string(), "double percent-encoding (%25 followed by hex)");
    }

    fn is_hex(s: &str) -> bool {
        s.len() == 2 && s.bytes().all(|b| b.is_ascii_hexdigit())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        #[test]
        fn outputs_are_canonical_and_idempotent(raw in "[/a.%2eEfF5cC3bB0-9;\\\\?#~ -]{0,24}") {
            if let Ok(out) = canonical(&raw) {
                let out = out.into_owned();
                prop_assert_eq!(canonical(&out).map(Cow::into_owned), Ok(out.clone()));
                if out != "*" {
                    prop_assert!(out.starts_with('/'));
                    let slashed = format!("{out}/");
                    prop_assert!(!slashed.contains("/./") && !slashed.contains("/../") && !out.contains("//"));
                    prop_assert!(!out.contains('\\') && !out.contains(';'));
                    for escape in out.split('%').skip(1) {
                        let digits = escape.get(..2).unwrap_or_default();
                        prop_assert!(is_hex(digits) && digits == digits.to_ascii_uppercase());
                        let byte = u8::from_str_radix(digits, 16).unwrap();
                        prop_assert!(!unreserved(byte) && refuse_encoded(byte).is_ok(), "{}", out);
                    }
                }
            }
        }

        #[test]
        fn arbitrary_input_never_panics(raw in ".{0,40}") {
            let _ = canonical(&raw);
        }
    }
}
