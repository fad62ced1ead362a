//! The engine's metrics with an injected clock: received and refused counts, dispatch counts,
//! lateness buckets and the delay backlog by window.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{config, msg, Recorder};
use qmq_delay::{DelayConfig, DelayEngine, DelayMetrics, ManualClock};

/// A minute boundary (the test buckets are one minute wide).
const T0: i64 = 1_700_000_040_000;

fn parse(registry: &qmq_metrics::Registry) -> prometheus_parse::Scrape {
    let text = registry.encode().unwrap();
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap()
}

fn value(s: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    use prometheus_parse::Value;
    s.samples
        .iter()
        .find(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match &x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            other => panic!("{name}: {other:?}"),
        })
}

/// A histogram's cumulative bucket counts, by upper bound.
fn buckets(s: &prometheus_parse::Scrape, name: &str) -> Vec<(f64, f64)> {
    s.samples
        .iter()
        .find_map(|x| match &x.value {
            prometheus_parse::Value::Histogram(h) if x.metric == name => {
                Some(h.iter().map(|b| (b.less_than, b.count)).collect())
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("no histogram {name}"))
}

fn due(s: &prometheus_parse::Scrape, within: &str) -> Option<f64> {
    value(s, "qmq_delay_due_messages", &[("within", within)])
}

/// Polls the registry (bounded) until `cond` holds.
async fn wait_until(
    registry: &qmq_metrics::Registry,
    what: &str,
    cond: impl Fn(&prometheus_parse::Scrape) -> bool,
) -> prometheus_parse::Scrape {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let s = parse(registry);
        if cond(&s) {
            return s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}: {}",
            registry.encode().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_lateness_and_backlog_follow_what_was_scheduled_and_dispatched() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let rec = Recorder::new(Arc::new(clock.clone()));
    let registry = qmq_metrics::Registry::new();
    let cfg = DelayConfig {
        metrics: Some(DelayMetrics::new(&registry)),
        ..config(dir.path())
    };
    let engine = DelayEngine::open(cfg, Arc::new(clock.clone()), rec.clone())
        .await
        .unwrap();

    let mut batch: Vec<_> = (0..3)
        .map(|i| msg(&format!("soon{i}"), T0 + 10_000))
        .collect();
    batch.extend((0..2).map(|i| msg(&format!("half-hour{i}"), T0 + 30 * 60_000)));
    batch.push(msg("five-hours", T0 + 5 * 3_600_000));
    let mut later = msg("too-far", T0 + 3 * 365 * 86_400_000);
    later.subject = "other".into();
    batch.push(later);
    let results = engine.schedule(batch).await;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 6);

    let s = parse(&registry);
    let subject = [("subject", "delay.subject")];
    assert_eq!(
        value(&s, "qmq_delay_received_messages_total", &subject),
        Some(6.0)
    );
    assert_eq!(
        value(
            &s,
            "qmq_delay_received_messages_total",
            &[("subject", "other")]
        ),
        None,
        "a refused message creates no subject series"
    );
    assert_eq!(
        value(
            &s,
            "qmq_delay_send_failed_total",
            &[("reason", "too_far_ahead")]
        ),
        Some(1.0)
    );
    assert_eq!(value(&s, "qmq_delay_append_seconds_count", &[]), Some(1.0));
    assert_eq!(value(&s, "qmq_delay_pending_messages", &[]), Some(6.0));
    assert_eq!(value(&s, "qmq_delay_damaged_records_total", &[]), Some(0.0));
    assert_eq!(
        value(&s, "qmq_delay_repaired_records_total", &[]),
        Some(0.0)
    );
    assert_eq!(due(&s, "1m"), Some(3.0));
    assert_eq!(due(&s, "1h"), Some(5.0));
    assert_eq!(due(&s, "1d"), Some(6.0));

    // Two seconds after the first three were due, they are dispatched: 2 s late each.
    clock.set(T0 + 12_000);
    let s = wait_until(&registry, "three dispatched", |s| {
        value(s, "qmq_delay_dispatched_messages_total", &subject) == Some(3.0)
            && value(s, "qmq_delay_pending_messages", &[]) == Some(3.0)
    })
    .await;
    assert_eq!(
        value(&s, "qmq_delay_lateness_seconds_count", &[]),
        Some(3.0)
    );
    assert_eq!(value(&s, "qmq_delay_lateness_seconds_sum", &[]), Some(6.0));
    let late = buckets(&s, "qmq_delay_lateness_seconds");
    let at = |le: f64| late.iter().find(|(b, _)| *b == le).map(|(_, n)| *n);
    assert_eq!(at(1.0), Some(0.0), "{late:?}");
    assert_eq!(at(2.0), Some(3.0), "{late:?}");
    assert_eq!(value(&s, "qmq_delay_dispatch_failed_total", &[]), Some(0.0));
    assert_eq!(due(&s, "1m"), Some(0.0));
    assert_eq!(due(&s, "1h"), Some(2.0));
    assert_eq!(due(&s, "1d"), Some(3.0));

    // After shutdown the backlog gauges go away (no engine to read).
    engine.shutdown().await.unwrap();
    let s = parse(&registry);
    assert_eq!(value(&s, "qmq_delay_pending_messages", &[]), None);
    assert_eq!(
        value(&s, "qmq_delay_dispatched_messages_total", &subject),
        Some(3.0)
    );
}
