//! Counters and Redis latency, served as Prometheus text on `GET /metrics`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Upper bounds of the Redis latency buckets, in microseconds.
const LATENCY_BOUNDS_US: [u64; 10] = [250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 100_000, 250_000, 1_000_000];
/// A scrape's request head must arrive within this and fit in `MAX_HEAD`.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_HEAD: usize = 8192;

#[derive(Default)]
pub struct Metrics {
    ok: AtomicU64,
    over_limit: AtomicU64,
    invalid: AtomicU64,
    errors: AtomicU64,
    latency: [AtomicU64; LATENCY_BOUNDS_US.len()],
    latency_count: AtomicU64,
    latency_sum_us: AtomicU64,
}

/// How a call ended.
#[derive(Clone, Copy, Debug)]
pub enum Answer {
    Ok,
    OverLimit,
    Invalid,
    Error,
}

impl Metrics {
    pub fn count(&self, answer: Answer) {
        let counter = match answer {
            Answer::Ok => &self.ok,
            Answer::OverLimit => &self.over_limit,
            Answer::Invalid => &self.invalid,
            Answer::Error => &self.errors,
        };
        counter.fetch_add(1, Relaxed);
    }

    pub fn observe_redis(&self, took: Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        for (bound, bucket) in LATENCY_BOUNDS_US.iter().zip(&self.latency) {
            if us <= *bound {
                bucket.fetch_add(1, Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Relaxed);
        self.latency_sum_us.fetch_add(us, Relaxed);
    }

    /// Prometheus text exposition format 0.0.4.
    pub fn render(&self) -> String {
        let (ok, over, invalid, errors) = (
            self.ok.load(Relaxed),
            self.over_limit.load(Relaxed),
            self.invalid.load(Relaxed),
            self.errors.load(Relaxed),
        );
        let mut out = String::new();
        let _ = writeln!(out, "# HELP edge_auth_rls_requests_total ShouldRateLimit calls, by answer.");
        let _ = writeln!(out, "# TYPE edge_auth_rls_requests_total counter");
        for (answer, n) in [("ok", ok), ("over_limit", over), ("invalid_argument", invalid), ("error", errors)] {
            let _ = writeln!(out, "edge_auth_rls_requests_total{{answer=\"{answer}\"}} {n}");
        }
        let _ = writeln!(out, "# HELP edge_auth_rls_redis_seconds Time of one charging script call to Redis.");
        let _ = writeln!(out, "# TYPE edge_auth_rls_redis_seconds histogram");
        for (bound, bucket) in LATENCY_BOUNDS_US.iter().zip(&self.latency) {
            let le = *bound as f64 / 1e6;
            let _ = writeln!(out, "edge_auth_rls_redis_seconds_bucket{{le=\"{le}\"}} {}", bucket.load(Relaxed));
        }
        let count = self.latency_count.load(Relaxed);
        let _ = writeln!(out, "edge_auth_rls_redis_seconds_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "edge_auth_rls_redis_seconds_sum {}", self.latency_sum_us.load(Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "edge_auth_rls_redis_seconds_count {count}");
        out
    }
}

/// Answers scrapes one connection at a time (a scrape is rare and small) until the
/// task is dropped.
pub async fn serve(listener: TcpListener, metrics: &Metrics) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        // A slow or broken scraper only delays the next scrape, never the service.
        let _ = tokio::time::timeout(READ_TIMEOUT, answer(stream, metrics)).await;
    }
}

async fn answer(mut stream: TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(chunk.get(..n).unwrap_or_default());
    }
    let (status, content_type, body) = if head.starts_with(b"GET /metrics ") || head.starts_with(b"GET /metrics?") {
        ("200 OK", "text/plain; version=0.0.4", metrics.render())
    } else {
        ("404 Not Found", "text/plain", "not found; try GET /metrics\n".to_owned())
    };
    let reply = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(reply.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_counts_answers_and_latency() {
        let metrics = Metrics::default();
        metrics.count(Answer::Ok);
        metrics.count(Answer::Ok);
        metrics.count(Answer::OverLimit);
        metrics.observe_redis(Duration::from_micros(300));
        metrics.observe_redis(Duration::from_secs(2));
        let text = metrics.render();
        assert!(text.contains("edge_auth_rls_requests_total{answer=\"ok\"} 2\n"), "{text}");
        assert!(text.contains("edge_auth_rls_requests_total{answer=\"over_limit\"} 1\n"));
        assert!(text.contains("edge_auth_rls_requests_total{answer=\"error\"} 0\n"));
        assert!(text.contains("edge_auth_rls_redis_seconds_bucket{le=\"0.00025\"} 0\n"));
        assert!(text.contains("edge_auth_rls_redis_seconds_bucket{le=\"0.0005\"} 1\n"));
        assert!(text.contains("edge_auth_rls_redis_seconds_bucket{le=\"1\"} 1\n"));
        assert!(text.contains("edge_auth_rls_redis_seconds_bucket{le=\"+Inf\"} 2\n"));
        assert!(text.contains("edge_auth_rls_redis_seconds_count 2\n"));
    }
}
