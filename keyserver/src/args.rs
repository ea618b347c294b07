//! `--file F --listen ADDR [--path P] [--policy FILE] [--max-wait S] [--history N] [--page-keys N]`.

use crate::Error;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    pub file: PathBuf,
    pub listen: SocketAddr,
    /// Where the set is served (`GET`); `/metrics` beside it.
    pub path: String,
    /// A policy whose account pattern and plans the file is checked against.
    pub policy: Option<PathBuf>,
    /// The longest a long poll is held, whatever the filter asks.
    pub max_wait: Duration,
    /// Versions remembered for changes-only answers.
    pub history: usize,
    /// Keys per page of a whole answer.
    pub page_keys: usize,
}

/// Under the filter's 32 MiB per answer even with records of 1.5 KB.
const PAGE_KEYS: usize = 20_000;

impl Options {
    pub fn parse(args: &[&str]) -> Result<Self, Error> {
        let (mut file, mut listen, mut policy) = (None, None, None);
        let (mut path, mut max_wait, mut history) = ("/v1/edge/keys".to_owned(), Duration::from_secs(60), 64);
        let mut page_keys = PAGE_KEYS;
        let mut rest = args.iter();
        while let Some(&flag) = rest.next() {
            let value = *rest.next().ok_or_else(|| Error::Usage(format!("{flag} needs a value")))?;
            let number = |max: u64| {
                value
                    .parse::<u64>()
                    .ok()
                    .filter(|n| (1..=max).contains(n))
                    .ok_or_else(|| Error::Usage(format!("{flag} {value}: expected a whole number from 1 to {max}")))
            };
            match flag {
                "--file" => file = Some(PathBuf::from(value)),
                "--listen" => {
                    listen = Some(
                        value.parse().map_err(|e| Error::Usage(format!("--listen {value}: {e} (expected ip:port)")))?,
                    );
                }
                "--path" if value.starts_with('/') && value != "/metrics" => path = value.to_owned(),
                "--path" => return Err(Error::Usage(format!("--path {value}: an absolute path other than /metrics"))),
                "--policy" => policy = Some(PathBuf::from(value)),
                "--max-wait" => max_wait = Duration::from_secs(number(3600)?),
                "--history" => history = usize::try_from(number(10_000)?).unwrap_or(64),
                "--page-keys" => page_keys = usize::try_from(number(1_000_000)?).unwrap_or(PAGE_KEYS),
                other => return Err(Error::Usage(format!("unknown option {other}"))),
            }
        }
        let file = file.ok_or_else(|| Error::Usage("--file is required".into()))?;
        let listen = listen.ok_or_else(|| Error::Usage("--listen is required".into()))?;
        Ok(Self { file, listen, path, policy, max_wait, history, page_keys })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_and_mistakes() {
        let o = Options::parse(&["--file", "k.json", "--listen", "127.0.0.1:8081"]).unwrap();
        assert_eq!((o.path.as_str(), o.max_wait, o.history), ("/v1/edge/keys", Duration::from_secs(60), 64));
        assert_eq!(o.page_keys, 20_000);
        let o = Options::parse(&["--file", "k", "--listen", "127.0.0.1:1", "--page-keys", "500"]).unwrap();
        assert_eq!(o.page_keys, 500);
        let o = Options::parse(&["--file", "k", "--listen", "[::1]:1", "--path", "/k", "--max-wait", "5"]).unwrap();
        assert_eq!((o.path.as_str(), o.max_wait), ("/k", Duration::from_secs(5)));
        let usage = |args: &[&str]| match Options::parse(args) {
            Err(Error::Usage(why)) => why,
            other => panic!("{other:?}"),
        };
        assert_eq!(usage(&["--listen", "127.0.0.1:1"]), "--file is required");
        assert_eq!(usage(&["--file", "k"]), "--listen is required");
        assert!(usage(&["--file", "k", "--listen", "x"]).contains("expected ip:port"));
        assert!(usage(&["--path", "/metrics"]).contains("other than /metrics"));
        assert!(usage(&["--max-wait", "0"]).contains("from 1 to 3600"));
        assert!(usage(&["--page-keys", "0"]).contains("from 1 to 1000000"));
        assert_eq!(usage(&["--file"]), "--file needs a value");
    }
}
