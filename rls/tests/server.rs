//! `edge-auth rls` against one real redis-server, with several instances.

// Test code throughout, helpers included (clippy.toml allows these in #[test] fns only).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

#[path = "support/service.rs"]
mod service;
mod support;

use edge_auth_rls::proto::{Code, RateLimitOverride, Unit};
use service::{admitted, admitted_remaining, ask, bucket, burst, descriptor, request, Instance};
use std::time::{Duration, Instant};
use support::Redis;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_of_n_admits_exactly_n_of_a_burst_across_instances() {
    let redis = Redis::start();
    let instances = [
        Instance::start(&[redis.url()]).await,
        Instance::start(&[redis.url()]).await,
        Instance::start(&[redis.url()]).await,
    ];
    // 50 an hour: nothing refills during the test.
    let answers = burst(&instances, 200, request(vec![bucket("key_01", "standard.hour", 50, 3600)])).await;
    assert_eq!(admitted_remaining(&answers), (0..50).collect::<Vec<u32>>());
    let refused = answers.iter().filter(|a| !admitted(a)).count();
    assert_eq!(refused, 150);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_is_charged_all_or_nothing_and_a_refusal_takes_nothing() {
    let redis = Redis::start();
    let instance = Instance::start(&[redis.url()]).await;
    let mut client = instance.client().await;
    let both = || request(vec![bucket("k", "p.wide", 5, 3600), bucket("k", "p.narrow", 3, 3600)]);
    for left in [(4, 2), (3, 1), (2, 0)] {
        let answer = ask(&mut client, both()).await;
        assert!(admitted(&answer));
        assert_eq!((answer.statuses[0].limit_remaining, answer.statuses[1].limit_remaining), left);
    }
    let refused = ask(&mut client, both()).await;
    assert_eq!(refused.overall_code, Code::OverLimit as i32);
    // The wide bucket had room and says so, but gave nothing to a refused request.
    assert_eq!((refused.statuses[0].code, refused.statuses[0].limit_remaining), (Code::Ok as i32, 2));
    assert_eq!((refused.statuses[1].code, refused.statuses[1].limit_remaining), (Code::OverLimit as i32, 0));
    let wide = ask(&mut client, request(vec![bucket("k", "p.wide", 5, 3600)])).await;
    assert!(admitted(&wide));
    assert_eq!(wide.statuses[0].limit_remaining, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hits_addend_from_the_request_or_the_descriptor() {
    let redis = Redis::start();
    let instance = Instance::start(&[redis.url()]).await;
    let mut client = instance.client().await;
    let mut seven = request(vec![bucket("k", "p.b", 10, 3600)]);
    seven.hits_addend = 7;
    let answer = ask(&mut client, seven.clone()).await;
    assert_eq!((admitted(&answer), answer.statuses[0].limit_remaining), (true, 3));
    // 7 more do not fit: refused, and the 3 left stay.
    let answer = ask(&mut client, seven.clone()).await;
    assert_eq!((admitted(&answer), answer.statuses[0].limit_remaining), (false, 3));
    // The descriptor's own count wins over the request's.
    seven.descriptors[0].hits_addend = Some(2);
    let answer = ask(&mut client, seven.clone()).await;
    assert_eq!((admitted(&answer), answer.statuses[0].limit_remaining), (true, 1));
    // Zero looks without charging.
    seven.descriptors[0].hits_addend = Some(0);
    let answer = ask(&mut client, seven.clone()).await;
    assert_eq!((admitted(&answer), answer.statuses[0].limit_remaining), (true, 1));
    // More than the bucket holds never fits; the wait is until it is full.
    seven.descriptors[0].hits_addend = Some(11);
    let answer = ask(&mut client, seven).await;
    assert!(!admitted(&answer));
    let wait = answer.statuses[0].duration_until_reset.unwrap();
    assert!((3239..=3240).contains(&wait.seconds), "{wait:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn domains_and_callers_are_kept_apart() {
    let redis = Redis::start();
    let instance = Instance::start(&[redis.url()]).await;
    let mut client = instance.client().await;
    let one = |domain: &str, caller: &str| {
        let mut r = request(vec![bucket(caller, "p.b", 1, 3600)]);
        r.domain = domain.into();
        r
    };
    assert!(admitted(&ask(&mut client, one("edge-auth", "a")).await));
    assert!(!admitted(&ask(&mut client, one("edge-auth", "a")).await));
    assert!(admitted(&ask(&mut client, one("other", "a")).await));
    assert!(admitted(&ask(&mut client, one("edge-auth", "b")).await));
    // On one server a request may name several callers.
    let two = request(vec![bucket("c", "p.b", 1, 3600), bucket("d", "p.b", 1, 3600)]);
    assert!(admitted(&ask(&mut client, two).await));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buckets_refill_continuously_and_say_when() {
    let redis = Redis::start();
    let instance = Instance::start(&[redis.url()]).await;
    let mut client = instance.client().await;
    // 10 a second: a token every 100 ms.
    let r = || request(vec![bucket("k", "p.fast", 10, 1)]);
    for _ in 0..10 {
        assert!(admitted(&ask(&mut client, r()).await));
    }
    let started = Instant::now();
    let refused = ask(&mut client, r()).await;
    assert!(!admitted(&refused));
    let wait = refused.statuses[0].duration_until_reset.unwrap();
    assert_eq!(wait.seconds, 0);
    assert!(wait.nanos > 0 && wait.nanos <= 100_000_000, "{wait:?}");
    tokio::time::sleep(Duration::from_nanos(wait.nanos as u64).saturating_sub(started.elapsed())).await;
    let again = ask(&mut client, r()).await;
    assert!(admitted(&again), "refilled after the announced wait");
    assert_eq!(again.statuses[0].limit_remaining, 0);
    // On OK, the time until full: about 10 tokens of 100 ms.
    let full = again.statuses[0].duration_until_reset.unwrap();
    assert!(full.seconds == 0 && full.nanos > 900_000_000, "{full:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_expire_when_their_bucket_would_be_full() {
    let redis = Redis::start();
    let instance = Instance::start(&[redis.url()]).await;
    let mut client = instance.client().await;
    assert!(admitted(&ask(&mut client, request(vec![bucket("k", "p.day", 5000, 86400)])).await));
    let ttl = redis.command("PTTL rl:{edge-auth:k}:p.day:5000/86400").unwrap();
    let ttl: u64 = ttl.trim().trim_start_matches(':').parse().unwrap();
    // One token of 5000 a day refills in 17.28 s.
    assert!((17_000..=17_280).contains(&ttl), "{ttl}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoys_native_filter_descriptors_and_limit_override() {
    let redis = Redis::start();
    let instance = Instance::start(&[redis.url()]).await;
    let mut client = instance.client().await;
    // What `generic_key`/`request_headers` actions with `descriptor_key` produce,
    // the limit given by the descriptor's override instead of entries.
    let mut d = descriptor(&[("edge_auth_caller", "10.0.0.1"), ("edge_auth_bucket", "native.minute")]);
    d.limit = Some(RateLimitOverride { requests_per_unit: 2, unit: Unit::Minute as i32 });
    let answers = [ask(&mut client, request(vec![d.clone()])).await, ask(&mut client, request(vec![d.clone()])).await];
    assert!(answers.iter().all(admitted));
    let limit = answers[0].statuses[0].current_limit.clone().unwrap();
    assert_eq!((limit.name.as_str(), limit.requests_per_unit, limit.unit), ("native.minute", 2, Unit::Minute as i32));
    assert!(!admitted(&ask(&mut client, request(vec![d])).await));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_descriptors_are_invalid_argument() {
    let redis = Redis::start();
    let instance = Instance::start(&[redis.url()]).await;
    let mut client = instance.client().await;
    let bad = request(vec![descriptor(&[("edge_auth_caller", "k"), ("edge_auth_bucket", "b"), ("requests", "10")])]);
    let status = client.should_rate_limit(bad).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(status.message(), "descriptors[0]: entry per_s is missing");
    let status = client.should_rate_limit(request(vec![bucket("k", "b", 0, 1)])).await.unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (tonic::Code::InvalidArgument, "descriptors[0]: requests must be at least 1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_is_unavailable_in_bounded_time() {
    let mut redis = Redis::start();
    let instance = Instance::start(&[redis.url()]).await;
    let mut client = instance.client().await;
    let r = || request(vec![bucket("k", "p.b", 100, 3600)]);
    assert!(admitted(&ask(&mut client, r()).await));
    redis.stop();
    let started = Instant::now();
    let status = client.should_rate_limit(r()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_metrics_and_drain() {
    let redis = Redis::start();
    let instance = Instance::start(&[redis.url()]).await;
    let mut client = instance.client().await;
    assert!(admitted(&ask(&mut client, request(vec![bucket("k", "p.b", 1, 3600)])).await));
    assert!(!admitted(&ask(&mut client, request(vec![bucket("k", "p.b", 1, 3600)])).await));
    let _ = client.should_rate_limit(request(vec![])).await.unwrap_err();

    let channel =
        tonic::transport::Channel::from_shared(format!("http://{}", instance.addr)).unwrap().connect().await.unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    for service in ["", "envoy.service.ratelimit.v3.RateLimitService"] {
        let answer = health.check(tonic_health::pb::HealthCheckRequest { service: service.into() }).await.unwrap();
        assert_eq!(answer.into_inner().status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
    }

    let text = scrape(instance.metrics).await;
    for line in [
        "edge_auth_rls_requests_total{answer=\"ok\"} 1\n",
        "edge_auth_rls_requests_total{answer=\"over_limit\"} 1\n",
        "edge_auth_rls_requests_total{answer=\"invalid_argument\"} 1\n",
        "edge_auth_rls_redis_seconds_count 2\n",
    ] {
        assert!(text.contains(line), "{line} not in\n{text}");
    }
    drop(client);
    drop(health);
    tokio::time::timeout(Duration::from_secs(5), instance.stop()).await.unwrap().unwrap();
}

async fn scrape(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).await.unwrap();
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    text
}
