use std::fmt;
use std::net::SocketAddr;

/// Why `edge-auth rls` stopped or could not start.
#[derive(Debug)]
pub enum Error {
    /// Bad command line; the CLI prints its usage.
    Usage(String),
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    Redis(redis::RedisError),
    Runtime(std::io::Error),
    Serve(tonic::transport::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Usage(why) => write!(f, "rls: {why}"),
            Self::Bind { addr, source } => write!(f, "rls: cannot listen on {addr}: {source}"),
            Self::Redis(e) => write!(f, "rls: redis: {e}"),
            Self::Runtime(e) => write!(f, "rls: runtime: {e}"),
            Self::Serve(e) => write!(f, "rls: grpc server: {e}"),
        }
    }
}

impl std::error::Error for Error {}
