//! Idempotent consumption (QMQ's `IdempotentChecker`): brokers deliver at least once, so a
//! handler wrapped in [`Idempotent`] runs at most once per message key, whatever the number of
//! deliveries.
//!
//! Redeliveries happen without any failure: a handler finished, but its ack was lost because
//! the consumer or the broker died first (acks reach a slave asynchronously, so a failover can
//! lose the last ones); the broker then hands the message out again. A test that killed a master
//! under load saw 30 such repeats. This is the case the checkers are for (the crate's
//! [at-least-once section](crate#at-least-once-a-handler-may-see-a-message-again)).
//!
//! The wrapper claims the key before the handler runs; a key already claimed means "done
//! before": the message is acked without running the handler. When the handler fails, the claim
//! is removed again, so the retry runs it. Stores, each behind a cargo feature of this crate
//! (both off by default, so an application pulls in no database driver it does not use):
//!
//! | feature | stores |
//! |---|---|
//! | `sql` | `SqlChecker` (PostgreSQL, MySQL/MariaDB, SQLite through sqlx, QMQ's `deduplicate_tbl` layout) and `Transactional`, which runs the handler inside the same database transaction as the claim, so the handler's writes and the claim commit or roll back together |
//! | `redis` | `RedisChecker` (keys with an expiry) |
//!
//! Without either feature, [`Idempotent`] and [`IdempotentChecker`] remain, for a store of your
//! own.

#[cfg(feature = "redis")]
mod redis_checker;
#[cfg(feature = "sql")]
mod sql;

use std::sync::Arc;

use futures::future::BoxFuture;

use crate::consumer::{HandleError, HandleResult, MessageHandler, ReceivedMessage};

#[cfg(feature = "redis")]
pub use redis_checker::RedisChecker;
#[cfg(feature = "sql")]
pub use sql::{Dialect, SqlChecker, Transactional, TransactionalHandler};

/// Why a checker's store failed.
///
/// Non-exhaustive: the variants of a store exist only with that store's feature, and another
/// crate in the build may turn a feature on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdempotentError {
    /// The database failed.
    #[cfg(feature = "sql")]
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
    /// Redis failed.
    #[cfg(feature = "redis")]
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
    /// A table name that is not a plain identifier (letters, digits, `_`).
    #[cfg(feature = "sql")]
    #[error("invalid table name {0:?}")]
    BadTable(String),
    /// A database URL whose scheme is not postgres, mysql/mariadb or sqlite.
    #[cfg(feature = "sql")]
    #[error("unsupported database URL {0:?}")]
    BadUrl(String),
    /// A store of the application's own failed.
    #[error(transparent)]
    Other(Box<dyn std::error::Error + Send + Sync>),
}

/// A store of message keys already handled.
pub trait IdempotentChecker: Send + Sync + 'static {
    /// Claims `key`; `true` when it was claimed before (the message was handled already).
    fn claim<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool, IdempotentError>>;

    /// The handler failed: releases the claim so a later delivery runs it again.
    fn release<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), IdempotentError>>;
}

/// QMQ's key of a message: `<subject>%<group>%<message id>`.
pub fn message_key(message: &ReceivedMessage) -> String {
    format!(
        "{}%{}%{}",
        message.subject(),
        message.group(),
        message.message_id
    )
}

/// A [`MessageHandler`] running `handler` at most once per [`message_key`].
///
/// With the `sql` feature:
///
/// ```no_run
/// # #[cfg(feature = "sql")]
/// # async fn demo(consumer: qmq_client::Consumer) -> Result<(), Box<dyn std::error::Error>> {
/// use qmq_client::idempotent::{Idempotent, SqlChecker};
/// use qmq_client::SubscribeOptions;
///
/// let checker = SqlChecker::connect("postgres://postgres@127.0.0.1/test", "deduplicate_tbl").await?;
/// checker.create_table().await?;
/// let handler = Idempotent::new(checker, |m| async move {
///     println!("charging for {}", m.message_id);
///     Ok(())
/// });
/// consumer.subscribe_with("order.paid", "billing", handler, SubscribeOptions::default()).await?;
/// # Ok(()) }
/// ```
pub struct Idempotent<C, H> {
    checker: Arc<C>,
    handler: Arc<H>,
}

impl<C, F, Fut> Idempotent<C, F>
where
    C: IdempotentChecker,
    F: Fn(ReceivedMessage) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = HandleResult> + Send + 'static,
{
    /// Wraps the closure or function `handler` with `checker`; the closure's argument type is
    /// inferred (`|m| async move { .. }`). Other [`MessageHandler`]s go through
    /// [`Idempotent::wrap`].
    pub fn new(checker: C, handler: F) -> Self {
        Self::wrap(checker, handler)
    }
}

impl<C: IdempotentChecker, H: MessageHandler> Idempotent<C, H> {
    /// Wraps any [`MessageHandler`] with `checker` (a type of one's own, another wrapper). A
    /// closure works too, but its argument type must then be written out: use
    /// [`Idempotent::new`].
    pub fn wrap(checker: C, handler: H) -> Self {
        Self {
            checker: Arc::new(checker),
            handler: Arc::new(handler),
        }
    }
}

impl<C: IdempotentChecker, H: MessageHandler> MessageHandler for Idempotent<C, H> {
    fn handle(&self, message: ReceivedMessage) -> BoxFuture<'static, HandleResult> {
        let checker = self.checker.clone();
        let handler = self.handler.clone();
        Box::pin(async move {
            let key = message_key(&message);
            if checker.claim(&key).await? {
                tracing::debug!(key, "already handled, skipping");
                crate::monitoring::duplicate(message.subject(), message.group());
                return Ok(());
            }
            // A panic counts as a failure: the claim must not outlive it.
            let result =
                crate::consumer::run_guarded(MessageHandler::handle(&*handler, message)).await;
            if result.is_err() {
                if let Err(e) = checker.release(&key).await {
                    // The claim stays: the retry would be skipped. Report it loudly.
                    tracing::error!(key, error = %e, "cannot release the idempotency claim");
                    return Err(HandleError::from(e));
                }
            }
            result
        })
    }
}
