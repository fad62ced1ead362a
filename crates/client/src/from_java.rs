//! Coming from QMQ's Java client: its concepts and their equivalents here (documentation
//! only; this module has no items).
//!
//! Both clients speak the same protocol to the same servers: a Rust producer's messages reach
//! Java consumers and the other way round, with their properties, tags, delays and retry
//! counts, and a group may mix Java and Rust consumers. The big differences are that
//! everything here is `async` (Tokio), that settings are plain structs instead of a
//! process-wide `ConfigCenter` and `pull_subject_config.properties`, and that handlers return
//! a `Result` instead of throwing.
//!
//! | QMQ Java | qmq-client |
//! |---|---|
//! | `metaServer` (`http://host:8080/meta/address`), `appCode` | [`Client::connect`](crate::Client::connect)`("host:8080", app_code)` (checks the meta server at once), one client shared by all producers and consumers; or [`MetaRouterConfig::new`]`("host:8080", app_code)` and a [`MetaRouter`] |
//! | `MessageProducerProvider` + `init()` | [`Client::producer`](crate::Client::producer)`().build()?` (setters per [`ProducerConfig`] field), or [`Producer::new`]`(router, config)` (no `init`: ready at once) |
//! | `sendThreads`, `sendBatch`, `maxQueueSize`, `sendTryCount`, `sendTimeoutMillis` | [`ProducerConfig`]: `max_in_flight`, `batch_size`, `queue_capacity`, `max_tries`, `send_timeout` (same defaults) |
//! | `producer.generateMessage(subject)` | [`new_message`]`(subject)` |
//! | `message.setProperty(k, v)`, `getLongProperty(k)`, ... | [`MessageExt`]: `set_i64`, `get_i64` (an `Option`: no silent `0`), `set_string`, `set_bool`, `set_date`, ... |
//! | `setLargeString` / `getLargeString` | [`MessageExt::set_large_string`] / [`MessageExt::get_large_string`] (same `key#partN` chunks) |
//! | the `body` string attribute (`setLargeString("body", text)` / `getLargeString("body")`) | [`MessageExt::set_body_text`] / [`MessageExt::body_text`] (the same attribute and chunks); bytes: [`MessageExt::set_body`] / [`MessageExt::body`], base64 (standard, padded) in `body` plus `bodyEncoding=base64`, which Java reads with `Base64.getDecoder().decode(m.getLargeString("body"))` ([details](crate::message#body)) |
//! | `addTag`, `setDelayTime(n, unit)`, `setDelayTime(date)` | [`MessageExt::add_tag`], [`MessageExt::set_delay`], [`MessageExt::set_delay_until`]; an expiry (Java: always 15 min; here none unless set): [`MessageExt::set_expire_after`] |
//! | `setMaxRetryNum` on the producer | none; consumers apply [`ConsumerConfig::max_retry_num`] (32) to messages without `qmq_maxRetryNum`, and honour it when a Java producer set it |
//! | `sendMessage(m)` / `sendMessage(m, MessageSendStateListener)` | `producer.send(m).await` (a [`SendReceipt`] or a [`SendError`]) / [`Producer::send_with_callback`] |
//! | `setTransactionProvider(...)`, `qmq_msg_queue`, the watchdog | `outbox::TransactionalProducer` (feature `sql`), same table and row format, `qmq watchdog` |
//! | `MessageConsumerProvider.addListener(subject, group, listener, executor)` | [`Consumer::subscribe`]`(subject, group, handler, `[`SubscribeOptions`]`)`; [`ConsumerConfig::concurrency`] instead of an executor |
//! | `MessageListener.onMessage(Message)` | an `async fn(`[`ReceivedMessage`]`) -> `[`HandleResult`], or a [`MessageHandler`] |
//! | throwing from `onMessage` | returning `Err(`[`HandleError`]`)` (any `std::error::Error` converts with `?`); a panic counts as a failure too |
//! | `NeedRetryException(next, msg)` | [`HandleError::retry_after`]`(delay, msg)` |
//! | `SubscribeParam`: `consumeMostOnce`, `tagType` + `tags`, `isBroadcast` | [`SubscribeOptions`]: `consume_most_once`, `tag_type` + `tags`, `broadcast` |
//! | `ListenerHolder.stopListen()` | [`Consumer::subscribe_handle`] and [`Subscription::shutdown`] |
//! | `provider.destroy()` | [`Consumer::shutdown`] (waits for running handlers and their acks), [`Producer::close`] |
//! | `@EnableQmq(appCode, metaServer)` + `@QmqConsumer(subject, consumerGroup, ...)` | `#[qmq_client::consumer(subject = .., group = ..)]` + [`Consumer::subscribe_registered`] on a consumer built with a [`MetaRouter`] |
//! | `${...}` in `@QmqConsumer`, `idempotentChecker = "bean"`, beans the listener uses | `subject = "${name}"`, `idempotent = "name"`, a second handler argument: all from a [`ConsumerContext`](crate::annotation::ConsumerContext) given to [`Consumer::subscribe_registered_with`] |
//! | `consumerProvider.getOrCreatePullConsumer(subject, group, isBroadcast)` (`PullConsumer`) | [`Consumer::pull_client`] ([`PullClient`]) — **not** this crate's [`PullConsumer`], which is the single-broker building block |
//! | `pullConsumer.pull(size, timeoutMillis)`, `message.ack(elapsed, null)` | [`PullClient::pull`], [`PullClient::ack`] (per batch) |
//! | `message.ack(elapsed, exception)` on a pulled message | [`PullClient::retry_later`] then [`PullClient::ack`] |
//! | `IdempotentChecker`, `JdbcIdempotentChecker` | [`idempotent::Idempotent`] around the handler, with `idempotent::SqlChecker` (feature `sql`, QMQ's `deduplicate_tbl`) |
//! | `TransactionalJdbcIdempotentChecker` | `idempotent::Transactional` (feature `sql`) |
//! | a Redis checker of one's own (`AbstractIdempotentChecker`) | `idempotent::RedisChecker` (feature `redis`), or an [`idempotent::IdempotentChecker`] of one's own |
//! | `Filter.preOnMessage` / `postOnMessage`, `filterContext` map | [`Filter::pre_on_message`] / [`Filter::post_on_message`], [`FilterContext`]; listed in [`SubscribeOptions::filters`] |
//! | QMQ's client metrics, OpenTracing spans | [`monitoring`](crate::monitoring) (the `metrics` facade), [`tracing_ctx`](crate::tracing_ctx) (OpenTelemetry, same `qtrace_` attributes) |
//! | `ClientIdProvider` | [`MetaRouterConfig::client_id`], [`ConsumerConfig::consumer_id`] |
//!
//! # Producer
//!
//! ```java
//! MessageProducerProvider producer = new MessageProducerProvider();
//! producer.setAppCode("order-service");
//! producer.setMetaServer("http://127.0.0.1:8080/meta/address");
//! producer.init();
//!
//! Message message = producer.generateMessage("order.created");
//! message.setProperty("orderId", 42L);
//! message.addTag("vip");
//! message.setDelayTime(10, TimeUnit.SECONDS);
//! producer.sendMessage(message, new MessageSendStateListener() {
//!     public void onSuccess(Message m) { log.info("sent {}", m.getMessageId()); }
//!     public void onFailed(Message m) { log.warn("failed {}", m.getMessageId()); }
//! });
//! ```
//!
//! ```no_run
//! use std::sync::Arc;
//! use std::time::Duration;
//! use qmq_client::{new_message, MessageExt, MetaRouter, MetaRouterConfig, Producer, ProducerConfig};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let router = Arc::new(MetaRouter::new(MetaRouterConfig::new("127.0.0.1:8080", "order-service")));
//! let producer = Producer::new(router, ProducerConfig::default());
//!
//! let mut message = new_message("order.created");
//! message.set_i64("orderId", 42)?;
//! message.add_tag("vip")?;
//! message.set_delay(Duration::from_secs(10)); // routed to the delay servers, as in Java
//!
//! // Either wait for the outcome ...
//! let receipt = producer.send(message.clone()).await?;
//! println!("sent {}", receipt.message_id);
//! // ... or, like sendMessage with a listener, get it in a callback.
//! producer.send_with_callback(message, |result| match result {
//!     Ok(receipt) => println!("sent {}", receipt.message_id),
//!     Err(e) => eprintln!("failed: {e}"),
//! })?;
//! producer.close().await; // waits for queued messages
//! # Ok(()) }
//! ```
//!
//! A message is retried with the same id (up to [`ProducerConfig::max_tries`], with
//! [`ProducerConfig::retry_backoff`] between tries where Java retries at once); as in Java a
//! BLOCK answer ends it at once and DUPLICATE is a success. Unlike Java, BROKER_BUSY is retried
//! (and counts against that broker's circuit breaker). Java's "durable" messages without a
//! transaction (written to the outbox before the send) have no equivalent: use
//! `outbox::TransactionalProducer` (feature `sql`) for messages that must survive the
//! producer's crash.
//!
//! # Listener (`addListener`)
//!
//! ```java
//! consumerProvider.addListener("order.created", "billing", message -> {
//!     long orderId = message.getLongProperty("orderId");
//!     if (!ready(orderId)) throw new NeedRetryException(new Date(System.currentTimeMillis() + 30_000), "not ready");
//!     charge(orderId);
//! }, executor, new SubscribeParam.SubscribeParamBuilder().setTagType(TagType.OR, "vip").create());
//! ```
//!
//! ```no_run
//! use std::sync::Arc;
//! use std::time::Duration;
//! use qmq_client::*;
//!
//! # async fn ready(_: i64) -> bool { true }
//! # async fn charge(_: i64) -> Result<(), std::io::Error> { Ok(()) }
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let router = Arc::new(MetaRouter::new(MetaRouterConfig::new("127.0.0.1:8080", "billing-service")));
//! // concurrency (handlers at once per subscription) stands for Java's executor.
//! let consumer = Consumer::new(router, ConsumerConfig { concurrency: 32, ..ConsumerConfig::default() });
//! let options = SubscribeOptions {
//!     tags: vec!["vip".into()],
//!     tag_type: Some(TagType::Or),
//!     ..SubscribeOptions::default()
//! };
//! consumer
//!     .subscribe("order.created", "billing", |m: ReceivedMessage| async move {
//!         let Some(order_id) = m.get_i64("orderId") else {
//!             return Err(HandleError::msg("no orderId")); // retried, then dead-lettered
//!         };
//!         if !ready(order_id).await {
//!             return Err(HandleError::retry_after(Duration::from_secs(30), "not ready"));
//!         }
//!         charge(order_id).await?; // an error sends the message to the retry subject
//!         Ok(())
//!     }, options)
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! The handler's result is the ack: there is no `autoAck(false)` and later `ack`. Do the
//! asynchronous work inside the handler's future and return when it is done. Failed messages
//! follow QMQ's rules: `%RETRY%<subject>%<group>` after the broker's retry delay, then
//! `%DEAD_RETRY%<subject>%<group>` once `qmq_times` exceeds the maximum retry number (32).
//!
//! # `@QmqConsumer`
//!
//! ```java
//! @EnableQmq(appCode = "shipping-service", metaServer = "http://127.0.0.1:8080/meta/address")
//! public class Config {}
//!
//! @QmqConsumer(subject = "order.created", consumerGroup = "shipping", executor = "qmqExecutor",
//!              tags = {"vip"}, tagType = TagType.OR)
//! public void onMessage(Message message) { ship(message.getMessageId()); }
//! ```
//!
//! ```no_run
//! use std::sync::Arc;
//! use qmq_client::{Consumer, ConsumerConfig, HandleResult, MetaRouter, MetaRouterConfig, ReceivedMessage};
//!
//! #[qmq_client::consumer(subject = "order.created", group = "shipping", tags = ["vip"], tag_type = "or")]
//! async fn on_message(message: ReceivedMessage) -> HandleResult {
//!     println!("shipping {}", message.message_id);
//!     Ok(())
//! }
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! // @EnableQmq: one consumer on the meta server starts every #[consumer] function.
//! let router = Arc::new(MetaRouter::new(MetaRouterConfig::new("127.0.0.1:8080", "shipping-service")));
//! let consumer = Consumer::new(router, ConsumerConfig::default());
//! consumer.subscribe_registered().await?;
//! # Ok(()) }
//! ```
//!
//! The attribute takes `subject`, `group`, `tags`, `tag_type` (`"and"`/`"or"`), `broadcast`,
//! `consume_most_once` and `idempotent` (QMQ's `idempotentChecker`). QMQ's `${...}`
//! placeholders, resolved from the Spring environment there, are resolved here from a
//! [`ConsumerContext`](crate::annotation::ConsumerContext) given to
//! [`Consumer::subscribe_registered_with`]: its configuration values, then environment variables
//! (`order.subject` → `ORDER_SUBJECT`), then a `${name:default}`. The context also holds what
//! Spring beans give a Java listener: shared state (a second handler argument, by type) and
//! idempotent checkers (by name). It has no `executor` (see [`ConsumerConfig::concurrency`]) and
//! no `filters`: a handler that needs those is subscribed with [`Consumer::subscribe`] and
//! [`SubscribeOptions::filters`].
//!
//! ```java
//! @QmqConsumer(subject = "${order.subject}", consumerGroup = "billing", executor = "qmqExecutor",
//!              idempotentChecker = "dedup")
//! public void onMessage(Message message) { billing.charge(message); }
//! ```
//!
//! ```no_run
//! use std::sync::Arc;
//! use qmq_client::annotation::ConsumerContext;
//! use qmq_client::{HandleResult, ReceivedMessage};
//!
//! struct Billing;
//! impl Billing {
//!     async fn charge(&self, _m: &ReceivedMessage) {}
//! }
//!
//! #[qmq_client::consumer(subject = "${order.subject}", group = "billing", idempotent = "dedup")]
//! async fn on_message(message: ReceivedMessage, billing: Arc<Billing>) -> HandleResult {
//!     billing.charge(&message).await;
//!     Ok(())
//! }
//!
//! # #[cfg(feature = "sql")]
//! # async fn demo(consumer: qmq_client::Consumer) -> Result<(), Box<dyn std::error::Error>> {
//! let checker = qmq_client::idempotent::SqlChecker::connect("mysql://app@db/billing", "deduplicate_tbl").await?;
//! let context = ConsumerContext::new()
//!     .config("order.subject", "order.paid") // or ORDER_SUBJECT in the environment
//!     .state(Arc::new(Billing))
//!     .checker("dedup", checker);
//! consumer.subscribe_registered_with(&context).await?;
//! # Ok(()) }
//! ```
//!
//! # `PullConsumer`
//!
//! ```java
//! PullConsumer pull = consumerProvider.getOrCreatePullConsumer("order.created", "audit", false);
//! List<Message> messages = pull.pull(10, 1000);
//! for (Message m : messages) {
//!     try { audit(m); m.ack(0, null); } catch (Exception e) { m.ack(0, e); }
//! }
//! ```
//!
//! ```no_run
//! use std::time::Duration;
//!
//! # async fn audit(_: &qmq_client::ReceivedMessage) -> Result<(), std::io::Error> { Ok(()) }
//! # async fn demo(consumer: qmq_client::Consumer) -> Result<(), Box<dyn std::error::Error>> {
//! let mut pull = consumer.pull_client("order.created", "audit").await?;
//! if let Some(batch) = pull.pull(10, Duration::from_secs(1)).await? {
//!     for m in &batch.messages {
//!         if audit(m).await.is_err() && !pull.retry_later(m).await {
//!             return Ok(()); // could not hand it back: leave the batch unacked, it comes again
//!         }
//!     }
//!     pull.ack(&batch).await?; // the whole batch, failures included (they were sent back)
//! }
//! # Ok(()) }
//! ```
//!
//! Acks are per batch, not per message. An unacked batch is handed out again.
//!
//! # Idempotent checkers
//!
//! ```java
//! @Bean JdbcIdempotentChecker dedup(DataSource ds) { return new JdbcIdempotentChecker(ds, "deduplicate_tbl"); }
//!
//! @QmqConsumer(subject = "order.paid", consumerGroup = "billing", executor = "qmqExecutor",
//!              idempotentChecker = "dedup")
//! public void onMessage(Message message) { charge(message); }
//! ```
//!
//! ```no_run
//! # #[cfg(feature = "sql")]
//! # async fn demo(consumer: qmq_client::Consumer) -> Result<(), Box<dyn std::error::Error>> {
//! use qmq_client::idempotent::{Idempotent, SqlChecker};
//! use qmq_client::{ReceivedMessage, SubscribeOptions};
//!
//! let checker = SqlChecker::connect("mysql://app@db/billing", "deduplicate_tbl").await?;
//! let handler = Idempotent::new(checker, |m: ReceivedMessage| async move {
//!     println!("charging for {}", m.message_id);
//!     Ok(())
//! });
//! consumer.subscribe_with("order.paid", "billing", handler, SubscribeOptions::default()).await?;
//! # Ok(()) }
//! ```
//!
//! The key is Java's, `<subject>%<group>%<message id>` ([`idempotent::message_key`]), and the
//! table is QMQ's `deduplicate_tbl`, so Java and Rust consumers of one group can share it. A
//! failed handler releases its key, as Java's checker does for a failure, so the retry runs.
//! Why handlers need this even when nothing fails: see the crate's
//! [at-least-once section](crate#at-least-once-a-handler-may-see-a-message-again).
//!
//! # Filters
//!
//! ```java
//! public class TimingFilter implements Filter {
//!     public boolean preOnMessage(Message m, Map<String, Object> ctx) { ctx.put("start", System.nanoTime()); return true; }
//!     public void postOnMessage(Message m, Throwable e, Map<String, Object> ctx) { log(m, System.nanoTime() - (long) ctx.get("start")); }
//! }
//! ```
//!
//! ```no_run
//! use std::sync::Arc;
//! use std::time::Instant;
//! use qmq_client::{Filter, FilterContext, HandleResult, ReceivedMessage, SubscribeOptions};
//!
//! struct Timing;
//!
//! impl Filter for Timing {
//!     fn pre_on_message(&self, _m: &ReceivedMessage, ctx: &mut FilterContext) -> bool {
//!         ctx.insert("start", Instant::now());
//!         true // false: skip the handler and ack the message
//!     }
//!     fn post_on_message(&self, m: &ReceivedMessage, ctx: &mut FilterContext, result: &HandleResult) {
//!         if let Some(start) = ctx.get::<Instant>("start") {
//!             println!("{} took {:?}: {:?}", m.message_id, start.elapsed(), result);
//!         }
//!     }
//! }
//!
//! # async fn demo(consumer: qmq_client::Consumer) -> Result<(), qmq_client::ConsumeError> {
//! let options = SubscribeOptions { filters: vec![Arc::new(Timing)], ..SubscribeOptions::default() };
//! consumer
//!     .subscribe("order.created", "billing", |_m: ReceivedMessage| async { Ok(()) }, options)
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! Filters run in order before the handler and in reverse order after it, as in Java; the
//! idempotency check is not a filter here but the [`idempotent::Idempotent`] wrapper, so it
//! runs after every filter's `pre_on_message`, as Java's checker (always the last filter) does.
//!
//! # Not carried over
//!
//! - `EnvProvider` (`qmq_env`/`qmq_subEnv` environment isolation) and `clientInfo.ldc`.
//! - `autoAck(false)` with a later `message.ack(...)` (see the listener section).
//! - `ListenerHolder.resumeListen()`: subscribe again instead.
//! - `setMaxRetryNum` on the producer (see the table).
//!
//! Routes are refreshed every [`MetaRouterConfig::refresh`] (30 s; Java: 60 s), and re-read at
//! once when a broker refuses the client or goes away.
//!
//! # Where a new group starts, and duplicates
//!
//! As in Java, a new consumer group starts at the latest message and delivery is at least once;
//! see the crate's [new group](crate#where-a-new-consumer-group-starts) and
//! [at-least-once](crate#at-least-once-a-handler-may-see-a-message-again) sections.

#[allow(unused_imports)]
use crate::{
    idempotent, new_message, Consumer, ConsumerConfig, Filter, FilterContext, HandleError,
    HandleResult, MessageExt, MessageHandler, MetaRouter, MetaRouterConfig, Producer,
    ProducerConfig, PullClient, PullConsumer, ReceivedMessage, SendError, SendReceipt,
    SubscribeOptions, Subscription,
};
