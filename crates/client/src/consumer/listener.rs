//! Listener consumers: [`Consumer::subscribe`] pulls a subject (and its group's retry subject)
//! from every broker of its route and runs a handler on each message, with bounded
//! concurrency, QMQ's ack/retry/dead-letter rules and clean shutdown.
//!
//! Per pulled batch: every message is handled (at most `concurrency` at once per
//! subscription); a failed one is sent, with `qmq_times` incremented, to
//! `%RETRY%<subject>%<group>`, or to `%DEAD_RETRY%<subject>%<group>` once `qmq_times` would
//! exceed the maximum retry number (the message's `qmq_maxRetryNum`, else the consumer's
//! setting, QMQ's default 32); then the batch's pull-log range is acked. The broker serves a
//! retry subject's message only after its retry delay (QMQ: 5 s), so a failing handler is
//! retried at that pace, the same for Rust and Java consumers. A failure that could not be
//! sent back is not acked (the batch is acked up to the message before it), so the broker
//! hands it out again. Routes are looked up
//! again every `route_refresh`: pulling starts on brokers that joined the route and stops
//! (after the batch in hand) on brokers that left it. A broker that answers BROKER_REJECT (a
//! slave, or a master deposed by a failover) or refuses or drops the connection makes the
//! subscription re-read its route at once (the router throttles the re-reads), so pulling
//! resumes on the group's new master without waiting for `route_refresh`.
//!
//! The same engine serves [`Consumer::stream`]: its handler hands each message to the stream
//! and waits for the delivery's outcome (see [`Deliveries`](super::Deliveries)).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::context::FutureExt as _;
use opentelemetry::trace::SpanContext;
use parking_lot::Mutex;
use qmq_protocol::{ClientType, Message, TagType};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::handler::{
    Filter, FilterContext, HandleError, HandleResult, MessageHandler, ReceivedMessage,
};
use super::{NewGroupStart, PullConsumer};
use crate::breaker::BreakerConfig;
use crate::brokers::{Brokers, Outcome};
use crate::message::{keys, MessageExt};
use crate::monitoring::{self, ProcessOutcome};
use crate::router::{RouteError, Router};
use crate::tracing_ctx;

/// Consumer settings.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// This consumer's id (unique per process; broadcast consumers each get every message).
    pub consumer_id: String,
    /// Messages asked for per pull.
    pub pull_batch: i32,
    /// How long a pull waits on the broker for messages (also bounds shutdown latency).
    pub pull_wait: Duration,
    /// Handlers running at once per subscription.
    pub concurrency: usize,
    /// Failed deliveries tolerated before the dead-letter subject, for messages that do not
    /// carry `qmq_maxRetryNum` (QMQ: 32).
    pub max_retry_num: u32,
    /// Tries to send a failed message back, or to ack, before leaving it to the broker.
    pub send_back_tries: u32,
    /// Pause between those tries, and the first pause after a failed pull or connection.
    pub backoff: Duration,
    /// Longest pause while a broker keeps failing: the pause after a failed pull or connection
    /// doubles from `backoff` up to this, until a pull succeeds again.
    pub max_backoff: Duration,
    /// How often a subscription looks its route up again.
    pub route_refresh: Duration,
    /// Extra delay before a failed message is sent back, unless its handler asked for one
    /// with [`HandleError::retry_after`](crate::HandleError::retry_after). Zero (the default,
    /// as QMQ's Java client) sends it straight to the retry subject, where the broker holds it
    /// for its own retry delay (`--retry-delay-secs`, QMQ: 5 s): one delay, not two. A
    /// non-zero delay sends it through the delay servers, and the broker's delay follows.
    pub retry_delay: Duration,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        Self {
            consumer_id: crate::id::client_id(),
            pull_batch: 30,
            pull_wait: Duration::from_secs(1),
            concurrency: 16,
            max_retry_num: 32,
            send_back_tries: 10,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            route_refresh: Duration::from_secs(30),
            retry_delay: Duration::ZERO,
        }
    }
}

/// How a subscription consumes (QMQ's `@QmqConsumer` attributes).
#[derive(Clone, Default)]
pub struct SubscribeOptions {
    /// Only messages with these tags (see `tag_type`); empty: every message.
    pub tags: Vec<String>,
    /// `And`: messages with all `tags`; `Or`: with any of them.
    pub tag_type: Option<TagType>,
    /// Every consumer of the group gets every message; failures are logged, not retried.
    pub broadcast: bool,
    /// Ack before handling: a message is never handed out twice, and lost if its handler fails.
    pub consume_most_once: bool,
    /// Hooks run around the handler, in order.
    pub filters: Vec<Arc<dyn Filter>>,
    /// Where the group starts on a broker that has never seen it (default: as the broker is
    /// configured, QMQ's rule being the latest message). The group's retry subject always
    /// starts at the earliest.
    pub new_group_start: NewGroupStart,
}

/// Why subscribing failed.
#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    /// The route could not be had.
    #[error(transparent)]
    Route(#[from] RouteError),
    /// The route lists no readable broker.
    #[error("no readable broker for subject {0}")]
    NoBroker(String),
    /// The consumer was shut down.
    #[error("consumer is shut down")]
    Closed,
    /// A `#[consumer]` function could not be subscribed: a placeholder, its state or its
    /// idempotent checker is missing (see [`crate::annotation`]).
    #[error(transparent)]
    Registration(#[from] crate::annotation::RegistrationError),
}

/// A running subscription; [`Subscription::shutdown`] stops it cleanly.
///
/// ```no_run
/// # async fn demo(consumer: qmq_client::Consumer) -> Result<(), qmq_client::ConsumeError> {
/// use std::sync::Arc;
/// use qmq_client::{ReceivedMessage, SubscribeOptions};
///
/// // Broadcast: every consumer of the group gets every message (QMQ's isBroadcast).
/// let options = SubscribeOptions { broadcast: true, ..SubscribeOptions::default() };
/// let handler = Arc::new(|m: ReceivedMessage| async move {
///     println!("config changed: {}", m.message_id);
///     Ok(())
/// });
/// let subscription = consumer.subscribe_handle("config.changed", "cache", handler, options).await?;
/// // ... QMQ's ListenerHolder.stopListen():
/// subscription.shutdown().await;
/// # Ok(()) }
/// ```
pub struct Subscription {
    cancel: CancellationToken,
    tasks: JoinSet<()>,
}

impl Subscription {
    /// Stops pulling, lets in-flight handlers finish, sends their failures back and acks.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        while let Some(r) = self.tasks.join_next().await {
            if let Err(e) = r {
                tracing::error!(error = %e, "pull task failed");
            }
        }
    }

    /// Stops pulling like [`Subscription::shutdown`], finishing in the background instead of
    /// waiting (for a `Drop`, which cannot wait).
    pub(super) fn detach(mut self) {
        self.cancel.cancel();
        self.tasks.detach_all();
    }
}

/// Subscribes listeners to subjects.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use qmq_client::{Consumer, ConsumerConfig, ReceivedMessage, StaticRouter, SubscribeOptions};
///
/// let consumer = Consumer::new(Arc::new(StaticRouter::new(["127.0.0.1:20881"])), ConsumerConfig::default());
/// consumer
///     .subscribe("order.created", "billing", |m: ReceivedMessage| async move {
///         println!("got {}", m.message_id);
///         Ok(())
///     }, SubscribeOptions::default())
///     .await?;
/// // ... later
/// consumer.shutdown().await;
/// # Ok(()) }
/// ```
pub struct Consumer {
    brokers: Arc<Brokers>,
    config: ConsumerConfig,
    subscriptions: Mutex<Option<Vec<Subscription>>>,
}

struct Ctx {
    brokers: Arc<Brokers>,
    config: ConsumerConfig,
    subject: String,
    group: String,
    options: SubscribeOptions,
    handler: Arc<dyn MessageHandler>,
    slots: Arc<Semaphore>,
    cancel: CancellationToken,
    /// Woken by a pull loop whose broker refused it or went away: re-read the route now.
    reroute: Notify,
}

impl Consumer {
    /// A consumer routing with `router`.
    pub fn new(router: Arc<dyn Router>, config: ConsumerConfig) -> Self {
        monitoring::describe();
        Self {
            brokers: Arc::new(Brokers::new(router, BreakerConfig::default())),
            config,
            subscriptions: Mutex::new(Some(Vec::new())),
        }
    }

    /// This consumer's settings.
    pub fn config(&self) -> &ConsumerConfig {
        &self.config
    }

    pub(crate) fn brokers(&self) -> &Arc<Brokers> {
        &self.brokers
    }

    /// Starts consuming `subject` as `group` with `handler`; runs until [`Consumer::shutdown`].
    ///
    /// A group new to a broker starts at the latest message there unless
    /// [`SubscribeOptions::new_group_start`] says otherwise
    /// ([crate docs](crate#where-a-new-consumer-group-starts)). Delivery is at least once: a
    /// message is acked after its handler returned `Ok`, and a lost ack (a consumer or broker
    /// that died in between) makes the broker hand it out again, so a handler may see a message
    /// it already handled ([crate docs](crate#at-least-once-a-handler-may-see-a-message-again);
    /// [`crate::idempotent`] for handlers that must run once).
    ///
    /// `handler` is a closure or function taking the [`ReceivedMessage`] and returning a future
    /// of [`HandleResult`]; its argument's type is inferred (`|m| async move { .. }` compiles).
    /// Handler values that are not closures (an [`Idempotent`](crate::idempotent::Idempotent)
    /// wrapper, a type of one's own implementing [`MessageHandler`]) go through
    /// [`Consumer::subscribe_with`].
    pub async fn subscribe<F, Fut>(
        &self,
        subject: &str,
        group: &str,
        handler: F,
        options: SubscribeOptions,
    ) -> Result<(), ConsumeError>
    where
        F: Fn(ReceivedMessage) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = HandleResult> + Send + 'static,
    {
        self.subscribe_with(subject, group, handler, options).await
    }

    /// [`Consumer::subscribe`] for any [`MessageHandler`]: an
    /// [`Idempotent`](crate::idempotent::Idempotent) wrapper or a type of one's own. (Closures
    /// are handlers too, but here the compiler cannot infer their argument's type: write
    /// `|m: ReceivedMessage|`, or use [`Consumer::subscribe`].)
    pub async fn subscribe_with(
        &self,
        subject: &str,
        group: &str,
        handler: impl MessageHandler,
        options: SubscribeOptions,
    ) -> Result<(), ConsumeError> {
        let sub = self
            .subscribe_handle(subject, group, Arc::new(handler), options)
            .await?;
        match self.subscriptions.lock().as_mut() {
            Some(subs) => {
                subs.push(sub);
                Ok(())
            }
            None => Err(ConsumeError::Closed),
        }
    }

    /// Like [`Consumer::subscribe`], but the caller owns the returned [`Subscription`] and
    /// stops it on its own.
    pub async fn subscribe_handle(
        &self,
        subject: &str,
        group: &str,
        handler: Arc<dyn MessageHandler>,
        options: SubscribeOptions,
    ) -> Result<Subscription, ConsumeError> {
        self.start(subject, group, handler, options, CancellationToken::new())
            .await
    }

    /// Starts the pull loops of `subject` as `group`, running `handler` on each message until
    /// `cancel` fires: the engine under both [`Consumer::subscribe`] and [`Consumer::stream`].
    pub(super) async fn start(
        &self,
        subject: &str,
        group: &str,
        handler: Arc<dyn MessageHandler>,
        options: SubscribeOptions,
        cancel: CancellationToken,
    ) -> Result<Subscription, ConsumeError> {
        let readable = readable_brokers(&self.brokers, subject, group).await?;
        if readable.is_empty() {
            return Err(ConsumeError::NoBroker(subject.to_owned()));
        }
        let ctx = Arc::new(Ctx {
            brokers: self.brokers.clone(),
            config: self.config.clone(),
            subject: subject.to_owned(),
            group: group.to_owned(),
            slots: Arc::new(Semaphore::new(self.config.concurrency.max(1))),
            options,
            handler,
            cancel: cancel.clone(),
            reroute: Notify::new(),
        });
        let mut pulled = vec![subject.to_owned()];
        if !ctx.options.broadcast {
            pulled.push(retry_subject(subject, group));
        }
        let mut tasks = JoinSet::new();
        tasks.spawn(supervise(ctx, readable, pulled));
        Ok(Subscription { cancel, tasks })
    }

    /// Whether [`Consumer::shutdown`] was called.
    pub(super) fn is_closed(&self) -> bool {
        self.subscriptions.lock().is_none()
    }

    /// Stops every subscription made with [`Consumer::subscribe`] (see
    /// [`Subscription::shutdown`]); later subscribes fail.
    pub async fn shutdown(&self) {
        let subs = self.subscriptions.lock().take().unwrap_or_default();
        futures::future::join_all(subs.into_iter().map(Subscription::shutdown)).await;
    }
}

/// `%RETRY%<subject>%<group>`: where a group's failed messages go.
pub fn retry_subject(subject: &str, group: &str) -> String {
    format!("%RETRY%{subject}%{group}")
}

/// `%DEAD_RETRY%<subject>%<group>`: where a group's messages go after the last retry.
pub fn dead_retry_subject(subject: &str, group: &str) -> String {
    format!("%DEAD_RETRY%{subject}%{group}")
}

async fn readable_brokers(
    brokers: &Brokers,
    subject: &str,
    group: &str,
) -> Result<HashSet<String>, RouteError> {
    let groups = brokers
        .router
        .route(subject, ClientType::Consumer, group)
        .await?;
    Ok(groups
        .into_iter()
        .filter(|g| g.state.can_read())
        .map(|g| g.master)
        .collect())
}

/// Runs the pull loops of a subscription: one per (broker, pulled subject), following the
/// route as it changes; on shutdown waits for all of them.
async fn supervise(ctx: Arc<Ctx>, initial: HashSet<String>, pulled: Vec<String>) {
    let mut loops = JoinSet::new();
    let mut running: HashMap<String, CancellationToken> = HashMap::new();
    let mut wanted = initial;
    loop {
        running.retain(|addr, token| {
            let keep = wanted.contains(addr);
            if !keep {
                tracing::info!(broker = %addr, subject = %ctx.subject, "broker left the route");
                token.cancel();
            }
            keep
        });
        for addr in &wanted {
            if running.contains_key(addr) {
                continue;
            }
            let token = ctx.cancel.child_token();
            for s in &pulled {
                loops.spawn(pull_loop(
                    ctx.clone(),
                    addr.clone(),
                    s.clone(),
                    token.clone(),
                ));
            }
            running.insert(addr.clone(), token);
        }
        tokio::select! {
            _ = ctx.cancel.cancelled() => break,
            _ = tokio::time::sleep(ctx.config.route_refresh) => {}
            _ = ctx.reroute.notified() => {}
        }
        match readable_brokers(&ctx.brokers, &ctx.subject, &ctx.group).await {
            Ok(now) if !now.is_empty() => wanted = now,
            Ok(_) => {
                tracing::warn!(subject = %ctx.subject, "route lists no readable broker; keeping the old one")
            }
            Err(e) => tracing::warn!(subject = %ctx.subject, error = %e, "route refresh failed"),
        }
        while loops.try_join_next().is_some() {}
    }
    while let Some(r) = loops.join_next().await {
        if let Err(e) = r {
            tracing::error!(error = %e, "pull task failed");
        }
    }
}

/// A pull loop's run of consecutive failures (connecting or pulling). Its start is logged as a
/// warning and its end (the next successful pull) as info; the failures in between are logged
/// at debug only, each followed by a pause that doubles from `backoff` up to `max_backoff`, so a
/// dead broker costs a few log lines and few connection attempts however long it stays dead.
struct Failures<'a> {
    config: &'a ConsumerConfig,
    broker: &'a str,
    subject: &'a str,
    /// Failures in the current run (0: pulling works).
    count: u32,
    /// Pause after the next failure.
    next_pause: Duration,
}

impl<'a> Failures<'a> {
    fn new(config: &'a ConsumerConfig, broker: &'a str, subject: &'a str) -> Self {
        Self {
            config,
            broker,
            subject,
            count: 0,
            next_pause: config.backoff,
        }
    }

    /// Records a failure, logged as `what`; returns the pause before the next try.
    fn failed(&mut self, what: &'static str, error: &dyn std::fmt::Display) -> Duration {
        let pause = self.next_pause;
        let max = self.config.max_backoff.max(self.config.backoff);
        if self.count == 0 {
            tracing::warn!(broker = %self.broker, subject = %self.subject, %error,
                max_pause = ?max, "{what}; retrying with back-off, logged again when it works");
        } else {
            tracing::debug!(broker = %self.broker, subject = %self.subject, %error,
                failures = self.count + 1, ?pause, "{what}");
        }
        self.count = self.count.saturating_add(1);
        self.next_pause = pause.saturating_mul(2).min(max);
        pause
    }

    /// Records a successful pull, ending a run of failures.
    fn succeeded(&mut self) {
        if self.count > 0 {
            tracing::info!(broker = %self.broker, subject = %self.subject,
                failures = self.count, "pulling works again");
        }
        self.count = 0;
        self.next_pause = self.config.backoff;
    }
}

async fn pull_loop(ctx: Arc<Ctx>, addr: String, pulled_subject: String, cancel: CancellationToken) {
    let mut consumer: Option<PullConsumer> = None;
    let mut failures = Failures::new(&ctx.config, &addr, &pulled_subject);
    while !cancel.is_cancelled() {
        let c = match consumer.as_mut() {
            Some(c) => c,
            None => match ctx.brokers.connection(&addr).await {
                Ok(conn) => {
                    let mut c = PullConsumer::new(
                        conn,
                        &pulled_subject,
                        &ctx.group,
                        &ctx.config.consumer_id,
                    )
                    .broadcast(ctx.options.broadcast)
                    .new_group_start(ctx.options.new_group_start);
                    if !ctx.options.tags.is_empty() {
                        let tag_type = ctx.options.tag_type.unwrap_or(TagType::Or);
                        c = c.with_tags(tag_type, &ctx.options.tags);
                    }
                    consumer.insert(c)
                }
                Err(e) => {
                    let pause = failures.failed("cannot connect for pulling", &e);
                    request_reroute(&ctx, &addr);
                    sleep_unless_cancelled(pause, &cancel).await;
                    continue;
                }
            },
        };
        match c.pull(ctx.config.pull_batch, ctx.config.pull_wait).await {
            Ok((_, messages)) if messages.is_empty() => failures.succeeded(),
            Ok((first, messages)) => {
                failures.succeeded();
                monitoring::pulled(&ctx.subject, &ctx.group, messages.len());
                let last = first + messages.len() as i64 - 1;
                consume_batch(&ctx, c, first, last, messages).await;
            }
            Err(e) => {
                let pause = failures.failed("pull failed", &e);
                monitoring::pull_failed(&ctx.subject, &ctx.group);
                consumer = None;
                if e.calls_for_reroute() {
                    request_reroute(&ctx, &addr);
                }
                sleep_unless_cancelled(pause, &cancel).await;
            }
        }
    }
}

/// Drops the connection to `addr`, marks the route stale and wakes the supervisor to re-read it.
fn request_reroute(ctx: &Ctx, addr: &str) {
    ctx.brokers.reroute(&ctx.subject, addr);
    ctx.reroute.notify_one();
}

async fn sleep_unless_cancelled(pause: Duration, cancel: &CancellationToken) {
    tokio::select! {
        _ = cancel.cancelled() => {}
        _ = tokio::time::sleep(pause) => {}
    }
}

async fn consume_batch(
    ctx: &Arc<Ctx>,
    c: &PullConsumer,
    first: i64,
    last: i64,
    messages: Vec<Message>,
) {
    // The context each message carries (its producer's span), and those to link the ack to.
    let parents: Vec<_> = messages.iter().map(tracing_ctx::extract).collect();
    let links: Vec<SpanContext> = parents.iter().filter_map(tracing_ctx::carried).collect();
    if ctx.options.consume_most_once {
        ack(ctx, c, first, last, &links).await;
    }
    let count = messages.len();
    let mut running = JoinSet::new();
    for (i, (mut m, parent)) in messages.into_iter().zip(parents).enumerate() {
        m.set_attr(keys::CONSUMER_GROUP_NAME, ctx.group.clone());
        let Ok(permit) = ctx.slots.clone().acquire_owned().await else {
            return;
        };
        let ctx = ctx.clone();
        running.spawn(async move {
            let received = ReceivedMessage::new(m.clone(), &ctx.subject, &ctx.group);
            let cx = tracing_ctx::start_process(&received, &parent);
            let result = handle(&ctx, received).with_context(cx.clone()).await;
            tracing_ctx::end_process(&cx, &result);
            drop(permit);
            (i, m, result)
        });
    }
    // Per message, in pull-log order: done with (handled, or failed and sent back).
    let mut settled = vec![false; count];
    while let Some(joined) = running.join_next().await {
        let (i, m, result) = match joined {
            Ok(done) => done,
            Err(e) => {
                // A panicking filter (handler panics are caught earlier): its message cannot be
                // recovered here; leave it unacked so the broker hands it out again.
                tracing::error!(error = %e, "message task failed");
                monitoring::processed(&ctx.subject, &ctx.group, ProcessOutcome::Panicked, None);
                continue;
            }
        };
        let e = match result {
            Ok(()) => {
                settled[i] = true;
                continue;
            }
            // A stream delivery left unresolved at shutdown: handed out again as it is.
            Err(e) if e.is_abandoned() => continue,
            Err(e) => e,
        };
        tracing::warn!(subject = %ctx.subject, group = %ctx.group, id = %m.message_id, error = %e, "message handling failed");
        if ctx.options.consume_most_once || ctx.options.broadcast {
            settled[i] = true;
            continue;
        }
        let delay = e.retry_delay().unwrap_or(ctx.config.retry_delay);
        settled[i] = send_back(ctx, m, delay).await;
    }
    if ctx.options.consume_most_once {
        return;
    }
    // Ack the batch, or as much of it as is settled from its start: the rest stays unacked,
    // and the broker hands it out again (to this consumer's next pull of a new connection, or
    // through the retry subject once a later ack skips it).
    let done = settled.iter().take_while(|s| **s).count();
    if done > 0 {
        ack(ctx, c, first, first + done as i64 - 1, &links).await;
    }
}

async fn handle(ctx: &Ctx, message: ReceivedMessage) -> HandleResult {
    let mut fctx = FilterContext::default();
    let filters = &ctx.options.filters;
    let mut ran = 0;
    for f in filters {
        if !f.pre_on_message(&message, &mut fctx) {
            break;
        }
        ran += 1;
    }
    let result = if ran == filters.len() {
        let started = std::time::Instant::now();
        let result = run_guarded(ctx.handler.handle(message.clone())).await;
        let outcome = match &result {
            Ok(()) => Some(ProcessOutcome::Ok),
            Err(e) if e.is_panic() => Some(ProcessOutcome::Panicked),
            Err(e) if e.retry_delay().is_some() => Some(ProcessOutcome::Retry),
            // Not processed: it will be, when it comes again.
            Err(e) if e.is_abandoned() => None,
            Err(_) => Some(ProcessOutcome::Failed),
        };
        if let Some(outcome) = outcome {
            monitoring::processed(&ctx.subject, &ctx.group, outcome, Some(started.elapsed()));
        }
        result
    } else {
        monitoring::processed(&ctx.subject, &ctx.group, ProcessOutcome::Filtered, None);
        Ok(())
    };
    for f in filters[..ran].iter().rev() {
        f.post_on_message(&message, &mut fctx, &result);
    }
    result
}

/// Runs a handler's future; a panic becomes a failure (so the message is retried) instead of
/// taking the batch down with it.
pub(crate) async fn run_guarded(
    fut: futures::future::BoxFuture<'static, HandleResult>,
) -> HandleResult {
    use futures::FutureExt;
    match std::panic::AssertUnwindSafe(fut).catch_unwind().await {
        Ok(result) => result,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".into());
            Err(HandleError::panicked(what))
        }
    }
}

/// Sends a failed message to the retry (or dead-letter) subject with `qmq_times` incremented,
/// for delivery after `delay`.
async fn send_back(ctx: &Ctx, m: Message, delay: Duration) -> bool {
    send_back_to(
        &ctx.brokers,
        &ctx.config,
        &ctx.subject,
        &ctx.group,
        m,
        delay,
    )
    .await
}

/// Sends `m`, which failed in `group` of `subject`, to the group's retry subject (or the
/// dead-letter one once out of retries) with `qmq_times` incremented; `true` once stored.
/// A retry with a non-zero `delay` goes to the delay servers, scheduled `delay` from now (as
/// QMQ's client does); dead letters go straight to a broker.
pub(crate) async fn send_back_to(
    brokers: &Brokers,
    config: &ConsumerConfig,
    subject: &str,
    group: &str,
    mut m: Message,
    delay: Duration,
) -> bool {
    let next = m.times() + 1;
    let max = m.max_retry_num().unwrap_or(config.max_retry_num);
    let dead = next > max;
    m.subject = if dead {
        tracing::warn!(id = %m.message_id, times = next - 1, "retries exhausted, dead-lettering");
        dead_retry_subject(subject, group)
    } else {
        retry_subject(subject, group)
    };
    m.set_attr(keys::TIMES, next.to_string());
    let now = chrono::Utc::now().timestamp_millis();
    m.set_attr(keys::CREATE_TIME, now.to_string());
    let client_type = if dead || delay.is_zero() {
        m.flags = m.flags.with_delay(false);
        ClientType::Producer
    } else {
        m.flags = m.flags.with_delay(true);
        m.expire_or_schedule = now.saturating_add(delay.as_millis() as i64);
        ClientType::DelayProducer
    };
    let batch = [m];
    for _ in 0..config.send_back_tries.max(1) {
        match brokers
            .send_once(
                &batch[0].subject,
                client_type,
                &batch,
                Duration::from_secs(5),
            )
            .await
        {
            Ok((_, outcomes)) if matches!(outcomes.first(), Some(Outcome::Stored)) => {
                monitoring::sent_back(subject, group, dead);
                return true;
            }
            Ok(_) => tracing::warn!(id = %batch[0].message_id, "send back refused"),
            Err(e) => tracing::warn!(id = %batch[0].message_id, error = %e, "send back failed"),
        }
        tokio::time::sleep(config.backoff).await;
    }
    monitoring::send_back_failed(subject, group);
    false
}

/// Acks the batch `first..=last`, whose messages carried the contexts `links`.
async fn ack(ctx: &Ctx, c: &PullConsumer, first: i64, last: i64, links: &[SpanContext]) {
    for _ in 0..ctx.config.send_back_tries.max(1) {
        let trace = tracing_ctx::start_ack(&ctx.subject, &ctx.group, last - first + 1, links);
        let result = c.ack(first, last).await;
        tracing_ctx::end_ack(&trace, result.as_ref().err().map(|e| e as _));
        match &result {
            Ok(()) => monitoring::acked(&ctx.subject, &ctx.group, last - first + 1),
            Err(_) => monitoring::ack_failed(&ctx.subject, &ctx.group),
        }
        match result {
            Ok(()) => return,
            Err(e) if e.calls_for_reroute() => {
                // Not the master any more (or gone): the new master hands the unacked batch
                // out again.
                tracing::warn!(first, last, error = %e, "ack refused; re-reading routes");
                request_reroute(ctx, c.connection().addr());
                return;
            }
            Err(e) => tracing::warn!(first, last, error = %e, "ack failed"),
        }
        tokio::time::sleep(ctx.config.backoff).await;
    }
}
