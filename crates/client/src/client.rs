//! [`Client`]: the entry point. Connects to the meta server once, checking it for real, and
//! hands out producer and consumer builders that share its router.
//!
//! ```no_run
//! use qmq_client::{new_message, Client};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let client = Client::connect("127.0.0.1:8080", "order-service").await?;
//! let producer = client.producer().build()?;
//! let receipt = producer.send(new_message("order.created")).await?;
//! println!("stored {} on {}", receipt.message_id, receipt.broker);
//! producer.close().await;
//! # Ok(()) }
//! ```

use std::sync::Arc;
use std::time::Duration;

use qmq_transport::DiscoveryError;

use crate::consumer::ConsumerBuilder;
use crate::producer::ProducerBuilder;
use crate::router::Router;
use crate::{Consumer, MetaRouter, MetaRouterConfig, Producer};

/// How long [`Client::connect`] waits for the meta server by default.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why [`Client::connect`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The meta server could not be reached or did not answer as one: the error names the
    /// address and the step that failed (HTTP unreachable, an answer other than 200 with a
    /// `host:port`, its TCP address unreachable, the timeout).
    #[error(transparent)]
    Meta(#[from] DiscoveryError),
    /// No application code was given ([`ClientBuilder::app_code`]); the meta server records
    /// every client under one.
    #[error("no application code: set one with ClientBuilder::app_code")]
    NoAppCode,
    /// [`ClientBuilder::connect`] was polled outside a Tokio runtime.
    #[error("Client::connect must run on a Tokio runtime (none is running on this thread)")]
    NoRuntime,
}

/// Why a [`ProducerBuilder`] or [`ConsumerBuilder`] could not build.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// `build()` was called outside a Tokio runtime: the producer's dispatcher and the
    /// consumer's pull loops are tasks of the runtime they are built on.
    #[error(
        "{what} must be built on a Tokio runtime (none is running on this thread): build it \
         inside #[tokio::main], a runtime's block_on or a task"
    )]
    NoRuntime {
        /// `"Producer"` or `"Consumer"`.
        what: &'static str,
    },
    /// A setting is out of range.
    #[error("{what} setting {field}: {reason}")]
    Invalid {
        /// `"Producer"` or `"Consumer"`.
        what: &'static str,
        /// The setting (the config field's name).
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// The runtime check every builder makes before starting anything.
pub(crate) fn require_runtime(what: &'static str) -> Result<tokio::runtime::Handle, BuildError> {
    tokio::runtime::Handle::try_current().map_err(|_| BuildError::NoRuntime { what })
}

/// A connection to a QMQ deployment through its meta server: one shared [`MetaRouter`] for
/// every producer and consumer made from it. Cheap to clone (clones share the router).
///
/// [`Client::connect`] checks the meta server before returning: a wrong address or a dead
/// meta server is an error here, naming the address and what failed, rather than sends and
/// subscriptions that fail later.
///
/// ```no_run
/// use std::time::Duration;
/// use qmq_client::{Client, ReceivedMessage, SubscribeOptions};
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let client = Client::builder("127.0.0.1:8080")
///     .app_code("order-service")
///     .connect_timeout(Duration::from_secs(2))
///     .connect()
///     .await?;
/// let consumer = client.consumer().concurrency(4).build()?;
/// consumer
///     .subscribe("order.created", "billing", |m: ReceivedMessage| async move {
///         println!("got {}", m.message_id);
///         Ok(())
///     }, SubscribeOptions::default())
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    router: Arc<MetaRouter>,
    meta_http: Arc<str>,
    meta_tcp: Arc<str>,
    app_code: Arc<str>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("meta_http", &self.meta_http)
            .field("meta_tcp", &self.meta_tcp)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects to the meta server whose HTTP address is `meta_http` (`host:port`; QMQ Java's
    /// `metaServer` URL is `http://<meta_http>/meta/address`) as application `app_code`,
    /// within [`DEFAULT_CONNECT_TIMEOUT`]. [`Client::builder`] sets more.
    pub async fn connect(meta_http: &str, app_code: &str) -> Result<Client, ConnectError> {
        Client::builder(meta_http)
            .app_code(app_code)
            .connect()
            .await
    }

    /// A builder for a client of the meta server at `meta_http` (`host:port`).
    pub fn builder(meta_http: &str) -> ClientBuilder {
        ClientBuilder {
            config: MetaRouterConfig::new(meta_http, ""),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }

    /// The shared router, for the lower-level constructors ([`Producer::builder`],
    /// [`Consumer::builder`], [`Producer::new`], ...).
    pub fn router(&self) -> Arc<dyn Router> {
        self.router.clone()
    }

    /// The meta server's HTTP address, as given.
    pub fn meta_http(&self) -> &str {
        &self.meta_http
    }

    /// The meta server's TCP address, as its HTTP endpoint answered when connecting.
    pub fn meta_address(&self) -> &str {
        &self.meta_tcp
    }

    /// A producer builder routing through this client (QMQ's `MessageProducerProvider`).
    pub fn producer(&self) -> ProducerBuilder {
        Producer::builder(self.router()).app_code(&self.app_code)
    }

    /// A consumer builder routing through this client (QMQ's `MessageConsumerProvider`).
    pub fn consumer(&self) -> ConsumerBuilder {
        Consumer::builder(self.router())
    }
}

/// Settings of a [`Client`]; from [`Client::builder`].
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `connect().await`"]
pub struct ClientBuilder {
    config: MetaRouterConfig,
    connect_timeout: Duration,
}

impl ClientBuilder {
    /// This application's code, sent with every registration (QMQ's `appCode`); required.
    pub fn app_code(mut self, app_code: &str) -> Self {
        self.config.app_code = app_code.to_owned();
        self
    }

    /// How long [`ClientBuilder::connect`] waits for the meta server, both steps together
    /// (default [`DEFAULT_CONNECT_TIMEOUT`]).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The id this client registers with (default: host name, process id and a counter).
    pub fn client_id(mut self, client_id: &str) -> Self {
        self.config.client_id = client_id.to_owned();
        self
    }

    /// How often cached routes are refreshed from the meta server (default 30 s).
    pub fn route_refresh(mut self, every: Duration) -> Self {
        self.config.refresh = every;
        self
    }

    /// Deadline of one request to the meta server after connecting (default 5 s).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.config.timeout = timeout;
        self
    }

    /// Least time between two forced re-reads of one route (default 200 ms; see
    /// [`MetaRouterConfig::min_reroute`]).
    pub fn min_reroute(mut self, min: Duration) -> Self {
        self.config.min_reroute = min;
        self
    }

    /// Connects: asks the meta server's HTTP endpoint for its TCP address and connects to
    /// that, within the connect timeout. Fails, naming the address and the step, when either
    /// is unreachable, the answer is not a 200 with a `host:port`, or time runs out.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future drops the half-made client; nothing is left running.
    pub async fn connect(self) -> Result<Client, ConnectError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(ConnectError::NoRuntime);
        }
        if self.config.app_code.trim().is_empty() {
            return Err(ConnectError::NoAppCode);
        }
        let meta_http: Arc<str> = self.config.meta_http.as_str().into();
        let app_code: Arc<str> = self.config.app_code.as_str().into();
        let router = Arc::new(MetaRouter::new(self.config));
        let meta_tcp = router.check(self.connect_timeout).await?;
        tracing::debug!(meta_http = %meta_http, meta_tcp, "connected to the meta server");
        Ok(Client {
            router,
            meta_http,
            meta_tcp: meta_tcp.into(),
            app_code,
        })
    }
}
