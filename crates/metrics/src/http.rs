//! `GET /metrics` over HTTP: the server ([`serve`]) and a client ([`scrape`]).

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing;
use axum::Router;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use crate::{MetricsError, Registry, CONTENT_TYPE};

/// How long [`scrape`] waits for a whole answer.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(30);

/// A running metrics endpoint. It stops when [`MetricsServer::shutdown`] is called or the
/// handle is dropped.
#[derive(Debug)]
pub struct MetricsServer {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl MetricsServer {
    /// The bound address (the port chosen when asked for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, lets scrapes in progress finish, and waits for the server to end.
    pub async fn shutdown(self) {
        let Self { stop, task, .. } = self;
        let _ = stop.send(());
        if let Err(e) = task.await {
            tracing::warn!(error = %e, "the metrics server task failed");
        }
    }
}

/// Binds `addr` and answers `GET /metrics` with `registry`'s metrics in the Prometheus text
/// format (other paths: 404). Returns once bound.
pub async fn serve(addr: SocketAddr, registry: Registry) -> Result<MetricsServer, MetricsError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Io {
            op: "bind the metrics port",
            source,
        })?;
    let bound = listener.local_addr().map_err(|source| MetricsError::Io {
        op: "metrics port address",
        source,
    })?;
    let app = Router::new()
        .route("/metrics", routing::get(metrics))
        .with_state(registry);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, app).with_graceful_shutdown(async {
            let _ = stopped.await;
        });
        if let Err(e) = served.await {
            tracing::error!(error = %e, "the metrics server failed");
        }
    });
    tracing::info!(addr = %bound, "metrics endpoint listening");
    Ok(MetricsServer {
        addr: bound,
        stop,
        task,
    })
}

async fn metrics(State(registry): State<Registry>) -> Response {
    // Collectors may read the disk: encode off the runtime.
    match tokio::task::spawn_blocking(move || registry.encode()).await {
        Ok(Ok(text)) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "encoding metrics failed");
            (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "the metrics encoding task failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "encoding task failed").into_response()
        }
    }
}

/// What a metrics endpoint answered.
#[derive(Debug, Clone)]
pub struct Exposition {
    /// The answer's `Content-Type`.
    pub content_type: String,
    /// The metrics, as text.
    pub text: String,
}

/// Fetches `GET /metrics` from `addr` (host:port), within 30 s.
pub async fn scrape(addr: &str) -> Result<Exposition, MetricsError> {
    get(addr, "/metrics").await
}

/// Fetches `path` from `addr`; anything but 200 is an error.
pub(crate) async fn get(addr: &str, path: &str) -> Result<Exposition, MetricsError> {
    let fail = |reason: String| MetricsError::Scrape {
        addr: addr.to_owned(),
        reason,
    };
    let exchange = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|source| MetricsError::Io {
                op: "connect to the metrics endpoint",
                source,
            })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| fail(e.to_string()))?;
        let driver = tokio::spawn(conn);
        let request = hyper::Request::get(path)
            .header(header::HOST, addr)
            .body(Empty::<Bytes>::new())
            .map_err(|e| fail(e.to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let status = response.status();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| fail(e.to_string()))?
            .to_bytes();
        driver.abort();
        if status != StatusCode::OK {
            return Err(fail(format!("HTTP {status}")));
        }
        let text = String::from_utf8(body.to_vec()).map_err(|e| fail(e.to_string()))?;
        Ok(Exposition { content_type, text })
    };
    tokio::time::timeout(SCRAPE_TIMEOUT, exchange)
        .await
        .map_err(|_| fail(format!("no answer within {SCRAPE_TIMEOUT:?}")))?
}
