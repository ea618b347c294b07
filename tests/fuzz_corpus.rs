//! Replays every input the fuzzers kept (fuzz/corpus/<target>/) through the
//! same entry points, so a fixed finding stays fixed.

// A test crate: failing loudly on a missing corpus is the point.
#![allow(clippy::unwrap_used, clippy::panic)]

use std::fs;
use std::path::Path;

fn replay(target: &str, entry: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let mut count = 0;
    for file in fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = file.unwrap().path();
        entry(&fs::read(&path).unwrap());
        count += 1;
    }
    assert!(count > 0, "no corpus for {target}");
}

#[test]
fn credential_corpus() {
    replay("credential", edge_auth::fuzzing::credential);
}

#[test]
fn decision_corpus() {
    replay("decision", edge_auth::fuzzing::decision);
}

#[test]
fn jwt_corpus() {
    replay("jwt", edge_auth::fuzzing::jwt);
}

#[test]
fn path_corpus() {
    replay("path", edge_auth::fuzzing::path);
}

#[test]
fn policy_corpus() {
    replay("policy", edge_auth::fuzzing::policy_document);
}

#[test]
fn source_answer_corpus() {
    replay("source_answer", edge_auth::fuzzing::source_answer);
}

#[test]
fn session_token_corpus() {
    replay("session_token", edge_auth::fuzzing::session_token);
}

#[test]
fn signature_header_corpus() {
    replay("signature_header", edge_auth::fuzzing::signature_header);
}
