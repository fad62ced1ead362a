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
/// to the retry subject, in batches of at most `max_bytes` (one larger message alone), then
/// acks up to `last`. Returns how many were moved. The caller holds the consumer's ack lock,
/// so no ack of the same consumer runs in between. Interrupted half way, the batches already
/// appended are appended again next time (at least once, never lost).
pub async fn retry_range(
    store: &Store,
    key: &ConsumerKey,
    first: u64,
    last: u64,
    max_bytes: usize,
) -> Result<usize, BrokerError> {
    let mut moved = 0;
    let mut next = first;
    while next <= last {
        let s = store.clone();
        let k = key.clone();
        let n = usize::try_from(last - next + 1).unwrap_or(usize::MAX);
        let pulled =
            tokio::task::spawn_blocking(move || s.pulled_since_within(&k, next, n, max_bytes))
                .await??;
        let Some(end) = pulled.last().map(|p| p.pull_seq) else {
            break; // the rest was deleted by retention or is damaged: nothing left to move
        };
        let mut batch = Vec::with_capacity(pulled.len());
        for p in &pulled {
            match to_retry(&p.message, &key.subject, &key.group) {
                Ok(m) => batch.push(m),
                Err(e) => tracing::error!(error = %e, "dropping an undecodable message from retry"),
            }
        }
        moved += batch.len();
        if !batch.is_empty() {
            store.append(batch).await?;
        }
        next = end + 1;
    }
    let s = store.clone();
    let k = key.clone();
    tokio::task::spawn_blocking(move || s.ack(&k, last)).await??;
    Ok(moved)
}
