//! The bodies this server sends: the whole set and changes since a version.
//! Every answer body is written here.

use crate::file::Content;
use bytes::{BufMut, Bytes, BytesMut};
use edge_auth::config::KeyChangesDoc;
use serde::Serialize;

#[derive(Serialize)]
struct ChangesAnswer<'a> {
    version: &'a str,
    base: &'a str,
    changes: &'a KeyChangesDoc,
}

/// `{"version","base","changes"}`.
pub fn changes(version: &str, base: &str, changes: &KeyChangesDoc) -> Option<Bytes> {
    serde_json::to_vec(&ChangesAnswer { version, base, changes }).ok().map(Bytes::from)
}

/// `{"version","keys","revoked"}`: the file's records as written (they
/// were checked when loaded), framed with the served version.
pub fn whole(version: &str, content: &Content) -> Bytes {
    let (head, tail) = frame(version, content);
    let mut body = BytesMut::with_capacity(head.len() + content.records_len() + tail.len());
    body.put_slice(head.as_bytes());
    for (i, record) in content.records().enumerate() {
        if i > 0 {
            body.put_u8(b',');
        }
        body.put_slice(record);
    }
    body.put_slice(tail.as_bytes());
    body.freeze()
}

/// The length of [`whole`], without writing it.
pub fn whole_len(version: &str, content: &Content) -> usize {
    let (head, tail) = frame(version, content);
    head.len() + content.records_len() + tail.len()
}

/// The whole answer in pages of at most `page_keys` records: every page
/// but the last names the next (`<n>.<version>`), and the revoked ids
/// travel with the first. One page when the set fits in one.
pub fn pages(version: &str, content: &Content, page_keys: usize) -> Vec<Bytes> {
    let records: Vec<&[u8]> = content.records().collect();
    if records.len() <= page_keys.max(1) {
        return vec![whole(version, content)];
    }
    let chunks: Vec<&[&[u8]]> = records.chunks(page_keys.max(1)).collect();
    let count = chunks.len();
    let quoted = serde_json::to_string(version).unwrap_or_default();
    chunks
        .into_iter()
        .enumerate()
        .map(|(n, chunk)| {
            let revoked =
                if n == 0 { serde_json::to_string(&content.revoked).unwrap_or_default() } else { "[]".into() };
            let next = if n + 1 < count {
                format!(r#","next":{}"#, serde_json::to_string(&format!("{}.{version}", n + 1)).unwrap_or_default())
            } else {
                String::new()
            };
            let size: usize = chunk.iter().map(|r| r.len() + 1).sum();
            let mut body = BytesMut::with_capacity(size + quoted.len() + revoked.len() + next.len() + 40);
            body.put_slice(format!(r#"{{"version":{quoted},"keys":["#).as_bytes());
            for (i, record) in chunk.iter().enumerate() {
                if i > 0 {
                    body.put_u8(b',');
                }
                body.put_slice(record);
            }
            body.put_slice(format!(r#"],"revoked":{revoked}{next}}}"#).as_bytes());
            body.freeze()
        })
        .collect()
}

/// What comes before and after the records.
fn frame(version: &str, content: &Content) -> (String, String) {
    // Strings always serialise.
    let version = serde_json::to_string(version).unwrap_or_default();
    let revoked = serde_json::to_string(&content.revoked).unwrap_or_default();
    (format!(r#"{{"version":{version},"keys":["#), format!(r#"],"revoked":{revoked}}}"#))
}
