//! Where the buckets live: one Redis server or a Redis Cluster, reached lazily so the
//! service starts (and reports errors per call) while Redis is still coming up.

use crate::descriptor::Charge;
use crate::script::{ChargeScript, Outcome};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use std::fmt;
use std::time::Duration;
use tokio::sync::OnceCell;

/// A call that takes longer is answered UNAVAILABLE; Envoy's own timeout is usually
/// far shorter, this only stops calls piling up behind a dead server.
const CALL_TIMEOUT: Duration = Duration::from_secs(1);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
const CLUSTER_SCHEME: &str = "redis+cluster://";

pub struct Store {
    backend: Backend,
    script: ChargeScript,
}

enum Backend {
    Single(ConnectionManager),
    // Boxed: the cluster client is large, and a store holds one backend for its life.
    Cluster { client: Box<ClusterClient>, connection: OnceCell<ClusterConnection> },
}

/// Why a charge did not happen.
#[derive(Debug)]
pub enum StoreError {
    /// Redis cannot be reached or did not answer in time: UNAVAILABLE.
    Unavailable(String),
    /// Redis answered with an error or a reply the script never gives: INTERNAL.
    Failed(String),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unavailable(why) => write!(f, "redis unavailable: {why}"),
            Self::Failed(why) => write!(f, "redis failed: {why}"),
        }
    }
}

impl From<redis::RedisError> for StoreError {
    fn from(e: redis::RedisError) -> Self {
        if e.is_io_error()
            || e.is_connection_refusal()
            || e.is_timeout()
            || e.is_connection_dropped()
            || e.is_cluster_error()
        {
            Self::Unavailable(e.to_string())
        } else {
            Self::Failed(e.to_string())
        }
    }
}

impl Store {
    /// `redis://host:port` (one server), or a Redis Cluster given as
    /// `redis+cluster://h1:p1,h2:p2` or as several seed URLs. Must run inside a Tokio
    /// runtime (the connection manager reconnects in the background).
    pub fn new(urls: &[String]) -> Result<Self, redis::RedisError> {
        let backend = match urls {
            [one] if !one.starts_with(CLUSTER_SCHEME) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(CALL_TIMEOUT))
                    .set_number_of_retries(1);
                Backend::Single(ConnectionManager::new_lazy_with_config(redis::Client::open(one.as_str())?, config)?)
            }
            seeds => {
                let seeds: Vec<String> = seeds.iter().flat_map(|url| cluster_seeds(url)).collect();
                let client = ClusterClient::builder(seeds)
                    .connection_timeout(CONNECT_TIMEOUT)
                    .response_timeout(CALL_TIMEOUT)
                    .retries(2)
                    .build()?;
                Backend::Cluster { client: Box::new(client), connection: OnceCell::new() }
            }
        };
        Ok(Self { backend, script: ChargeScript::default() })
    }

    /// A Redis Cluster runs a script on one slot only.
    pub fn is_cluster(&self) -> bool {
        matches!(self.backend, Backend::Cluster { .. })
    }

    pub async fn charge(&self, charges: &[Charge]) -> Result<Outcome, StoreError> {
        let call = async {
            let invocation = self.script.invocation(charges);
            let reply: Vec<i64> = match &self.backend {
                Backend::Single(connection) => invocation.invoke_async(&mut connection.clone()).await?,
                Backend::Cluster { client, connection } => {
                    let connection = connection.get_or_try_init(|| client.get_async_connection()).await?;
                    invocation.invoke_async(&mut connection.clone()).await?
                }
            };
            Outcome::from_reply(reply, charges.len()).map_err(|e| StoreError::Failed(e.to_string()))
        };
        tokio::time::timeout(CALL_TIMEOUT, call)
            .await
            .map_err(|_| StoreError::Unavailable(format!("no answer within {CALL_TIMEOUT:?}")))?
    }
}

/// `redis+cluster://h1:p1,h2:p2` → `redis://h1:p1`, `redis://h2:p2`; other URLs as given.
fn cluster_seeds(url: &str) -> Vec<String> {
    match url.strip_prefix(CLUSTER_SCHEME) {
        Some(hosts) => hosts.split(',').filter(|h| !h.is_empty()).map(|h| format!("redis://{h}")).collect(),
        None => vec![url.to_owned()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_urls_list_their_seeds() {
        assert_eq!(cluster_seeds("redis+cluster://a:1,b:2"), ["redis://a:1", "redis://b:2"]);
        assert_eq!(cluster_seeds("redis://a:1"), ["redis://a:1"]);
    }

    #[tokio::test]
    async fn one_url_is_a_server_several_or_a_cluster_url_a_cluster() {
        let store = |urls: &[&str]| Store::new(&urls.iter().map(|u| u.to_string()).collect::<Vec<_>>()).unwrap();
        assert!(!store(&["redis://127.0.0.1:1"]).is_cluster());
        assert!(store(&["redis+cluster://127.0.0.1:1,127.0.0.1:2"]).is_cluster());
        assert!(store(&["redis://127.0.0.1:1", "redis://127.0.0.1:2"]).is_cluster());
        assert!(Store::new(&["http://x".into()]).is_err());
    }
}
