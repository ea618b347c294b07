//! What the server has served and loaded, as Prometheus text on `GET /metrics`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

#[derive(Default)]
pub struct Metrics {
    whole: AtomicU64,
    changes: AtomicU64,
    not_modified: AtomicU64,
    long_polls: AtomicU64,
    waiting: AtomicU64,
    reloads: AtomicU64,
    refused: AtomicU64,
    keys: AtomicU64,
    revoked: AtomicU64,
}

/// What a request was answered with.
#[derive(Clone, Copy, Debug)]
pub enum Served {
    Whole,
    Changes,
    NotModified,
}

impl Metrics {
    pub fn served(&self, answer: Served) {
        match answer {
            Served::Whole => &self.whole,
            Served::Changes => &self.changes,
            Served::NotModified => &self.not_modified,
        }
        .fetch_add(1, Relaxed);
    }

    /// A long poll starts waiting; the guard counts it out when dropped.
    pub fn wait(&self) -> Waiting<'_> {
        self.long_polls.fetch_add(1, Relaxed);
        self.waiting.fetch_add(1, Relaxed);
        Waiting(self)
    }

    pub fn loaded(&self, keys: usize, revoked: usize) {
        self.reloads.fetch_add(1, Relaxed);
        self.keys.store(u64::try_from(keys).unwrap_or(u64::MAX), Relaxed);
        self.revoked.store(u64::try_from(revoked).unwrap_or(u64::MAX), Relaxed);
    }

    pub fn refused(&self) {
        self.refused.fetch_add(1, Relaxed);
    }

    /// Prometheus text exposition format 0.0.4.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, values: &[(&str, &AtomicU64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in values {
                let _ = writeln!(out, "{name}{labels} {}", value.load(Relaxed));
            }
        };
        metric(
            "edge_auth_keyserver_answers_total",
            "counter",
            "Answers to key-set requests, by kind.",
            &[
                ("{answer=\"whole\"}", &self.whole),
                ("{answer=\"changes\"}", &self.changes),
                ("{answer=\"not_modified\"}", &self.not_modified),
            ],
        );
        metric(
            "edge_auth_keyserver_long_polls_total",
            "counter",
            "Requests held until a change or the wait.",
            &[("", &self.long_polls)],
        );
        metric("edge_auth_keyserver_waiting", "gauge", "Long polls held now.", &[("", &self.waiting)]);
        metric(
            "edge_auth_keyserver_reloads_total",
            "counter",
            "Key-set files loaded, by result.",
            &[("{result=\"ok\"}", &self.reloads), ("{result=\"refused\"}", &self.refused)],
        );
        metric("edge_auth_keyserver_keys", "gauge", "Keys in the set served.", &[("", &self.keys)]);
        metric("edge_auth_keyserver_revoked", "gauge", "Revoked key ids in the set served.", &[("", &self.revoked)]);
        out
    }
}

pub struct Waiting<'a>(&'a Metrics);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition() {
        let m = Metrics::default();
        m.served(Served::Changes);
        m.loaded(3, 1);
        m.refused();
        {
            let _held = m.wait();
            assert!(m.render().contains("edge_auth_keyserver_waiting 1\n"));
        }
        let text = m.render();
        assert!(text.contains("edge_auth_keyserver_answers_total{answer=\"changes\"} 1\n"), "{text}");
        assert!(text.contains("edge_auth_keyserver_waiting 0\n"));
        assert!(text.contains("edge_auth_keyserver_long_polls_total 1\n"));
        assert!(text.contains("edge_auth_keyserver_reloads_total{result=\"refused\"} 1\n"));
        assert!(text.contains("edge_auth_keyserver_keys 3\n"));
    }
}
