//! The key-set file as bytes: where each record lies in it, without
//! parsing the records. Comparing a new file's records with the last good
//! one's, byte for byte, tells which few to parse and check.

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::ops::Range;
use std::sync::Arc;

/// The key-set file: a key server's whole answer, `version` optional.
/// Records stay raw: only those that changed are parsed.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDoc<'a> {
    version: Option<String>,
    #[serde(borrow)]
    keys: Vec<&'a RawValue>,
    #[serde(default)]
    revoked: Vec<String>,
}

/// A file's content: its bytes and where each record lies in them.
#[derive(Debug, Default)]
pub struct Content {
    pub version: Option<String>,
    bytes: Bytes,
    /// Shared with the file before when its records were found unchanged
    /// in place ([`Content::parse_after`]).
    spans: Arc<[Range<usize>]>,
    pub revoked: Vec<String>,
}

impl Content {
    /// Reads a file's structure (one pass over it; the records are only
    /// checked to be JSON values).
    pub fn parse(bytes: Bytes) -> Result<Self, String> {
        let doc: FileDoc<'_> = serde_json::from_slice(&bytes).map_err(|e| format!("not a key-set file: {e}"))?;
        let base = bytes.as_ptr() as usize;
        let spans = doc
            .keys
            .iter()
            .map(|raw| {
                let start = (raw.get().as_ptr() as usize).checked_sub(base)?;
                let span = start..start.checked_add(raw.get().len())?;
                bytes.get(span.clone()).is_some().then_some(span)
            })
            .collect::<Option<Arc<[_]>>>()
            .ok_or("records outside the file")?;
        let (version, revoked) = (doc.version, doc.revoked);
        Ok(Self { version, bytes, spans, revoked })
    }

    /// Reads a new file, passing over its records when they are the same
    /// bytes in the same place as in `old` (a change after them, such as a
    /// revocation appended): only the rest of the file is parsed.
    pub fn parse_after(old: &Content, bytes: Bytes) -> Result<Self, String> {
        match Self::same_records(old, &bytes) {
            Some(content) => Ok(content),
            None => Self::parse(bytes),
        }
    }

    fn same_records(old: &Content, bytes: &Bytes) -> Option<Self> {
        let (first, last) = (old.spans.first()?, old.spans.last()?);
        // Every byte up to the end of the last record is the old file's, so
        // a parser reading the new file is, there, where it was in the old
        // one: inside `keys`, at the same records. The rest is checked by
        // parsing the file with the records cut out: it is a file with no
        // record only if what follows the cut closes `keys` (no record added
        // after them, no second `keys`).
        if bytes.get(..last.end)? != old.bytes.get(..last.end)? {
            return None;
        }
        let (head, tail) = (bytes.get(..first.start)?, bytes.get(last.end..)?);
        let skeleton = [head, tail].concat();
        let doc: FileDoc<'_> = serde_json::from_slice(&skeleton).ok()?;
        if !doc.keys.is_empty() {
            return None;
        }
        Some(Self { version: doc.version, bytes: bytes.clone(), spans: Arc::clone(&old.spans), revoked: doc.revoked })
    }

    /// Each record's JSON text, in file order.
    pub fn records(&self) -> impl DoubleEndedIterator<Item = &[u8]> + ExactSizeIterator {
        self.spans.iter().map(|span| self.bytes.get(span.clone()).unwrap_or_default())
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// The bytes of the records, commas between them, as a whole answer
    /// holds them.
    pub fn records_len(&self) -> usize {
        self.spans.iter().map(ExactSizeIterator::len).sum::<usize>() + self.spans.len().saturating_sub(1)
    }
}

/// Where two files' records differ: records `start..old_end` of the old one
/// became records `start..new_end` of the new one; those before and after
/// are the same bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    pub start: usize,
    pub old_end: usize,
    pub new_end: usize,
}

impl Window {
    /// The common records at both ends, compared byte for byte: one change,
    /// an insertion or a removal (or several close together) leave a window
    /// of a few records, however large the set.
    pub fn between(old: &Content, new: &Content) -> Self {
        if Arc::ptr_eq(&old.spans, &new.spans) {
            return Self { start: old.len(), old_end: old.len(), new_end: new.len() };
        }
        let start = old.records().zip(new.records()).take_while(|(a, b)| a == b).count();
        let most = old.len().min(new.len()).saturating_sub(start);
        let end = old.records().rev().zip(new.records().rev()).take(most).take_while(|(a, b)| a == b).count();
        Self { start, old_end: old.len().saturating_sub(end), new_end: new.len().saturating_sub(end) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content(records: &[&str]) -> Content {
        let file = format!(r#"{{ "keys": [ {} ], "revoked": ["x"] }}"#, records.join(" , "));
        Content::parse(Bytes::from(file)).unwrap()
    }

    #[test]
    fn records_are_found_in_place() {
        let c = content(&[r#"{"id":"a"}"#, r#"{"id": "b"}"#]);
        assert_eq!(c.records().collect::<Vec<_>>(), [&br#"{"id":"a"}"#[..], br#"{"id": "b"}"#]);
        assert_eq!(c.records_len(), 10 + 1 + 11);
        assert_eq!(c.revoked, ["x"]);
        assert!(Content::parse(Bytes::from_static(b"{\"keys\":[1,]}")).is_err());
        assert!(Content::parse(Bytes::from_static(b"{\"keys\":[],\"other\":1}")).is_err());
    }

    #[test]
    fn records_in_place_are_not_parsed_again() {
        let old = content(&[r#"{"id":"a"}"#, r#"{"id":"b"}"#]);
        let file = |tail: &str| Bytes::from(format!(r#"{{ "keys": [ {{"id":"a"}} , {{"id":"b"}}{tail}"#));
        let again = Content::same_records(&old, &file(r#" ], "revoked": ["x", "y"] }"#)).unwrap();
        assert_eq!(again.revoked, ["x", "y"]);
        assert_eq!(Window::between(&old, &again), Window { start: 2, old_end: 2, new_end: 2 }, "known unchanged");
        assert!(Content::same_records(&old, &file(r#", {"id":"c"} ], "revoked": [] }"#)).is_none(), "one added");
        assert!(Content::same_records(&old, &file(r#" ], "keys": [] }"#)).is_none());
        assert!(Content::same_records(&old, &file(r#" ], "revoked": [1] }"#)).is_none());
        let added = Content::parse_after(&old, file(r#", {"id":"c"} ] }"#)).unwrap();
        assert_eq!(added.len(), 3, "parsed whole");
        assert!(Content::parse_after(&old, file(r#" ], "revoked": [1] }"#)).is_err());
    }

    #[test]
    fn the_window_covers_what_changed() {
        let (a, b, c, d) = ("1", "2", "3", "4");
        let window = |old: &[&str], new: &[&str]| {
            let w = Window::between(&content(old), &content(new));
            (w.start, w.old_end, w.new_end)
        };
        assert_eq!(window(&[a, b, c], &[a, b, c]), (3, 3, 3));
        assert_eq!(window(&[a, b, c], &[a, d, c]), (1, 2, 2), "one changed");
        assert_eq!(window(&[a, b, c], &[a, b, d, c]), (2, 2, 3), "one inserted");
        assert_eq!(window(&[a, b, c], &[a, c]), (1, 2, 1), "one removed");
        assert_eq!(window(&[a, a], &[a, a, a]), (2, 2, 3), "ends never overlap");
        assert_eq!(window(&[], &[a, b]), (0, 0, 2));
        assert_eq!(window(&[a, b, c, d], &[d, b, c, a]), (0, 4, 4), "far apart: all between");
    }
}
