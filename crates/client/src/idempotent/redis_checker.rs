//! A Redis-backed checker: a claim is `SET <prefix><key> 1 NX PX <ttl>`, so claims expire on
//! their own (messages older than the expiry may run again); a release is `DEL`.

use std::time::Duration;

use futures::future::BoxFuture;
use redis::aio::ConnectionManager;

use super::{IdempotentChecker, IdempotentError};

/// Claimed keys in Redis, each kept for `ttl`.
///
/// ```no_run
/// # async fn demo(consumer: qmq_client::Consumer) -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use qmq_client::idempotent::{Idempotent, RedisChecker};
/// use qmq_client::{ReceivedMessage, SubscribeOptions};
///
/// // Keep claims longer than a message can take to come back (retries, a consumer lease).
/// let checker = RedisChecker::connect("redis://127.0.0.1/0", "billing:", Duration::from_secs(7 * 24 * 3600)).await?;
/// let handler = Idempotent::new(checker, |m: ReceivedMessage| async move {
///     println!("charging for {}", m.message_id);
///     Ok(())
/// });
/// consumer.subscribe_with("order.paid", "billing", handler, SubscribeOptions::default()).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisChecker {
    conn: ConnectionManager,
    prefix: String,
    ttl: Duration,
}

impl RedisChecker {
    /// Connects to `url` (`redis://host:port/db`); keys are `prefix` + message key.
    pub async fn connect(url: &str, prefix: &str, ttl: Duration) -> Result<Self, IdempotentError> {
        let client = redis::Client::open(url)?;
        let conn = ConnectionManager::new(client).await?;
        Ok(Self {
            conn,
            prefix: prefix.to_owned(),
            ttl,
        })
    }

    fn full_key(&self, key: &str) -> String {
        format!("{}{}", self.prefix, key)
    }
}

impl IdempotentChecker for RedisChecker {
    fn claim<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool, IdempotentError>> {
        Box::pin(async move {
            let ttl_ms = u64::try_from(self.ttl.as_millis())
                .unwrap_or(u64::MAX)
                .max(1);
            let set: Option<String> = redis::cmd("SET")
                .arg(self.full_key(key))
                .arg(1)
                .arg("NX")
                .arg("PX")
                .arg(ttl_ms)
                .query_async(&mut self.conn.clone())
                .await?;
            Ok(set.is_none())
        })
    }

    fn release<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), IdempotentError>> {
        Box::pin(async move {
            let _: i64 = redis::cmd("DEL")
                .arg(self.full_key(key))
                .query_async(&mut self.conn.clone())
                .await?;
            Ok(())
        })
    }
}
