//! Routes from a QMQ meta server, the way the Java client gets them.
//!
//! 1. `GET http://<meta-http>/meta/address` answers the meta server's TCP address (`host:port`,
//!    plain text).
//! 2. Over TCP, CLIENT_REGISTER per (subject, client type, group) answers the broker groups.
//!    The first call is an `Online` registration; a background task then re-registers every
//!    cached route with `Heartbeat` each refresh period, so routes follow the meta server (new
//!    brokers, groups turned read-only). A broken TCP connection is replaced, rediscovering the
//!    address over HTTP.
//! 3. [`Router::invalidate`] (a broker refused the client: BROKER_REJECT, read-only, connection
//!    refused) marks the subject's routes stale; the next [`Router::route`] re-registers at once
//!    instead of waiting for the refresh period, at most once per
//!    [`MetaRouterConfig::min_reroute`] per route, so a failing broker cannot make every request
//!    of a busy client hit the meta server. That is how clients follow a failover: the meta
//!    server answers the group with its new master's address.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use tokio::time::Instant;

use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use qmq_protocol::codes::{command, response};
use qmq_protocol::{BrokerGroup, ClientRequestType, ClientType, MetaInfoRequest, MetaInfoResponse};
use tokio::task::JoinHandle;

use crate::router::{RouteError, Router};
use crate::{Connection, ConnectionError};

/// How to reach the meta server and who this client is.
#[derive(Debug, Clone)]
pub struct MetaRouterConfig {
    /// The meta server's HTTP address, `host:port`.
    pub meta_http: String,
    /// The application code sent with every registration.
    pub app_code: String,
    /// This client's id.
    pub client_id: String,
    /// How often cached routes are refreshed.
    pub refresh: Duration,
    /// Deadline of one HTTP or TCP request.
    pub timeout: Duration,
    /// Least time between two re-registrations of one route forced by
    /// [`Router::invalidate`] (the periodic refresh is not limited by it).
    pub min_reroute: Duration,
}

impl MetaRouterConfig {
    /// Defaults (refresh every 30 s, 5 s timeouts, forced re-reads at most every 200 ms) for the meta server at `meta_http`.
    pub fn new(meta_http: &str, app_code: &str) -> Self {
        Self {
            meta_http: meta_http.to_owned(),
            app_code: app_code.to_owned(),
            client_id: crate::identity::client_id(),
            refresh: Duration::from_secs(30),
            timeout: Duration::from_secs(5),
            min_reroute: Duration::from_millis(200),
        }
    }
}

type Key = (String, ClientType, String);

/// One cached route.
struct Entry {
    groups: Vec<BrokerGroup>,
    /// A client asked for a fresh answer ([`Router::invalidate`]).
    stale: bool,
    /// When a forced re-registration last started (throttles the next one).
    last_forced: Option<Instant>,
}

impl Entry {
    fn fresh(groups: Vec<BrokerGroup>) -> Self {
        Self {
            groups,
            stale: false,
            last_forced: None,
        }
    }
}

struct Inner {
    config: MetaRouterConfig,
    conn: tokio::sync::Mutex<Option<Connection>>,
    cache: Mutex<HashMap<Key, Entry>>,
}

/// A [`Router`] backed by a QMQ meta server: what production clients use (the Java client's
/// `metaServer` setting).
///
/// - **One per process.** Share it (`Arc<dyn Router>`) between every producer and consumer: it
///   keeps one TCP connection to the meta server and one cache of routes, keyed by subject,
///   client type and consumer group.
/// - **Address.** [`MetaRouterConfig::meta_http`] is the meta server's HTTP `host:port` (Java:
///   the URL `http://host:port/meta/address`); the TCP address is discovered from it, again after
///   every broken connection, so the meta server may move.
/// - **Freshness.** A route is asked for on first use (an `Online` registration) and then
///   re-registered every [`MetaRouterConfig::refresh`] by a background task (a `Heartbeat`), so
///   brokers that join or turn read-only are seen within that period. A broker that refuses a
///   client makes the client call [`Router::invalidate`], and the next
///   [`route`](Router::route) asks at once (throttled by [`MetaRouterConfig::min_reroute`]):
///   that is how clients follow a failover to a group's new master without waiting for the
///   refresh period.
/// - **Failures.** An unreachable meta server is a [`RouteError`] from
///   [`route`](Router::route) for a subject not cached yet; a cached route keeps being served
///   while the meta server is away, so a meta restart does not stop traffic.
/// - **Runtime.** [`MetaRouter::new`] needs no Tokio runtime and never panics; the refresh task
///   starts on the runtime of the first [`route`](Router::route) call and stops when the router
///   is dropped.
/// - **Cancel safety.** Dropping a [`route`](Router::route) future is safe: the cache changes
///   only once an answer has arrived, so a dropped call leaves the cached route as it was (a
///   stale one is asked for again by a later call).
///
/// ```no_run
/// # async fn demo() {
/// use qmq_transport::{MetaRouter, MetaRouterConfig};
/// let router = MetaRouter::new(MetaRouterConfig::new("127.0.0.1:8080", "my-app"));
/// # }
/// ```
pub struct MetaRouter {
    inner: Arc<Inner>,
    /// The refresh task, started by the first [`Router::route`] (which runs on a Tokio
    /// runtime), so that [`MetaRouter::new`] needs none.
    refresher: OnceLock<JoinHandle<()>>,
}

impl MetaRouter {
    /// A router for `config`. Creating it needs no Tokio runtime (it may be built before one
    /// starts); the task refreshing cached routes starts with the first [`Router::route`] on
    /// the runtime that call runs on, and stops when the router is dropped.
    pub fn new(config: MetaRouterConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                conn: tokio::sync::Mutex::new(None),
                cache: Mutex::new(HashMap::new()),
            }),
            refresher: OnceLock::new(),
        }
    }

    /// Starts the refresh task if it is not running and a Tokio runtime is at hand.
    fn start_refresher(&self) {
        if self.refresher.get().is_some() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let task = runtime.spawn(refresh_loop(
            Arc::downgrade(&self.inner),
            self.inner.config.refresh,
        ));
        if let Err(duplicate) = self.refresher.set(task) {
            // A concurrent first call started one too.
            duplicate.abort();
        }
    }
}

impl Drop for MetaRouter {
    fn drop(&mut self) {
        if let Some(task) = self.refresher.get() {
            task.abort();
        }
    }
}

impl Router for MetaRouter {
    fn route<'a>(
        &'a self,
        subject: &'a str,
        client_type: ClientType,
        group: &'a str,
    ) -> BoxFuture<'a, Result<Vec<BrokerGroup>, RouteError>> {
        Box::pin(async move {
            self.start_refresher();
            let key = (subject.to_owned(), client_type, group.to_owned());
            let cached = {
                let mut cache = self.inner.cache.lock();
                cache.get_mut(&key).map(|e| {
                    let due = e.stale
                        && e.last_forced
                            .is_none_or(|t| t.elapsed() >= self.inner.config.min_reroute);
                    if due {
                        // Claimed: concurrent callers keep the cached answer meanwhile.
                        e.last_forced = Some(Instant::now());
                    }
                    (e.groups.clone(), due)
                })
            };
            match cached {
                Some((groups, false)) => Ok(groups),
                Some((old, true)) => {
                    match self
                        .inner
                        .register(&key, ClientRequestType::Heartbeat)
                        .await
                    {
                        Ok(groups) => {
                            tracing::debug!(subject, ?client_type, group, ?groups, "route re-read");
                            if let Some(e) = self.inner.cache.lock().get_mut(&key) {
                                e.groups = groups.clone();
                                e.stale = false;
                            }
                            Ok(groups)
                        }
                        Err(e) => {
                            // Stays stale: the next call after `min_reroute` tries again.
                            tracing::warn!(subject, error = %e, "route re-read failed; using the cached one");
                            Ok(old)
                        }
                    }
                }
                None => {
                    let groups = self.inner.register(&key, ClientRequestType::Online).await?;
                    self.inner
                        .cache
                        .lock()
                        .insert(key, Entry::fresh(groups.clone()));
                    Ok(groups)
                }
            }
        })
    }

    /// Marks `subject`'s routes stale: the next [`Router::route`] re-registers (throttled by
    /// [`MetaRouterConfig::min_reroute`]).
    fn invalidate(&self, subject: &str) {
        for (k, e) in self.inner.cache.lock().iter_mut() {
            if k.0 == subject {
                e.stale = true;
            }
        }
    }
}

async fn refresh_loop(inner: Weak<Inner>, period: Duration) {
    let mut tick = tokio::time::interval(period);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let keys: Vec<Key> = inner.cache.lock().keys().cloned().collect();
        for key in keys {
            match inner.register(&key, ClientRequestType::Heartbeat).await {
                Ok(groups) => {
                    if let Some(e) = inner.cache.lock().get_mut(&key) {
                        e.groups = groups;
                        e.stale = false;
                    }
                }
                Err(e) => tracing::warn!(subject = %key.0, error = %e, "route refresh failed"),
            }
        }
    }
}

impl Inner {
    async fn register(
        &self,
        (subject, client_type, group): &Key,
        request_type: ClientRequestType,
    ) -> Result<Vec<BrokerGroup>, RouteError> {
        let req = MetaInfoRequest::new(
            &self.config.client_id,
            *client_type,
            request_type,
            subject,
            &self.config.app_code,
            group,
        );
        let mut body = BytesMut::new();
        req.encode(&mut body)?;
        let conn = self.connection().await?;
        let resp = match conn
            .request(command::CLIENT_REGISTER, body.freeze(), self.config.timeout)
            .await
        {
            Ok(resp) => resp,
            Err(e) => {
                // Rediscover next time: the meta server may have moved.
                self.conn.lock().await.take();
                return Err(e.into());
            }
        };
        if resp.header.code != response::SUCCESS {
            return Err(RouteError::Meta(resp.header.code));
        }
        Ok(MetaInfoResponse::decode(&resp.body)?.groups)
    }

    async fn connection(&self) -> Result<Connection, RouteError> {
        let mut slot = self.conn.lock().await;
        if let Some(conn) = slot.as_ref().filter(|c| c.is_open()) {
            return Ok(conn.clone());
        }
        let deadline = Instant::now() + self.config.timeout;
        let addr = discover(&self.config.meta_http, self.config.timeout, deadline).await?;
        let conn = Connection::connect(&addr).await?;
        *slot = Some(conn.clone());
        Ok(conn)
    }
}

/// Why the meta server could not be reached ([`MetaRouter::check`]). Every variant names the
/// URL asked (`http://<meta_http>/meta/address`) and says which step failed.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// Nothing accepted a TCP connection at the meta server's HTTP address.
    #[error("cannot reach the meta server at {url}: {source}")]
    HttpUnreachable {
        /// The URL asked.
        url: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Something listens there but the HTTP exchange failed (the peer does not speak HTTP,
    /// closed the connection, sent a malformed answer).
    #[error("the meta server at {url} did not answer over HTTP: {reason}")]
    Http {
        /// The URL asked.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The server answered with a status other than 200 (not a QMQ meta server, or a wrong
    /// port).
    #[error("{url} answered HTTP {status}, not 200 with the meta server's TCP address")]
    Status {
        /// The URL asked.
        url: String,
        /// The HTTP status.
        status: u16,
    },
    /// The server answered 200 with something that is not a `host:port`.
    #[error("{url} answered {answer:?}, which is not the meta server's TCP address (host:port)")]
    BadAnswer {
        /// The URL asked.
        url: String,
        /// The start of the answer (at most 100 characters).
        answer: String,
    },
    /// The TCP address the meta server gave cannot be connected to.
    #[error(
        "the meta server at {url} gave its TCP address {addr}, which cannot be reached: {source}"
    )]
    TcpUnreachable {
        /// The URL asked.
        url: String,
        /// The TCP address it answered.
        addr: String,
        /// The cause.
        source: ConnectionError,
    },
    /// The deadline passed during `step`.
    #[error("the meta server at {url} did not answer within {after:?} ({step})")]
    Timeout {
        /// The URL asked.
        url: String,
        /// The deadline.
        after: Duration,
        /// What was under way.
        step: String,
    },
}

impl DiscoveryError {
    /// What failed, without the URL (which [`RouteError::Discovery`] carries on its own).
    fn reason(&self) -> String {
        match self {
            DiscoveryError::HttpUnreachable { source, .. } => source.to_string(),
            DiscoveryError::Http { reason, .. } => reason.clone(),
            DiscoveryError::Status { status, .. } => format!("HTTP status {status}"),
            DiscoveryError::BadAnswer { answer, .. } => {
                format!("answered {answer:?}, not a host:port")
            }
            DiscoveryError::TcpUnreachable { addr, source, .. } => {
                format!("TCP address {addr}: {source}")
            }
            DiscoveryError::Timeout { after, step, .. } => {
                format!("no answer within {after:?} ({step})")
            }
        }
    }

    fn url(&self) -> &str {
        match self {
            DiscoveryError::HttpUnreachable { url, .. }
            | DiscoveryError::Http { url, .. }
            | DiscoveryError::Status { url, .. }
            | DiscoveryError::BadAnswer { url, .. }
            | DiscoveryError::TcpUnreachable { url, .. }
            | DiscoveryError::Timeout { url, .. } => url,
        }
    }
}

impl From<DiscoveryError> for RouteError {
    fn from(e: DiscoveryError) -> Self {
        match e {
            DiscoveryError::TcpUnreachable { source, .. } => RouteError::Connection(source),
            e => RouteError::Discovery {
                url: e.url().to_owned(),
                reason: e.reason(),
            },
        }
    }
}

impl MetaRouter {
    /// Checks the meta server now, within `timeout`: asks its HTTP endpoint for its TCP address
    /// and connects to that address. Returns the address; the connection is kept for the
    /// lookups that follow. A router works without this call (the first [`Router::route`]
    /// connects), but then a wrong address shows only as failing sends and subscriptions;
    /// this call fails at once with an error saying which step failed.
    ///
    /// # Panics
    ///
    /// When polled outside a Tokio runtime (as every async fn of this crate).
    pub async fn check(&self, timeout: Duration) -> Result<String, DiscoveryError> {
        let meta_http = &self.inner.config.meta_http;
        let deadline = Instant::now() + timeout;
        let addr = discover(meta_http, timeout, deadline).await?;
        let conn = within(
            meta_http,
            timeout,
            deadline,
            format!("connecting to its TCP address {addr}"),
            async {
                Connection::connect(&addr)
                    .await
                    .map_err(|source| DiscoveryError::TcpUnreachable {
                        url: meta_url(meta_http),
                        addr: addr.clone(),
                        source,
                    })
            },
        )
        .await?;
        *self.inner.conn.lock().await = Some(conn);
        self.start_refresher();
        Ok(addr)
    }
}

fn meta_url(meta_http: &str) -> String {
    format!("http://{meta_http}/meta/address")
}

/// Runs `step` until `deadline`; past it, a [`DiscoveryError::Timeout`] naming `what`.
async fn within<T>(
    meta_http: &str,
    timeout: Duration,
    deadline: Instant,
    what: impl Into<String>,
    step: impl std::future::Future<Output = Result<T, DiscoveryError>>,
) -> Result<T, DiscoveryError> {
    match tokio::time::timeout_at(deadline, step).await {
        Ok(result) => result,
        Err(_) => Err(DiscoveryError::Timeout {
            url: meta_url(meta_http),
            after: timeout,
            step: what.into(),
        }),
    }
}

/// Whether `s` looks like `host:port` (a host name, IPv4 or bracketed IPv6 address, and a
/// non-zero port). Underscores are allowed: container names often have them.
fn is_host_port(s: &str) -> bool {
    let Some((host, port)) = s.rsplit_once(':') else {
        return false;
    };
    !host.is_empty()
        && port.parse::<u16>().is_ok_and(|p| p != 0)
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._[]:".contains(c))
}

/// The longest HTTP answer read from the meta server's address endpoint.
const MAX_ANSWER: usize = 64 * 1024;

/// Asks the meta server's HTTP endpoint for its TCP address, before `deadline` (`timeout`
/// from now, reported in the error).
pub(crate) async fn discover(
    meta_http: &str,
    timeout: Duration,
    deadline: Instant,
) -> Result<String, DiscoveryError> {
    let url = meta_url(meta_http);
    let http = |reason: String| DiscoveryError::Http {
        url: url.clone(),
        reason,
    };
    let stream = within(
        meta_http,
        timeout,
        deadline,
        "connecting over HTTP",
        async {
            tokio::net::TcpStream::connect(meta_http)
                .await
                .map_err(|source| DiscoveryError::HttpUnreachable {
                    url: url.clone(),
                    source,
                })
        },
    )
    .await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| http(e.to_string()))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "meta http connection ended");
        }
    });
    let req = hyper::Request::get("/meta/address")
        .header(hyper::header::HOST, meta_http)
        .body(Empty::<Bytes>::new())
        .map_err(|e| http(e.to_string()))?;
    let resp = within(
        meta_http,
        timeout,
        deadline,
        "waiting for the HTTP answer",
        async {
            sender
                .send_request(req)
                .await
                .map_err(|e| http(e.to_string()))
        },
    )
    .await?;
    let status = resp.status();
    let body = within(
        meta_http,
        timeout,
        deadline,
        "reading the HTTP answer",
        async {
            // A meta server answers a few bytes; a larger answer is not one.
            http_body_util::Limited::new(resp.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| http(e.to_string()))
        },
    )
    .await?
    .to_bytes();
    if status != hyper::StatusCode::OK {
        return Err(DiscoveryError::Status {
            url,
            status: status.as_u16(),
        });
    }
    let answer = String::from_utf8_lossy(&body);
    let addr = answer.trim();
    if !is_host_port(addr) {
        return Err(DiscoveryError::BadAnswer {
            url,
            answer: addr.chars().take(100).collect(),
        });
    }
    Ok(addr.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Built and dropped outside a Tokio runtime without a panic; the refresh task starts with
    /// the first lookup, on the runtime that runs it.
    #[test]
    fn needs_no_runtime_until_the_first_lookup() {
        drop(MetaRouter::new(MetaRouterConfig::new("127.0.0.1:1", "app")));
        let mut config = MetaRouterConfig::new("127.0.0.1:1", "app");
        config.timeout = Duration::from_secs(2);
        let router = MetaRouter::new(config);
        assert!(router.refresher.get().is_none());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let result = runtime.block_on(router.route("s", ClientType::Producer, ""));
        assert!(
            matches!(result, Err(RouteError::Discovery { .. })),
            "{result:?}"
        );
        assert!(router.refresher.get().is_some());
        drop(router);
    }

    #[test]
    fn only_host_port_answers_are_addresses() {
        for ok in [
            "127.0.0.1:20880",
            "meta-1.example.com:20880",
            "[::1]:20880",
            "qmq_meta:20880",
        ] {
            assert!(is_host_port(ok), "{ok}");
        }
        for bad in [
            "",
            "127.0.0.1",
            ":20880",
            "127.0.0.1:0",
            "127.0.0.1:99999",
            "<html>hi</html>",
            "http://127.0.0.1:20880",
            "host name:1",
        ] {
            assert!(!is_host_port(bad), "{bad}");
        }
    }
}
