//! The broker side shared by producers and consumers: routes, one connection and one circuit
//! breaker per broker address, and "send this batch of one subject to some writable broker".
//!
//! Failover: a broker that answers BROKER_REJECT (a slave, or a master the meta server
//! deposed) or whose connection is refused or reset makes the client re-read the subject's
//! routes right away ([`Brokers::reroute`]; the router throttles the re-reads) and drop its
//! connection to that address, so the next try goes to the group's new master.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use qmq_protocol::codes::response;
use qmq_protocol::{ClientType, Message, ProducerCode};

use crate::breaker::{BreakerConfig, CircuitBreaker, Permit};
use crate::producer::{send_batch, SendError};
use crate::router::Router;
use crate::{Connection, ConnectionError};

/// Connections and breakers per broker address, plus the router.
pub(crate) struct Brokers {
    pub(crate) router: Arc<dyn Router>,
    conns: Mutex<HashMap<String, Connection>>,
    breakers: Mutex<HashMap<String, Arc<CircuitBreaker>>>,
    breaker_config: BreakerConfig,
    next: AtomicUsize,
}

/// What happened to each message of a batch sent to one broker.
pub(crate) enum Outcome {
    /// Stored (or already stored: a duplicate of an earlier try).
    Stored,
    /// Worth another try, maybe on another broker.
    Retry(SendError),
    /// Refused for good.
    Failed(SendError),
}

impl Brokers {
    pub(crate) fn new(router: Arc<dyn Router>, breaker_config: BreakerConfig) -> Self {
        Self {
            router,
            conns: Mutex::new(HashMap::new()),
            breakers: Mutex::new(HashMap::new()),
            breaker_config,
            next: AtomicUsize::new(0),
        }
    }

    /// The breaker of broker `addr`.
    pub(crate) fn breaker(&self, addr: &str) -> Arc<CircuitBreaker> {
        self.breakers
            .lock()
            .entry(addr.to_owned())
            .or_insert_with(|| Arc::new(CircuitBreaker::new(self.breaker_config)))
            .clone()
    }

    /// An open connection to `addr`, reusing the cached one while it is usable.
    pub(crate) async fn connection(&self, addr: &str) -> Result<Connection, ConnectionError> {
        if let Some(c) = self.conns.lock().get(addr).filter(|c| c.is_open()) {
            return Ok(c.clone());
        }
        let conn = Connection::connect(addr).await?;
        self.conns.lock().insert(addr.to_owned(), conn.clone());
        Ok(conn)
    }

    /// Drops the connection to `addr` (closing it for every user) and asks the router to
    /// re-read `subject`'s routes: the broker at `addr` refused the client as a non-master or
    /// is unreachable.
    pub(crate) fn reroute(&self, subject: &str, addr: &str) {
        // Debug: the callers log why, once per failure run (a dead broker is retried often).
        tracing::debug!(
            subject,
            broker = addr,
            "broker refused or unreachable; re-reading routes"
        );
        self.router.invalidate(subject);
        if let Some(conn) = self.conns.lock().remove(addr) {
            conn.close();
        }
    }

    /// When the first of `subject`'s writable brokers lets a request through again, if every
    /// one of them has its breaker open now (None otherwise, or when the route cannot be had).
    pub(crate) async fn reopens_at(
        &self,
        subject: &str,
        client_type: ClientType,
    ) -> Option<tokio::time::Instant> {
        let groups = self.router.route(subject, client_type, "").await.ok()?;
        groups
            .iter()
            .filter(|g| g.state.can_write())
            .map(|g| self.breaker(&g.master).open_until())
            .collect::<Option<Vec<_>>>()?
            .into_iter()
            .min()
    }

    /// Sends `messages` (all of `subject`) once, to the next writable broker whose breaker lets
    /// the request through. Returns the broker's address and one outcome per message; an `Err`
    /// means nothing was stored by this try.
    pub(crate) async fn send_once(
        &self,
        subject: &str,
        client_type: ClientType,
        messages: &[Message],
        timeout: Duration,
    ) -> Result<(String, Vec<Outcome>), SendError> {
        let groups = self.router.route(subject, client_type, "").await?;
        let writable: Vec<_> = groups.iter().filter(|g| g.state.can_write()).collect();
        if writable.is_empty() {
            self.router.invalidate(subject);
            return Err(SendError::NoBroker(subject.to_owned()));
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let chosen = (0..writable.len())
            .map(|i| writable[(start + i) % writable.len()])
            .find(|g| self.breaker(&g.master).try_acquire());
        let Some(group) = chosen else {
            // The route may be stale (a failover moved the group to another address, whose
            // breaker is closed): re-read it (throttled by the router).
            self.router.invalidate(subject);
            return Err(SendError::BrokersUnavailable(subject.to_owned()));
        };
        let addr = group.master.clone();
        // Reported below; dropped unreported (this future cancelled, or BROKER_REJECT), it
        // gives a half-open breaker's probe back.
        let breaker = Permit::new(self.breaker(&addr));
        let conn = match self.connection(&addr).await {
            Ok(c) => c,
            Err(e) => {
                breaker.failure();
                self.reroute(subject, &addr);
                return Err(e.into());
            }
        };
        let results = match send_batch(&conn, messages, timeout).await {
            Ok(r) => r,
            Err(SendError::Broker(response::BROKER_REJECT)) => {
                // A completed round trip from a live server that is not the master: no
                // breaker failure (its address may serve as master again), a new route.
                self.reroute(subject, &addr);
                return Err(SendError::Broker(response::BROKER_REJECT));
            }
            // A message that cannot be encoded never reached the broker: not its failure.
            Err(e @ SendError::Encode(_)) => return Err(e),
            Err(e) => {
                breaker.failure();
                if e.is_unreachable() {
                    self.reroute(subject, &addr);
                }
                return Err(e);
            }
        };
        let mut overloaded = false;
        let outcomes = results
            .into_iter()
            .map(|r| match r {
                Ok(()) => Outcome::Stored,
                Err(SendError::Refused {
                    code: ProducerCode::Duplicate,
                    ..
                }) => Outcome::Stored,
                Err(e @ SendError::Refused { code, .. }) => match code {
                    ProducerCode::Block => Outcome::Failed(e),
                    ProducerCode::SubjectNotAssigned | ProducerCode::ReadOnly => {
                        self.router.invalidate(subject);
                        Outcome::Retry(e)
                    }
                    _ => {
                        overloaded = true;
                        Outcome::Retry(e)
                    }
                },
                Err(e) => Outcome::Retry(e),
            })
            .collect();
        if overloaded {
            breaker.failure();
        } else {
            breaker.success();
        }
        Ok((addr, outcomes))
    }
}
