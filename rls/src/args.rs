//! `--listen ADDR --redis URL [--redis URL ...] [--metrics ADDR]`.

use crate::Error;
use std::net::SocketAddr;

/// What to serve, and where the buckets live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// gRPC address (`ip:port`).
    pub listen: SocketAddr,
    /// One `redis://` server, or a cluster: `redis+cluster://h1:p1,h2:p2` or several seeds.
    pub redis: Vec<String>,
    /// Where `GET /metrics` is served, if anywhere.
    pub metrics: Option<SocketAddr>,
}

impl Options {
    pub fn parse(args: &[&str]) -> Result<Self, Error> {
        let (mut listen, mut redis, mut metrics) = (None, Vec::new(), None);
        let mut rest = args.iter();
        while let Some(&flag) = rest.next() {
            let value = *rest.next().ok_or_else(|| Error::Usage(format!("{flag} needs a value")))?;
            match flag {
                "--listen" => listen = Some(address(flag, value)?),
                "--redis" => redis.push(value.to_owned()),
                "--metrics" => metrics = Some(address(flag, value)?),
                other => return Err(Error::Usage(format!("unknown option {other}"))),
            }
        }
        let listen = listen.ok_or_else(|| Error::Usage("--listen is required".into()))?;
        if redis.is_empty() {
            return Err(Error::Usage("--redis is required".into()));
        }
        Ok(Self { listen, redis, metrics })
    }
}

fn address(flag: &str, value: &str) -> Result<SocketAddr, Error> {
    value.parse().map_err(|e| Error::Usage(format!("{flag} {value}: {e} (expected ip:port)")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags() {
        let o = Options::parse(&["--listen", "127.0.0.1:8081", "--redis", "redis://a:1", "--redis", "redis://b:2"])
            .unwrap();
        assert_eq!(o.listen, "127.0.0.1:8081".parse().unwrap());
        assert_eq!(o.redis, ["redis://a:1", "redis://b:2"]);
        assert_eq!(o.metrics, None);
        let o = Options::parse(&["--metrics", "[::1]:9090", "--listen", "0.0.0.0:1", "--redis", "r"]).unwrap();
        assert_eq!(o.metrics, Some("[::1]:9090".parse().unwrap()));
    }

    #[test]
    fn mistakes() {
        let usage = |args: &[&str]| match Options::parse(args) {
            Err(Error::Usage(why)) => why,
            other => panic!("{other:?}"),
        };
        assert_eq!(usage(&["--redis", "r"]), "--listen is required");
        assert_eq!(usage(&["--listen", "127.0.0.1:1"]), "--redis is required");
        assert_eq!(usage(&["--listen"]), "--listen needs a value");
        assert!(usage(&["--listen", "localhost:1", "--redis", "r"]).contains("expected ip:port"));
        assert_eq!(usage(&["--verbose", "1"]), "unknown option --verbose");
    }
}
