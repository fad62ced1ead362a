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
use crate::Connection;

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
        let addr = discover(&self.config.meta_http, self.config.timeout).await?;
        let conn = Connection::connect(&addr).await?;
        *slot = Some(conn.clone());
        Ok(conn)
    }
}

/// Asks the meta server's HTTP endpoint for its TCP address.
pub(crate) async fn discover(meta_http: &str, timeout: Duration) -> Result<String, RouteError> {
    let url = format!("http://{meta_http}/meta/address");
    let fail = |reason: String| RouteError::Discovery {
        url: url.clone(),
        reason,
    };
    let fetch = async {
        let stream = tokio::net::TcpStream::connect(meta_http)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| fail(e.to_string()))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "meta http connection ended");
            }
        });
        let req = hyper::Request::get("/meta/address")
            .header(hyper::header::HOST, meta_http)
            .body(Empty::<Bytes>::new())
            .map_err(|e| fail(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| fail(e.to_string()))?
            .to_bytes();
        if !status.is_success() {
            return Err(fail(format!("HTTP status {status}")));
        }
        let addr = std::str::from_utf8(&body)
            .map_err(|e| fail(e.to_string()))?
            .trim()
            .to_owned();
        if addr.is_empty() {
            return Err(fail("empty answer".into()));
        }
        Ok(addr)
    };
    tokio::time::timeout(timeout, fetch)
        .await
        .map_err(|_| fail(format!("no answer within {timeout:?}")))?
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
}
