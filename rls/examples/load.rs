//! Throughput of one in-process `edge-auth rls` instance against a running Redis:
//! `cargo run -p edge-auth-rls --example load -- [REDIS_URL] [REQUESTS] [CONCURRENCY]`
//! (defaults `redis://127.0.0.1:6379 20000 64`). Each request charges one bucket of
//! one of 1000 callers, as the filter does for a plan with one global bucket.

use edge_auth_rls::proto::rate_limit_service_client::RateLimitServiceClient;
use edge_auth_rls::proto::{Entry, RateLimitDescriptor, RateLimitRequest};
use edge_auth_rls::Options;
use std::time::Instant;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let redis = args.first().cloned().unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    let total: usize = args.get(1).map_or(Ok(20_000), |n| n.parse())?;
    let concurrency: usize = args.get(2).map_or(Ok(64), |n| n.parse())?;

    let options = Options { listen: "127.0.0.1:0".parse()?, redis: vec![redis], metrics: None };
    let listening = edge_auth_rls::bind(&options).await?;
    let addr = listening.grpc_addr().ok_or("no address")?;
    tokio::spawn(listening.serve(std::future::pending()));
    let client = RateLimitServiceClient::connect(format!("http://{addr}")).await?;

    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|worker| {
            let mut client = client.clone();
            tokio::spawn(async move {
                let (mut ok, mut over) = (0usize, 0usize);
                for i in (worker..total).step_by(concurrency) {
                    let answer = client.should_rate_limit(request(i % 1000)).await?.into_inner();
                    if answer.overall_code == 1 {
                        ok += 1;
                    } else {
                        over += 1;
                    }
                }
                Ok::<_, tonic::Status>((ok, over))
            })
        })
        .collect();
    let (mut ok, mut over) = (0, 0);
    for worker in workers {
        let (o, v) = worker.await??;
        (ok, over) = (ok + o, over + v);
    }
    let took = started.elapsed();
    println!(
        "{total} requests, {concurrency} concurrent: {:.0} requests/s ({ok} OK, {over} OVER_LIMIT) in {took:.2?}",
        total as f64 / took.as_secs_f64()
    );
    Ok(())
}

fn request(caller: usize) -> RateLimitRequest {
    let entry = |key: &str, value: String| Entry { key: key.into(), value };
    RateLimitRequest {
        domain: "edge-auth".into(),
        descriptors: vec![RateLimitDescriptor {
            entries: vec![
                entry("edge_auth_caller", format!("load-{caller}")),
                entry("edge_auth_bucket", "standard.day".into()),
                entry("requests", "5000".into()),
                entry("per_s", "86400".into()),
            ],
            limit: None,
            hits_addend: None,
        }],
        hits_addend: 0,
    }
}
