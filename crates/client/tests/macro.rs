//! `#[qmq_client::consumer]` registers functions that `subscribe_registered_with` resolves
//! (placeholders, constants, state, idempotent checkers) and starts.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Once, OnceLock};
use std::time::Duration;

use common::*;
use futures::future::BoxFuture;
use parking_lot::Mutex;
use qmq_client::annotation::{
    registered, ConsumerContext, ConsumerRegistration, PlaceholderError, RegistrationError,
};
use qmq_client::idempotent::{message_key, IdempotentChecker, IdempotentError};
use qmq_client::*;
use tokio::sync::mpsc;

type Seen = mpsc::UnboundedSender<(&'static str, String)>;

/// Where the one-argument handlers report (only the end-to-end test runs them).
static SEEN: OnceLock<Seen> = OnceLock::new();

fn seen(what: &'static str, message: &ReceivedMessage) {
    SEEN.get()
        .unwrap()
        .send((what, message.message_id.clone()))
        .unwrap();
}

#[qmq_client::consumer(subject = "m.orders", group = "billing")]
async fn on_order(message: ReceivedMessage) -> HandleResult {
    seen("order", &message);
    Ok(())
}

#[qmq_client::consumer(
    subject = "m.vip",
    group = "vip",
    tags = ["gold", "fast"],
    tag_type = "and",
    broadcast = false,
    consume_most_once = true
)]
async fn on_vip(message: ReceivedMessage) -> HandleResult {
    seen("vip", &message);
    Ok(())
}

/// A placeholder from the context, and one inside a literal.
#[qmq_client::consumer(subject = "${test.subject}", group = "billing.${test.env}")]
async fn on_configured(message: ReceivedMessage) -> HandleResult {
    seen("configured", &message);
    Ok(())
}

/// The environment variable `${qmq.macro.test.env.subject}` maps to.
const ENV_VAR: &str = "QMQ_MACRO_TEST_ENV_SUBJECT";

/// A placeholder only the environment resolves.
#[qmq_client::consumer(subject = "${qmq.macro.test.env.subject}", group = "env")]
async fn on_env(message: ReceivedMessage) -> HandleResult {
    seen("env", &message);
    Ok(())
}

fn set_env() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| std::env::set_var(ENV_VAR, "m.env"));
}

const CONST_SUBJECT: &str = "m.const";
const CONST_TAG: &str = "red";

mod names {
    pub const GROUP: &str = "const-group";
}

/// Constants, one of them by a path; a tag placeholder with a default.
#[qmq_client::consumer(
    subject = CONST_SUBJECT,
    group = names::GROUP,
    tags = [CONST_TAG, "${const.tag:blue}"]
)]
async fn on_const(message: ReceivedMessage) -> HandleResult {
    seen("const", &message);
    Ok(())
}

/// State shared with the handlers that take it.
struct AppState {
    tx: Seen,
}

#[qmq_client::consumer(subject = "m.state", group = "state")]
async fn on_state(message: ReceivedMessage, state: Arc<AppState>) -> HandleResult {
    state
        .tx
        .send(("state", message.message_id.clone()))
        .unwrap();
    Ok(())
}

const DEDUP: &str = "dedup";

/// State and an idempotent checker (named by a constant).
#[qmq_client::consumer(subject = "m.paid", group = "paid", idempotent = DEDUP)]
async fn on_paid(message: ReceivedMessage, state: Arc<AppState>) -> HandleResult {
    state.tx.send(("paid", message.message_id.clone())).unwrap();
    Ok(())
}

/// An in-memory checker that also records every claim asked of it.
#[derive(Default)]
struct MemoryChecker {
    done: Mutex<HashSet<String>>,
    claims: Mutex<Vec<String>>,
}

impl IdempotentChecker for MemoryChecker {
    fn claim<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool, IdempotentError>> {
        Box::pin(async move {
            let before = !self.done.lock().insert(key.to_owned());
            self.claims.lock().push(key.to_owned());
            Ok(before)
        })
    }

    fn release<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), IdempotentError>> {
        Box::pin(async move {
            self.done.lock().remove(key);
            Ok(())
        })
    }
}

fn registration(function: &str) -> &'static ConsumerRegistration {
    registered()
        .find(|r| r.name.ends_with(&format!("::{function}")))
        .unwrap_or_else(|| panic!("{function} is not registered"))
}

/// A context with everything the registrations above need.
fn full_context(tx: Seen, checker: Arc<MemoryChecker>) -> ConsumerContext {
    set_env();
    ConsumerContext::new()
        .config("test.subject", "m.configured")
        .configs([("test.env", "beta")])
        .state(Arc::new(AppState { tx }))
        .shared_checker(DEDUP, checker)
}

#[test]
fn attributes_are_registered() {
    let vip = registered().find(|r| r.subject == "m.vip").unwrap();
    assert_eq!(vip.group, "vip");
    assert_eq!(vip.tags, ["gold", "fast"]);
    assert_eq!(vip.tag_type, TagType::And);
    assert!(vip.consume_most_once);
    assert!(!vip.broadcast);
    assert!(vip.name.ends_with("::on_vip"));
    assert_eq!(vip.idempotent, None);
    let order = registered().find(|r| r.subject == "m.orders").unwrap();
    assert_eq!(order.tag_type, TagType::Or);
    assert!(order.tags.is_empty());
    // As written: placeholders are resolved when subscribing.
    assert_eq!(registration("on_configured").subject, "${test.subject}");
    assert_eq!(registration("on_const").group, "const-group");
    assert_eq!(registration("on_paid").idempotent, Some("dedup"));
    assert_eq!(registered().count(), 7);
}

#[test]
fn placeholders_resolve_from_the_context_and_inside_literals() {
    let (tx, _rx) = mpsc::unbounded_channel();
    let context = full_context(tx, Arc::default());
    let r = registration("on_configured").resolve(&context).unwrap();
    assert_eq!(r.subject, "m.configured");
    assert_eq!(r.group, "billing.beta");
    // The context wins over the environment.
    let r = registration("on_env")
        .resolve(&context.config("qmq.macro.test.env.subject", "m.from-config"))
        .unwrap();
    assert_eq!(r.subject, "m.from-config");
}

#[test]
fn placeholders_fall_back_to_environment_variables() {
    set_env();
    assert_eq!(
        ConsumerContext::env_var_name("qmq.macro.test.env.subject"),
        ENV_VAR
    );
    let r = registration("on_env")
        .resolve(&ConsumerContext::new())
        .unwrap();
    assert_eq!(r.subject, "m.env");
    // Without the environment the same placeholder is an error naming function and variable.
    let err = registration("on_env")
        .resolve(&ConsumerContext::new().without_env())
        .unwrap_err();
    match &err {
        RegistrationError::Placeholder {
            handler,
            source: PlaceholderError::Unset { name, env_var },
        } => {
            assert!(handler.ends_with("::on_env"));
            assert_eq!(name, "qmq.macro.test.env.subject");
            assert_eq!(env_var, ENV_VAR);
        }
        other => panic!("unexpected {other:?}"),
    }
    let text = err.to_string();
    assert!(text.contains("on_env"), "{text}");
    assert!(text.contains("${qmq.macro.test.env.subject}"), "{text}");
}

#[test]
fn constants_and_defaults_resolve() {
    let r = registration("on_const")
        .resolve(&ConsumerContext::new().without_env())
        .unwrap();
    assert_eq!(r.subject, "m.const");
    assert_eq!(r.group, "const-group");
    assert_eq!(r.options.tags, ["red", "blue"]);
    let r = registration("on_const")
        .resolve(
            &ConsumerContext::new()
                .without_env()
                .config("const.tag", "green"),
        )
        .unwrap();
    assert_eq!(r.options.tags, ["red", "green"]);
}

#[test]
fn unresolved_placeholders_are_errors() {
    let err = registration("on_configured")
        .resolve(&ConsumerContext::new().without_env())
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("on_configured"), "{text}");
    assert!(text.contains("${test.subject}"), "{text}");
    assert!(text.contains("TEST_SUBJECT"), "{text}");
    // A subject that resolves to nothing is refused too.
    let err = registration("on_configured")
        .resolve(
            &ConsumerContext::new()
                .without_env()
                .config("test.subject", "")
                .config("test.env", "x"),
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            RegistrationError::Empty {
                what: "subject",
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn state_is_handed_to_the_handler() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let r = registration("on_state")
        .resolve(&ConsumerContext::new().state(Arc::new(AppState { tx })))
        .unwrap();
    let m = ReceivedMessage::new(new_message("m.state"), "m.state", "state");
    r.handler.handle(m.clone()).await.unwrap();
    assert_eq!(rx.try_recv().unwrap(), ("state", m.message_id.clone()));

    // State of another type does not count.
    let err = registration("on_state")
        .resolve(&ConsumerContext::new().state(AppState2))
        .unwrap_err();
    match &err {
        RegistrationError::MissingState { handler, type_name } => {
            assert!(handler.ends_with("::on_state"));
            assert!(type_name.contains("Arc<") && type_name.contains("AppState>"));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(err.to_string().contains("on_state"), "{err}");
}

#[derive(Clone)]
struct AppState2;

#[tokio::test]
async fn the_named_checker_skips_duplicate_deliveries() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let checker = Arc::new(MemoryChecker::default());
    let r = registration("on_paid")
        .resolve(&full_context(tx, checker.clone()))
        .unwrap();
    let m = ReceivedMessage::new(new_message("m.paid"), "m.paid", "paid");
    r.handler.handle(m.clone()).await.unwrap();
    r.handler.handle(m.clone()).await.unwrap(); // delivered again: skipped
    assert_eq!(rx.try_recv().unwrap(), ("paid", m.message_id.clone()));
    assert!(rx.try_recv().is_err(), "the duplicate ran the handler");
    assert_eq!(*checker.claims.lock(), [message_key(&m), message_key(&m)]);

    let (tx, _rx) = mpsc::unbounded_channel();
    let err = registration("on_paid")
        .resolve(&ConsumerContext::new().state(Arc::new(AppState { tx })))
        .unwrap_err();
    match &err {
        RegistrationError::MissingChecker { handler, name } => {
            assert!(handler.ends_with("::on_paid"));
            assert_eq!(*name, "dedup");
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn a_missing_piece_fails_subscribing_before_anything_starts() {
    set_env();
    // Nothing listens there: resolving fails before any connection is tried.
    let router = Arc::new(StaticRouter::new([dead_addr().await]));
    let consumer = Consumer::new(router, ConsumerConfig::default());
    // Environment only: no `test.subject`, no state, no checker.
    let err = consumer.subscribe_registered().await.unwrap_err();
    assert!(
        matches!(err, ConsumeError::Registration(_)),
        "unexpected {err:?}"
    );
    let (tx, _rx) = mpsc::unbounded_channel();
    let err = consumer
        .subscribe_registered_with(
            &ConsumerContext::new()
                .config("test.subject", "s")
                .config("test.env", "e")
                .state(Arc::new(AppState { tx })),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ConsumeError::Registration(RegistrationError::MissingChecker { .. })
        ),
        "unexpected {err:?}"
    );
    consumer.shutdown().await;
}

#[tokio::test]
async fn registered_consumers_receive_their_messages() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    SEEN.set(tx.clone()).unwrap();
    let (b, _dir) = broker().await;
    let router = Arc::new(StaticRouter::new([addr(&b)]));
    let producer = Producer::new(router.clone(), ProducerConfig::default());
    let mut expected = HashSet::new();
    for (what, subject, tags) in [
        ("order", "m.orders", &[][..]),
        ("vip", "m.vip", &["gold", "fast"][..]),
        ("configured", "m.configured", &[]),
        ("env", "m.env", &[]),
        ("const", "m.const", &["blue"]),
        ("state", "m.state", &[]),
        ("paid", "m.paid", &[]),
    ] {
        let mut m = new_message(subject);
        for t in tags {
            m.add_tag(t).unwrap();
        }
        expected.insert((what, producer.send(m).await.unwrap().message_id));
    }
    let mut gold_only = new_message("m.vip");
    gold_only.add_tag("gold").unwrap();
    producer.send(gold_only).await.unwrap();
    // A paid message the checker has seen before: acked without running the handler.
    let done_before = producer
        .send(new_message("m.paid"))
        .await
        .unwrap()
        .message_id;
    let checker = Arc::new(MemoryChecker::default());
    let done_key = format!("m.paid%paid%{done_before}");
    checker.done.lock().insert(done_key.clone());

    let consumer = Consumer::new(
        router,
        ConsumerConfig {
            pull_wait: Duration::from_millis(100),
            ..ConsumerConfig::default()
        },
    );
    let n = consumer
        .subscribe_registered_with(&full_context(tx, checker.clone()))
        .await
        .unwrap();
    assert_eq!(n, 7);
    let mut got = HashSet::new();
    tokio::time::timeout(T, async {
        while got.len() < expected.len() {
            got.insert(rx.recv().await.unwrap());
        }
    })
    .await
    .unwrap_or_else(|_| panic!("only {got:?} of {expected:?}"));
    wait_until(T, "the duplicate's claim", || {
        checker.claims.lock().contains(&done_key)
    })
    .await;
    consumer.shutdown().await;
    while let Ok(extra) = rx.try_recv() {
        got.insert(extra);
    }
    assert_eq!(
        got, expected,
        "the gold-only message passed the AND filter, or the duplicate ran"
    );
}
