//! The stream API: [`Consumer::stream`] yields each message as a [`Delivery`] that the
//! application resolves itself, with [`Delivery::ack`], [`Delivery::nack`] or
//! [`Delivery::retry_after`].
//!
//! # One mechanism
//!
//! The stream is an adapter over the listener engine ([`Consumer::subscribe`]): it subscribes
//! a handler of its own that hands each message to the stream, with a oneshot channel for its
//! outcome, and waits for that outcome. Everything else is the listener's code, run once for
//! both APIs: pulling the subject and the group's retry subject from every broker of the route,
//! following route changes and failovers, tag filters, [`Filter`](crate::Filter) hooks (they
//! run before the delivery is yielded and after it is resolved), at-most-once (the batch is
//! acked before its deliveries are yielded), broadcast, sending failures to the retry or
//! dead-letter subject, acking each batch once all of its messages are resolved, and the
//! tracing spans and metrics (`Qmq.Consume.Process` and `qmq_client_process_*` cover a
//! delivery from the moment it is handed to the stream until it is resolved).
//!
//! The other way round, a listener rebuilt on the stream, would have cost more: the per-batch
//! bookkeeping (which messages of a pulled range are done, when to ack) has to live below the
//! stream anyway, and every handler call would go through a channel and a task of its own.
//!
//! # Backpressure
//!
//! A stream has at most [`ConsumerConfig::concurrency`] deliveries outstanding (handed to the
//! stream, yielded or not, and not yet resolved). While that many are out, the engine hands out
//! nothing more; each pull task pulls its next batch only once every message of the previous
//! one is resolved. So memory stays bounded by what the pull tasks hold (`pull_batch` messages
//! per broker and pulled subject). Resolve deliveries promptly: one held back keeps its batch
//! unacked and its broker's pull task waiting.
//!
//! # Delivery guarantees
//!
//! As with listeners, delivery is at least once: a batch is acked after its deliveries are
//! resolved, so a message can come again if the ack is lost (see the crate docs). A delivery
//! dropped without being resolved is a failure, like a handler's `Err` (the message goes to the
//! retry subject). [`Deliveries::shutdown`] leaves unresolved deliveries to be handed out
//! again, as they are, to the group's next consumer (without counting a failure); with
//! [`SubscribeOptions::consume_most_once`] they are lost instead, their batch being acked
//! already.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::Stream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::handler::{HandleError, HandleResult, MessageHandler, ReceivedMessage};
#[cfg(doc)]
use super::listener::ConsumerConfig;
use super::listener::{ConsumeError, Consumer, SubscribeOptions, Subscription};

impl Consumer {
    /// A [`Stream`] of the messages of `subject` for `group`: each is a [`Delivery`] to
    /// resolve with [`Delivery::ack`], [`Delivery::nack`] or [`Delivery::retry_after`].
    ///
    /// `options` work as for [`Consumer::subscribe`] (tags, filters, broadcast, at-most-once,
    /// where a new group starts). At most [`ConsumerConfig::concurrency`] deliveries are
    /// outstanding at once. The caller owns the stream: stop it with
    /// [`Deliveries::shutdown`] ([`Consumer::shutdown`] does not stop streams).
    ///
    /// ```no_run
    /// # async fn demo(consumer: qmq_client::Consumer) -> Result<(), qmq_client::ConsumeError> {
    /// use std::time::Duration;
    /// use futures::StreamExt;
    /// use qmq_client::{HandleError, MessageExt, SubscribeOptions};
    ///
    /// let mut deliveries = consumer.stream("order.created", "billing", SubscribeOptions::default()).await?;
    /// while let Some(d) = deliveries.next().await {
    ///     match d.get_i64("orderId") {
    ///         Some(id) if id > 0 => d.ack(),
    ///         Some(_) => d.retry_after(Duration::from_secs(60)),
    ///         None => d.nack(HandleError::msg("no orderId")),
    ///     }
    /// #   break;
    /// }
    /// deliveries.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub async fn stream(
        &self,
        subject: &str,
        group: &str,
        options: SubscribeOptions,
    ) -> Result<Deliveries, ConsumeError> {
        if self.is_closed() {
            return Err(ConsumeError::Closed);
        }
        let cancel = CancellationToken::new();
        // Every message in the channel holds one of the engine's `concurrency` permits, so it
        // never holds more than that.
        let (tx, rx) = mpsc::channel(self.config().concurrency.max(1));
        let handout = Arc::new(Handout {
            tx,
            cancel: cancel.clone(),
        });
        let subscription = self.start(subject, group, handout, options, cancel).await?;
        Ok(Deliveries {
            rx,
            subscription: Some(subscription),
        })
    }
}

/// A message handed to the stream, not yet yielded.
struct Handed {
    message: ReceivedMessage,
    outcome: oneshot::Sender<HandleResult>,
    trace: opentelemetry::Context,
}

/// The stream's handler in the listener engine: hands each message to the stream and waits
/// for its outcome; on shutdown, what is still unresolved is abandoned.
struct Handout {
    tx: mpsc::Sender<Handed>,
    cancel: CancellationToken,
}

impl MessageHandler for Handout {
    fn handle(&self, message: ReceivedMessage) -> BoxFuture<'static, HandleResult> {
        let tx = self.tx.clone();
        let cancel = self.cancel.clone();
        Box::pin(async move {
            let (outcome, resolved) = oneshot::channel();
            let handed = Handed {
                message,
                outcome,
                // The engine runs this with the message's `Qmq.Consume.Process` span current.
                trace: opentelemetry::Context::current(),
            };
            tokio::select! {
                biased;
                sent = tx.send(handed) => {
                    if sent.is_err() {
                        return Err(HandleError::abandoned());
                    }
                }
                _ = cancel.cancelled() => return Err(HandleError::abandoned()),
            }
            tokio::select! {
                // An outcome given before the shutdown wins over it.
                biased;
                r = resolved => r.unwrap_or_else(|_| Err(HandleError::abandoned())),
                _ = cancel.cancelled() => Err(HandleError::abandoned()),
            }
        })
    }
}

/// The messages of one subject for one group, as [`Delivery`]s: a [`Stream`] made by
/// [`Consumer::stream`]. Use it with [`futures::StreamExt`] (`deliveries.next().await`).
///
/// The stream does not end on its own (it yields `None` only once its pull tasks stopped,
/// which only [`Deliveries::shutdown`] or dropping it does); stop it with
/// [`Deliveries::shutdown`]. Dropping it stops it too, in the background, with the same
/// outcome.
///
/// # Cancel safety
///
/// `next()` is cancel safe: a `next()` future dropped before it completed (say, the losing
/// branch of a `tokio::select!`) has taken no message; the message it would have yielded is
/// yielded by the next call, so none is lost.
pub struct Deliveries {
    rx: mpsc::Receiver<Handed>,
    /// `None` once shut down.
    subscription: Option<Subscription>,
}

impl Deliveries {
    /// Stops the stream: stops pulling, resolves what was acked and nacked (sends the nacked
    /// ones back and acks what is done, as a listener's shutdown does) and leaves every
    /// delivery still unresolved, yielded or not, to be handed out again as it is (to the
    /// group's next stream or listener; with the same [`ConsumerConfig::consumer_id`], such as
    /// a new stream of the same [`Consumer`], at once; otherwise after the broker's consumer
    /// lease). Resolving a delivery after this has no effect.
    ///
    /// # Cancel safety
    ///
    /// Pulling stops as soon as this is first polled; dropping the future before it completes
    /// lets the stream finish in the background, as dropping [`Deliveries`] does.
    pub async fn shutdown(mut self) {
        self.rx.close();
        if let Some(s) = self.subscription.take() {
            s.shutdown().await;
        }
    }
}

impl Drop for Deliveries {
    fn drop(&mut self) {
        if let Some(s) = self.subscription.take() {
            s.detach();
        }
    }
}

impl Stream for Deliveries {
    type Item = Delivery;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Delivery>> {
        self.rx.poll_recv(cx).map(|handed| {
            handed.map(|h| Delivery {
                message: h.message,
                outcome: Some(h.outcome),
                trace: h.trace,
            })
        })
    }
}

impl std::fmt::Debug for Deliveries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deliveries")
            .field("running", &self.subscription.is_some())
            .finish_non_exhaustive()
    }
}

/// One message yielded by [`Deliveries`]; it derefs to the [`ReceivedMessage`]. Resolve it
/// with exactly one of [`Delivery::ack`], [`Delivery::nack`] or [`Delivery::retry_after`]
/// (each takes it by value).
///
/// A delivery dropped unresolved counts as a failure (like [`Delivery::nack`]; the consumer
/// logs it once, at warn), so no message is lost when, say, the code handling it returns early
/// with `?` or panics.
pub struct Delivery {
    message: ReceivedMessage,
    /// `None` once resolved.
    outcome: Option<oneshot::Sender<HandleResult>>,
    trace: opentelemetry::Context,
}

/// What a delivery dropped unresolved is resolved with.
const DROPPED: &str = "delivery dropped without ack or nack";

impl Delivery {
    /// Done with the message: it is acked with its batch (once every message of the batch is
    /// resolved) and not handed out again.
    ///
    /// # Cancel safety
    ///
    /// Not async, so there is no future to drop: the outcome is recorded at once and the ack
    /// goes to the broker in the background. Until the broker has it, the message may come
    /// again (the process dies, the connection drops, the broker fails over): delivery is at
    /// least once.
    pub fn ack(mut self) {
        self.resolve(Ok(()));
    }

    /// The message failed, like a listener's `Err`: it goes to the group's retry subject with
    /// `qmq_times` incremented (to the dead-letter subject once out of retries) and comes back
    /// after the broker's retry delay (plus the consumer's `retry_delay`, if any). In broadcast
    /// and at-most-once modes the failure is only logged.
    pub fn nack(mut self, error: impl Into<HandleError>) {
        self.resolve(Err(error.into()));
    }

    /// Asks for the next delivery after `after`, like a listener's
    /// [`HandleError::retry_after`] (through the delay servers the meta server routes delay
    /// producers to).
    pub fn retry_after(mut self, after: Duration) {
        self.resolve(Err(HandleError::retry_after(
            after,
            "asked for with Delivery::retry_after",
        )));
    }

    /// The message.
    pub fn message(&self) -> &ReceivedMessage {
        &self.message
    }

    /// The OpenTelemetry context of this delivery's `Qmq.Consume.Process` span (a child of the
    /// producer's span the message carries): run the handling code in it
    /// (`opentelemetry::context::FutureExt::with_context`) so that its spans and the messages
    /// it sends join the message's trace. The span ends when the delivery is resolved.
    pub fn trace_context(&self) -> &opentelemetry::Context {
        &self.trace
    }

    fn resolve(&mut self, result: HandleResult) {
        if let Some(outcome) = self.outcome.take() {
            // Refused only after the stream stopped: the message comes again anyway.
            let _ = outcome.send(result);
        }
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        // Logged (once, at warn) by the engine as a failed message.
        self.resolve(Err(HandleError::msg(DROPPED)));
    }
}

impl std::ops::Deref for Delivery {
    type Target = ReceivedMessage;

    fn deref(&self) -> &ReceivedMessage {
        &self.message
    }
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("message", &self.message)
            .field("resolved", &self.outcome.is_none())
            .finish_non_exhaustive()
    }
}
