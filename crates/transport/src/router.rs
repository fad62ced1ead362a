//! Routing: which broker groups serve a subject.
//!
//! [`Router`] is what producers and consumers ask; [`StaticRouter`] answers with fixed broker
//! addresses (a standalone qmq-rs broker, tests), [`crate::MetaRouter`] asks a QMQ meta server
//! and keeps the answers fresh.

use futures::future::BoxFuture;
use qmq_protocol::{BrokerGroup, BrokerState, ClientType};

use crate::ConnectionError;

/// Why a route could not be had.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// The meta server's HTTP address endpoint failed.
    #[error("meta server discovery at {url} failed: {reason}")]
    Discovery {
        /// The URL asked.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// Talking to the meta server failed.
    #[error(transparent)]
    Connection(#[from] ConnectionError),
    /// A request could not be encoded.
    #[error(transparent)]
    Encode(#[from] qmq_protocol::EncodeError),
    /// The meta server's answer could not be decoded.
    #[error(transparent)]
    Decode(#[from] qmq_protocol::DecodeError),
    /// The meta server answered with an error code.
    #[error("meta server answered code {0}")]
    Meta(i16),
}

/// Where the broker groups of subjects are. Implementations cache; [`Router::invalidate`] asks
/// them to look again (a broker said the subject is not assigned to it, or is read-only).
pub trait Router: Send + Sync + 'static {
    /// The broker groups for `subject`, as a client of type `client_type` (consumers also pass
    /// their `group`, producers an empty one).
    fn route<'a>(
        &'a self,
        subject: &'a str,
        client_type: ClientType,
        group: &'a str,
    ) -> BoxFuture<'a, Result<Vec<BrokerGroup>, RouteError>>;

    /// Forgets what is cached for `subject`; the next [`Router::route`] asks again.
    fn invalidate(&self, subject: &str);
}

/// Fixed broker addresses, each its own read-write group named after its address.
///
/// ```
/// use qmq_transport::StaticRouter;
/// let router = StaticRouter::new(["127.0.0.1:20881"]);
/// ```
#[derive(Debug, Clone)]
pub struct StaticRouter {
    groups: Vec<BrokerGroup>,
}

impl StaticRouter {
    /// A router answering every subject with `addrs` (`host:port`).
    pub fn new<I, S>(addrs: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let groups = addrs
            .into_iter()
            .map(Into::into)
            .map(|addr: String| BrokerGroup {
                name: addr.clone(),
                master: addr,
                update_time: 0,
                state: BrokerState::ReadWrite,
            })
            .collect();
        Self { groups }
    }
}

impl Router for StaticRouter {
    fn route<'a>(
        &'a self,
        _subject: &'a str,
        _client_type: ClientType,
        _group: &'a str,
    ) -> BoxFuture<'a, Result<Vec<BrokerGroup>, RouteError>> {
        Box::pin(async move { Ok(self.groups.clone()) })
    }

    fn invalidate(&self, _subject: &str) {}
}
