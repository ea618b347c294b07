//! In-process `edge-auth rls` instances and a client for them.

#![allow(dead_code)] // each test binary uses a different part

use edge_auth_rls::proto::rate_limit_service_client::RateLimitServiceClient;
use edge_auth_rls::proto::{Code, Entry, RateLimitDescriptor, RateLimitRequest, RateLimitResponse};
use edge_auth_rls::Options;
use std::net::SocketAddr;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

pub type Client = RateLimitServiceClient<Channel>;

/// A running instance; drains and stops when dropped or `stop`ped.
pub struct Instance {
    pub addr: SocketAddr,
    pub metrics: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), edge_auth_rls::Error>>>,
}

impl Instance {
    pub async fn start(redis: &[String]) -> Self {
        let loopback = "127.0.0.1:0".parse().unwrap();
        let options = Options { listen: loopback, redis: redis.to_vec(), metrics: Some(loopback) };
        let listening = edge_auth_rls::bind(&options).await.unwrap();
        let (addr, metrics) = (listening.grpc_addr().unwrap(), listening.metrics_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(listening.serve(async {
            let _ = stopped.await;
        }));
        Self { addr, metrics, stop: Some(stop), task: Some(task) }
    }

    pub async fn client(&self) -> Client {
        RateLimitServiceClient::connect(format!("http://{}", self.addr)).await.unwrap()
    }

    /// Signals shutdown and waits for the drain to finish.
    pub async fn stop(mut self) -> Result<(), edge_auth_rls::Error> {
        let _ = self.stop.take().map(|s| s.send(()));
        self.task.take().unwrap().await.unwrap()
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.stop.take().map(|s| s.send(()));
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Our filter's descriptor for one bucket.
pub fn bucket(caller: &str, bucket: &str, requests: u64, per_s: u64) -> RateLimitDescriptor {
    descriptor(&[
        ("edge_auth_caller", caller),
        ("edge_auth_bucket", bucket),
        ("requests", &requests.to_string()),
        ("per_s", &per_s.to_string()),
    ])
}

pub fn descriptor(entries: &[(&str, &str)]) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: entries.iter().map(|(k, v)| Entry { key: (*k).into(), value: (*v).into() }).collect(),
        limit: None,
        hits_addend: None,
    }
}

pub fn request(descriptors: Vec<RateLimitDescriptor>) -> RateLimitRequest {
    RateLimitRequest { domain: "edge-auth".into(), descriptors, hits_addend: 0 }
}

pub async fn ask(client: &mut Client, request: RateLimitRequest) -> RateLimitResponse {
    client.should_rate_limit(request).await.unwrap().into_inner()
}

pub fn admitted(response: &RateLimitResponse) -> bool {
    response.overall_code == Code::Ok as i32
}

/// Fires `total` identical requests at once, spread round-robin over `instances`, and
/// returns the answers.
pub async fn burst(instances: &[Instance], total: usize, request: RateLimitRequest) -> Vec<RateLimitResponse> {
    let mut clients = Vec::new();
    for instance in instances {
        clients.push(instance.client().await);
    }
    let calls = (0..total).map(|i| {
        let mut client = clients[i % clients.len()].clone();
        let request = request.clone();
        tokio::spawn(async move { ask(&mut client, request).await })
    });
    let calls: Vec<_> = calls.collect();
    let mut answers = Vec::new();
    for call in calls {
        answers.push(call.await.unwrap());
    }
    answers
}

/// The remaining counts of the admitted answers, sorted: a bucket of N that is exact
/// admits exactly N, and each sees a different count from N-1 down to 0.
pub fn admitted_remaining(answers: &[RateLimitResponse]) -> Vec<u32> {
    let mut remaining: Vec<u32> =
        answers.iter().filter(|a| admitted(a)).map(|a| a.statuses[0].limit_remaining).collect();
    remaining.sort_unstable();
    remaining
}
