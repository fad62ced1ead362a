//! Moving messages a consumer will not finish to its group's retry subject.
//!
//! Two cases, as in QMQ: an ack that skips pull-log sequences (the consumer lost track of
//! them), and a consumer that went offline with messages pulled but not acked. Either way the
//! messages are appended again under `%RETRY%<subject>%<group>` (which every QMQ consumer of the
//! group also pulls) before the original range is acked, so nothing is lost in between.

use bytes::Bytes;
use qmq_protocol::wire::Reader;
use qmq_protocol::Message;
use qmq_store::{ConsumerKey, Store};

use crate::subjects;
use crate::BrokerError;

/// The stored form of `message` moved to the retry subject of `subject`/`group` (unchanged if
/// it already is a retry message).
pub fn to_retry(
    message: &[u8],
    subject: &str,
    group: &str,
) -> Result<(String, Bytes), BrokerError> {
    let mut m = Message::decode_stored(&mut Reader::new(message))?;
    if !subjects::is_retry(&m.subject) {
        m.subject = subjects::retry_subject(subject, group);
    }
    let bytes = m.to_stored()?;
    Ok((m.subject, bytes))
}

/// Appends the consumer's pulled-but-unacked messages with pull-log sequences `first..=last`
/// to the retry subject, then acks up to `last`. Returns how many were moved.
pub async fn retry_range(
    store: &Store,
    key: &ConsumerKey,
    first: u64,
    last: u64,
) -> Result<usize, BrokerError> {
    if first > last {
        return Ok(0);
    }
    let s = store.clone();
    let k = key.clone();
    let pulled =
        tokio::task::spawn_blocking(move || s.pulled_since(&k, first, (last - first + 1) as usize))
            .await??;
    let mut batch = Vec::with_capacity(pulled.len());
    for p in &pulled {
        match to_retry(&p.message, &key.subject, &key.group) {
            Ok(m) => batch.push(m),
            Err(e) => tracing::error!(error = %e, "dropping an undecodable message from retry"),
        }
    }
    let moved = batch.len();
    if !batch.is_empty() {
        store.append(batch).await?;
    }
    let s = store.clone();
    let k = key.clone();
    tokio::task::spawn_blocking(move || s.ack(&k, last)).await??;
    Ok(moved)
}
