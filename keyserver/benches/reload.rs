//! `cargo bench -p edge-auth-keyserver --bench reload`: from a key-set
//! file's atomic replacement (one more key revoked) to the answer of a long
//! poll held on the version before, through `edge-auth keys serve` on
//! loopback, with 10,000 and 100,000 keys. Prints p50 and max per size; the
//! server's own log lines (stderr) split each reload into parse and
//! compare-and-check. The clock starts before the rename, so the figures
//! include the filesystem's rename (its median is printed beside them).

#![allow(clippy::unwrap_used, clippy::panic)]

use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

const ROUNDS: usize = 21;

fn main() {
    println!("{:>8} {:>10} {:>10} {:>16}", "keys", "p50 ms", "max ms", "rename p50 ms");
    for size in [10_000, 100_000] {
        let (mut ms, mut renames) = rounds(size);
        let (p50, max) = (median(&mut ms), ms.last().copied().unwrap_or(f64::NAN));
        println!("{size:>8} {p50:>10.1} {max:>10.1} {:>16.1}", median(&mut renames));
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Latencies of `ROUNDS` revocations in a set of `size` keys, and how long
/// the renames themselves took (the filesystem's part), in ms.
fn rounds(size: usize) -> (Vec<f64>, Vec<f64>) {
    let dir = tempfile_dir(size);
    let file = dir.join("keyset.json");
    let records: Vec<String> = (0..size)
        .map(|i| {
            let hash: String = Sha256::digest(format!("key {i}")).iter().map(|b| format!("{b:02x}")).collect();
            format!(r#"{{"id":"key_{i}","hash":"{hash}","org":"org_1","account":"acme"}}"#)
        })
        .collect();
    let prefix = format!(r#"{{"version":"b","keys":[{}],"revoked":["#, records.join(","));
    let write = |revoked: &[String]| {
        let next = dir.join(".next");
        // Written and synced first, as atomic writers do: the rename is then
        // the change, not the filesystem's flush of a 13 MB file.
        let mut out = std::fs::File::create(&next).unwrap();
        out.write_all(format!("{prefix}{}]}}", revoked.join(",")).as_bytes()).unwrap();
        out.sync_all().unwrap();
        next
    };
    std::fs::rename(write(&[]), &file).unwrap();
    let addr = free_addr();
    let (file_arg, listen) = (file.display().to_string(), addr.to_string());
    std::thread::spawn(move || {
        let args = ["--file", file_arg.as_str(), "--listen", listen.as_str()];
        if let Err(e) = edge_auth_keyserver::main(&args) {
            eprintln!("{e}");
        }
    });
    let mut etag = ready(addr);
    let mut revoked = Vec::new();
    let (mut ms, mut renames) = (Vec::new(), Vec::new());
    for n in 0..ROUNDS {
        revoked.push(format!("\"key_{n}\""));
        let next = write(&revoked);
        let held = std::thread::spawn({
            let etag = etag.clone();
            move || get(addr, Some(&etag))
        });
        std::thread::sleep(Duration::from_millis(100)); // held by now
        let start = Instant::now();
        std::fs::rename(next, &file).unwrap();
        renames.push(start.elapsed().as_secs_f64() * 1000.0);
        let (status, tag) = held.join().unwrap();
        ms.push(start.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(status, 200, "a change answers the held poll");
        etag = tag;
    }
    let _ = std::fs::remove_dir_all(&dir);
    (ms, renames)
}

fn tempfile_dir(size: usize) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("edge-auth-reload-bench-{}-{size}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// The first ETag, once the server answers.
fn ready(addr: SocketAddr) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        if TcpStream::connect(addr).is_ok() {
            return get(addr, None).1;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("keys serve did not start");
}

/// A GET as the filter sends it (a long poll when `etag` is given): the
/// status and the ETag of the answer, read whole.
fn get(addr: SocketAddr, etag: Option<&str>) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    let held = etag.map(|e| format!("if-none-match: {e}\r\nprefer: wait=30\r\n")).unwrap_or_default();
    let request = format!("GET /v1/edge/keys HTTP/1.1\r\nhost: k\r\n{held}connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    let text = String::from_utf8_lossy(&answer);
    let head = text.split("\r\n\r\n").next().unwrap_or_default();
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let etag = head
        .lines()
        .find_map(|l| l.strip_prefix("etag: ").or_else(|| l.strip_prefix("ETag: ")))
        .unwrap_or_default()
        .to_owned();
    (status, etag)
}
