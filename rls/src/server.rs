//! Listening sockets, the gRPC server with health, the metrics endpoint, and drain.

use crate::args::Options;
use crate::metrics::{self, Metrics};
use crate::proto::rate_limit_service_server::RateLimitServiceServer;
use crate::service::RateLimiter;
use crate::store::Store;
use crate::Error;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

/// Bound sockets and a Redis client, ready to serve. Binding first lets callers
/// (and tests, with port 0) learn the addresses before serving starts.
pub struct Listening {
    grpc: TcpListener,
    metrics: Option<TcpListener>,
    store: Store,
}

/// Binds the sockets and prepares the (lazily connecting) Redis client. Runs inside
/// a Tokio runtime.
pub async fn bind(options: &Options) -> Result<Listening, Error> {
    let grpc = listen(options.listen).await?;
    let metrics = match options.metrics {
        Some(addr) => Some(listen(addr).await?),
        None => None,
    };
    let store = Store::new(&options.redis).map_err(Error::Redis)?;
    Ok(Listening { grpc, metrics, store })
}

async fn listen(addr: SocketAddr) -> Result<TcpListener, Error> {
    TcpListener::bind(addr).await.map_err(|source| Error::Bind { addr, source })
}

impl Listening {
    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.grpc.local_addr().ok()
    }

    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serves until `shutdown` completes, then reports NOT_SERVING on the health
    /// service, stops accepting, and lets in-flight calls finish (each is bounded by
    /// the Redis call timeout).
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
        let counters = Arc::new(Metrics::default());
        let scrapes = self.metrics.map(|listener| {
            let counters = Arc::clone(&counters);
            tokio::spawn(async move { metrics::serve(listener, &counters).await })
        });
        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<RateLimitServiceServer<RateLimiter>>().await;
        let drain = async {
            shutdown.await;
            health.set_not_serving::<RateLimitServiceServer<RateLimiter>>().await;
        };
        let served = tonic::transport::Server::builder()
            .add_service(health_service)
            .add_service(RateLimitServiceServer::new(RateLimiter::new(self.store, counters)))
            .serve_with_incoming_shutdown(TcpIncoming::from(self.grpc), drain)
            .await;
        if let Some(scrapes) = scrapes {
            scrapes.abort();
        }
        served.map_err(Error::Serve)
    }
}
