//! The HTTP side: the key set with ETag, long polls and changes-only
//! answers, `/metrics`, and a drain that answers held polls at once.

use crate::keyset::{held_version, History, Reply, Snapshot};
use crate::metrics::{Metrics, Served};
use bytes::Bytes;
use edge_auth::config::KeyChangesDoc;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// How long a drain waits for connections to finish.
const DRAIN: Duration = Duration::from_secs(5);

/// What every connection shares.
pub struct State {
    pub path: String,
    pub max_wait: Duration,
    /// Keys per page of a whole answer.
    pub page_keys: usize,
    history: Mutex<History>,
    /// Bumped whenever a new version is current: wakes held polls.
    changed: watch::Sender<u64>,
    /// True once draining: held polls answer at once.
    draining: watch::Sender<bool>,
    pub metrics: Metrics,
}

impl State {
    pub fn new(path: String, max_wait: Duration, page_keys: usize, history: History) -> Self {
        Self {
            path,
            max_wait,
            page_keys,
            history: Mutex::new(history),
            changed: watch::channel(0).0,
            draining: watch::channel(false).0,
            metrics: Metrics::default(),
        }
    }

    pub fn current(&self) -> Option<Arc<Snapshot>> {
        self.history.lock().ok().map(|h| h.current())
    }

    /// Makes `next` current (`changes` turned the current set into it);
    /// returns whether it was a new version.
    pub fn publish(&self, next: Snapshot, changes: KeyChangesDoc) -> bool {
        let (keys, revoked) = (next.keys, next.revoked);
        let new = self.history.lock().is_ok_and(|mut h| h.push(next, changes));
        if new {
            self.metrics.loaded(keys, revoked);
            self.changed.send_modify(|n| *n = n.wrapping_add(1));
        }
        new
    }

    fn reply(&self, held: Option<&str>) -> Option<(Arc<Snapshot>, Reply)> {
        self.history.lock().ok().map(|h| h.reply(held))
    }
}

/// Accepts connections until `stop` completes, then drains.
pub async fn serve(listener: TcpListener, state: Arc<State>, stop: impl Future<Output = ()>) {
    let graceful = GracefulShutdown::new();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let state = Arc::clone(&state);
                let service = service_fn(move |request| {
                    let state = Arc::clone(&state);
                    async move { Ok::<_, Infallible>(answer(request, &state).await) }
                });
                let connection = graceful.watch(http1::Builder::new().serve_connection(TokioIo::new(stream), service));
                tokio::spawn(async move {
                    let _ = connection.await;
                });
            }
            () = &mut stop => break,
        }
    }
    state.draining.send_replace(true);
    let _ = tokio::time::timeout(DRAIN, graceful.shutdown()).await;
}

async fn answer(request: Request<Incoming>, state: &State) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
    }
    if path == "/metrics" {
        let mut response = plain(StatusCode::OK, &state.metrics.render());
        response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
        return response;
    }
    if path != state.path {
        return plain(StatusCode::NOT_FOUND, &format!("not found; the key set is at {}\n", state.path));
    }
    if let Some(cursor) = request.uri().query().and_then(page_asked) {
        let page = state.history.lock().ok().and_then(|h| h.page(&cursor, state.page_keys));
        let Some((snapshot, body)) = page else {
            return plain(StatusCode::BAD_REQUEST, "no such page\n");
        };
        state.metrics.served(Served::Whole);
        return json(StatusCode::OK, body, &snapshot.etag);
    }
    let held = request.headers().get(IF_NONE_MATCH).and_then(|v| v.to_str().ok()).and_then(held_version);
    let wait = request.headers().get_all("prefer").iter().filter_map(|v| v.to_str().ok()).find_map(wait_asked);
    let wait = wait.map(|w| w.min(state.max_wait));
    // Subscribed before looking, so a change between the look and the wait
    // is not missed.
    let mut changed = state.changed.subscribe();
    let Some(mut looked) = state.reply(held) else {
        return plain(StatusCode::INTERNAL_SERVER_ERROR, "state unavailable\n");
    };
    if let (Reply::NotModified, Some(wait)) = (&looked.1, wait) {
        let _held = state.metrics.wait();
        let mut draining = state.draining.subscribe();
        tokio::select! {
            _ = changed.changed() => {}
            () = tokio::time::sleep(wait) => {}
            _ = draining.wait_for(|d| *d) => {}
        }
        if let Some(again) = state.reply(held) {
            looked = again;
        }
    }
    let (snapshot, reply) = looked;
    let (status, body, served) = match reply {
        // Written outside the history's lock, once per version.
        Reply::Whole => (StatusCode::OK, snapshot.page(0, state.page_keys).unwrap_or_default(), Served::Whole),
        Reply::Changes(body) => (StatusCode::OK, body, Served::Changes),
        Reply::NotModified => (StatusCode::NOT_MODIFIED, Bytes::new(), Served::NotModified),
    };
    state.metrics.served(served);
    let mut response = json(status, body, &snapshot.etag);
    let headers = response.headers_mut();
    // RFC 7240: tells the filter this server holds polls, so it re-arms at once.
    if let Some(wait) = wait {
        if let Ok(applied) = HeaderValue::from_str(&format!("wait={}", wait.as_secs())) {
            headers.insert("preference-applied", applied);
        }
    }
    response
}

fn json(status: StatusCode, body: Bytes, etag: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(etag) = HeaderValue::from_str(etag) {
        headers.insert(ETAG, etag);
    }
    response
}

/// The cursor of `page=<cursor>` in a query, percent-decoded.
fn page_asked(query: &str) -> Option<String> {
    let value = query.split('&').find_map(|pair| pair.strip_prefix("page="))?;
    let mut out = Vec::with_capacity(value.len());
    let mut bytes = value.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hex = [bytes.next()?, bytes.next()?];
            out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).ok()
}

/// `wait=<seconds>` among a `Prefer` header's preferences.
fn wait_asked(prefer: &str) -> Option<Duration> {
    prefer
        .split(',')
        .find_map(|p| {
            let (name, value) = p.split_once('=')?;
            (name.trim().eq_ignore_ascii_case("wait")).then(|| value.trim().trim_matches('"').parse().ok())?
        })
        .map(Duration::from_secs)
        .filter(|w| !w.is_zero())
}

fn plain(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(text.to_owned())));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keyset::tests::{file, json, policy, record};
    use crate::loader::{Loader, Next};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A GET of the key set, as the filter sends it; the answer's status
    /// line and body.
    async fn get(addr: std::net::SocketAddr, etag: String) -> (String, Bytes) {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!(
            "GET /v1/edge/keys HTTP/1.1\r\nhost: k\r\nif-none-match: {etag}\r\nprefer: wait=30\r\nconnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.unwrap();
        let text = String::from_utf8(answer).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        (head.lines().next().unwrap().to_owned(), Bytes::from(body.to_owned()))
    }

    #[tokio::test]
    async fn a_held_long_poll_is_answered_with_the_change() {
        let mut loader = Loader::new(policy());
        let keys = [record("a", 1), record("b", 2)];
        let first = loader.load(file(&keys, "")).unwrap().snapshot;
        let etag = first.etag.clone();
        let state =
            Arc::new(State::new("/v1/edge/keys".into(), Duration::from_secs(30), 20_000, History::new(first, 4)));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, Arc::clone(&state), async {
            let _ = stopped.await;
        }));
        let polls: Vec<_> = (0..3).map(|_| tokio::spawn(get(addr, etag.clone()))).collect();
        while state.metrics.render().contains("edge_auth_keyserver_waiting 0\n") {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let Next { snapshot, changes, .. } = loader.load(file(&keys, r#""b""#)).unwrap();
        let version = snapshot.version.clone();
        assert!(state.publish(snapshot, changes));
        for poll in polls {
            let (status, body) = poll.await.unwrap();
            assert_eq!(status, "HTTP/1.1 200 OK");
            let body = json(&body);
            assert_eq!(body["version"].as_str(), Some(&*version));
            assert_eq!(body["changes"], serde_json::json!({"revoke": ["b"]}), "just the change");
        }
        // A drain answers held polls at once.
        let held = tokio::spawn(get(addr, format!("\"{version}\"")));
        while state.metrics.render().contains("edge_auth_keyserver_waiting 0\n") {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let _ = stop.send(());
        assert_eq!(held.await.unwrap().0, "HTTP/1.1 304 Not Modified");
        server.await.unwrap();
    }

    #[test]
    fn prefer_wait() {
        assert_eq!(wait_asked("wait=20"), Some(Duration::from_secs(20)));
        assert_eq!(wait_asked("respond-async, Wait = 5"), Some(Duration::from_secs(5)));
        assert_eq!(wait_asked("wait=0"), None);
        assert_eq!(wait_asked("return=minimal"), None);
        assert_eq!(wait_asked("wait=soon"), None);
    }

    #[test]
    fn page_cursors_are_percent_decoded() {
        assert_eq!(page_asked("page=1.v%2B1%3A2").as_deref(), Some("1.v+1:2"));
        assert_eq!(page_asked("x=1&page=2.v").as_deref(), Some("2.v"));
        assert_eq!(page_asked("x=1"), None);
        assert_eq!(page_asked("page=%zz"), None);
        assert_eq!(page_asked("page=%2"), None);
    }
}
