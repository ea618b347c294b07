use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Why `edge-auth keys serve` stopped or could not start.
#[derive(Debug)]
pub enum Error {
    /// Bad command line; the CLI prints its usage.
    Usage(String),
    /// The policy given to check the file against is unusable.
    Policy(String),
    /// The file cannot be served at start: nothing good to fall back on.
    File {
        path: PathBuf,
        why: String,
    },
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    Runtime(std::io::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Usage(why) => write!(f, "keys serve: {why}"),
            Self::Policy(why) => write!(f, "keys serve: --policy: {why}"),
            Self::File { path, why } => write!(f, "keys serve: {}: {why}", path.display()),
            Self::Bind { addr, source } => write!(f, "keys serve: cannot listen on {addr}: {source}"),
            Self::Runtime(e) => write!(f, "keys serve: runtime: {e}"),
        }
    }
}

impl std::error::Error for Error {}
