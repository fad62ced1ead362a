//! What listeners are given and give back: [`ReceivedMessage`], [`MessageHandler`],
//! [`HandleError`] and the [`Filter`] hooks with their [`FilterContext`].

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::ops::Deref;
use std::time::Duration;

use futures::future::BoxFuture;
use qmq_protocol::Message;

/// A message handed to a listener.
#[derive(Debug, Clone)]
pub struct ReceivedMessage {
    message: Message,
    subject: String,
    group: String,
}

impl ReceivedMessage {
    /// Wraps `message` pulled for `group` of the real subject `subject` (the message itself may
    /// come from the group's retry subject).
    pub fn new(message: Message, subject: &str, group: &str) -> Self {
        Self {
            message,
            subject: subject.to_owned(),
            group: group.to_owned(),
        }
    }

    /// The subject subscribed to (never a `%RETRY%` subject).
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The consumer group.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// The wire message.
    pub fn message(&self) -> &Message {
        &self.message
    }

    /// The wire message, owned.
    pub fn into_message(self) -> Message {
        self.message
    }
}

impl Deref for ReceivedMessage {
    type Target = Message;

    fn deref(&self) -> &Message {
        &self.message
    }
}

enum Kind {
    Failed(Box<dyn std::error::Error + Send + Sync>),
    NeedRetry {
        after: Duration,
        reason: String,
    },
    Panicked(String),
    /// A stream delivery left unresolved when its stream stopped: neither a success nor a
    /// failure; its batch is left unacked so the broker hands it out again.
    Abandoned,
}

/// A listener's failure: the message is handed out again (through the group's retry subject).
///
/// Any `std::error::Error` converts into it with `?`; the message goes straight back to the
/// group's retry subject and the broker serves it after its retry delay (QMQ's
/// `message.retry.delay.seconds`, 5 s), as with QMQ's Java client; a non-zero consumer
/// `retry_delay` adds a delay of its own before that. [`HandleError::retry_after`] is QMQ's
/// `NeedRetryException`: it asks for the next delivery after a delay of its own. Delayed
/// retries go through the delay servers the meta server routes delay producers to, and the
/// broker's retry delay follows once the delay server has forwarded the message.
pub struct HandleError {
    kind: Kind,
}

impl HandleError {
    /// A failure described by `message`.
    pub fn msg(message: impl fmt::Display) -> Self {
        Self {
            kind: Kind::Failed(message.to_string().into()),
        }
    }

    /// Asks for the next delivery after `after`.
    pub fn retry_after(after: Duration, reason: impl fmt::Display) -> Self {
        Self {
            kind: Kind::NeedRetry {
                after,
                reason: reason.to_string(),
            },
        }
    }

    /// The delay asked for by [`HandleError::retry_after`].
    pub fn retry_delay(&self) -> Option<Duration> {
        match self.kind {
            Kind::NeedRetry { after, .. } => Some(after),
            Kind::Failed(_) | Kind::Panicked(_) | Kind::Abandoned => None,
        }
    }

    /// The handler panicked with `what`.
    pub(crate) fn panicked(what: String) -> Self {
        Self {
            kind: Kind::Panicked(what),
        }
    }

    /// Whether the handler panicked (the listener caught it).
    pub fn is_panic(&self) -> bool {
        matches!(self.kind, Kind::Panicked(_))
    }

    /// A stream delivery still unresolved when its stream stopped (see
    /// [`Deliveries::shutdown`](crate::consumer::Deliveries::shutdown)).
    pub(crate) fn abandoned() -> Self {
        Self {
            kind: Kind::Abandoned,
        }
    }

    /// Whether this is [`HandleError::abandoned`]: not a failure, the message is to be handed
    /// out again as it is (not sent back, its batch not acked).
    pub(crate) fn is_abandoned(&self) -> bool {
        matches!(self.kind, Kind::Abandoned)
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for HandleError {
    fn from(e: E) -> Self {
        Self {
            kind: Kind::Failed(Box::new(e)),
        }
    }
}

impl fmt::Display for HandleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Failed(e) => write!(f, "{e}"),
            Kind::NeedRetry { after, reason } => write!(f, "retry after {after:?}: {reason}"),
            Kind::Panicked(what) => write!(f, "handler panicked: {what}"),
            Kind::Abandoned => write!(f, "left unresolved when the stream stopped"),
        }
    }
}

impl fmt::Debug for HandleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HandleError({self})")
    }
}

/// What a listener returns.
pub type HandleResult = Result<(), HandleError>;

/// Handles messages of a subscription. Implemented for every
/// `Fn(ReceivedMessage) -> impl Future<Output = HandleResult>`.
pub trait MessageHandler: Send + Sync + 'static {
    /// Handles one message; `Ok` acks it, `Err` sends it to the retry subject.
    fn handle(&self, message: ReceivedMessage) -> BoxFuture<'static, HandleResult>;
}

impl<F, Fut> MessageHandler for F
where
    F: Fn(ReceivedMessage) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandleResult> + Send + 'static,
{
    fn handle(&self, message: ReceivedMessage) -> BoxFuture<'static, HandleResult> {
        Box::pin(self(message))
    }
}

/// Values filters share while one message is handled, keyed by name.
#[derive(Default)]
pub struct FilterContext {
    values: HashMap<String, Box<dyn Any + Send + Sync>>,
}

impl FilterContext {
    /// Stores `value` under `key`.
    pub fn insert<T: Any + Send + Sync>(&mut self, key: &str, value: T) {
        self.values.insert(key.to_owned(), Box::new(value));
    }

    /// The value under `key`, if it is a `T`.
    pub fn get<T: Any + Send + Sync>(&self, key: &str) -> Option<&T> {
        self.values.get(key)?.downcast_ref()
    }
}

/// Hooks around a listener (QMQ's `Filter`): tracing, metrics, context set-up.
pub trait Filter: Send + Sync + 'static {
    /// Runs before the handler; `false` skips the handler and acks the message.
    fn pre_on_message(&self, message: &ReceivedMessage, context: &mut FilterContext) -> bool {
        let _ = (message, context);
        true
    }

    /// Runs after the handler (in reverse filter order) with its result.
    fn post_on_message(
        &self,
        message: &ReceivedMessage,
        context: &mut FilterContext,
        result: &HandleResult,
    ) {
        let _ = (message, context, result);
    }
}
