//! `edge-auth rls` against a three-node Redis Cluster started by the test.

// Test code throughout, helpers included (clippy.toml allows these in #[test] fns only).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

#[path = "support/service.rs"]
mod service;
mod support;

use service::{admitted, admitted_remaining, ask, bucket, burst, request, Instance};
use support::Cluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_is_exact_and_keeps_each_caller_in_one_slot() {
    let cluster = Cluster::start();
    let seeds: Vec<String> = cluster.nodes.iter().map(|n| n.url()).collect();
    // Both spellings of a cluster: one redis+cluster:// URL, or several seed URLs.
    let instances = [Instance::start(&[cluster.url()]).await, Instance::start(&seeds).await];

    let answers = burst(&instances, 120, request(vec![bucket("key_01", "standard.hour", 40, 3600)])).await;
    assert_eq!(admitted_remaining(&answers), (0..40).collect::<Vec<u32>>());

    // Callers spread over the nodes' slots; each caller's two buckets share a slot.
    let mut client = instances[1].client().await;
    for caller in 0..30 {
        let caller = format!("caller-{caller}");
        let both = || request(vec![bucket(&caller, "p.minute", 2, 60), bucket(&caller, "p.hour", 3, 3600)]);
        assert!(admitted(&ask(&mut client, both()).await));
        assert!(admitted(&ask(&mut client, both()).await));
        let third = ask(&mut client, both()).await;
        assert!(!admitted(&third));
        assert_eq!(third.statuses[1].limit_remaining, 1, "the hour bucket gave nothing to the refusal");
    }
    let keys: usize = cluster
        .nodes
        .iter()
        .map(|n| n.command("DBSIZE").unwrap().trim().trim_start_matches(':').parse::<usize>().unwrap())
        .sum();
    assert_eq!(keys, 61);
    assert!(cluster.nodes.iter().all(|n| n.command("DBSIZE").unwrap().trim() != ":0"), "callers spread over nodes");

    // Two callers cannot be charged atomically across slots: refused, never half done.
    let two = request(vec![bucket("a", "p.b", 5, 60), bucket("b", "p.b", 5, 60)]);
    let status = client.should_rate_limit(two).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("several callers"), "{}", status.message());
}
