//! What the engine hands due messages to.

use bytes::Bytes;
use futures::future::BoxFuture;

use crate::error::DispatchError;

/// A message whose time has come.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueMessage {
    /// The subject.
    pub subject: String,
    /// The message id.
    pub message_id: String,
    /// When it was due (ms since the epoch; "now" for messages scheduled in the past).
    pub due_ms: i64,
    /// The message's stored wire form, exactly as it was received.
    pub message: Bytes,
}

/// Takes due messages onward (to a realtime broker, in production).
///
/// The engine calls it with batches in due-time order, one call at a time, and records a
/// message as dispatched only once it is reported accepted; messages not accepted are offered
/// again (after a growing pause) until they are. A call may be dropped before it completes
/// (engine shutdown): then none of its messages count as accepted.
pub trait Dispatcher: Send + Sync + 'static {
    /// Hands `batch` over. `Ok(accepted)` tells, per message in order, whether it was accepted
    /// (missing entries count as not accepted); `Err` means none was.
    fn dispatch<'a>(
        &'a self,
        batch: &'a [DueMessage],
    ) -> BoxFuture<'a, Result<Vec<bool>, DispatchError>>;
}
