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

/// What comes before and after the records.
fn frame(version: &str, content: &Content) -> (String, String) {
    // Strings always serialise.
    let version = serde_json::to_string(version).unwrap_or_default();
    let revoked = serde_json::to_string(&content.revoked).unwrap_or_default();
    (format!(r#"{{"version":{version},"keys":["#), format!(r#"],"revoked":{revoked}}}"#))
}
