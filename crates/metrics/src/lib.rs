//! Metrics of the qmq-rs servers, in the Prometheus text format.
//!
//! Server components register their counters, gauges, histograms and scrape-time collectors
//! (from [`prometheus_client`], re-exported here so every crate uses the same version) into one
//! shared [`Registry`]; [`serve`] answers `GET /metrics` with all of them (feature `http`, on by
//! default), and [`scrape`] reads such an endpoint (for tools and tests).
//!
//! Names follow the Prometheus conventions: a `qmq_` prefix, counters ending in `_total`
//! (`prometheus_client` adds the suffix: register a counter without it), durations as
//! histograms in seconds. Labels are kept to names that exist on the server (subjects and
//! consumer groups), never message or consumer ids, so the number of series stays bounded.

use std::fmt;
use std::sync::Arc;

use parking_lot::Mutex;
pub use prometheus_client;
use prometheus_client::collector::Collector;
use prometheus_client::registry::Metric;

#[cfg(feature = "http")]
mod http;
#[cfg(feature = "http")]
pub use http::{scrape, serve, Exposition, MetricsServer};

/// The `Content-Type` of what [`Registry::encode`] produces: the Prometheus text format,
/// version 0.0.4.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Why serving, encoding or scraping metrics failed.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// A metric or collector failed to encode itself.
    #[error("encoding the metrics failed")]
    Encode,
    /// A socket operation failed.
    #[error("{op}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The cause.
        source: std::io::Error,
    },
    /// An HTTP exchange with a metrics endpoint failed.
    #[error("scraping {addr}: {reason}")]
    Scrape {
        /// The endpoint's address.
        addr: String,
        /// What went wrong.
        reason: String,
    },
}

/// The registry every server component of a process registers its metrics into. Cheap to
/// clone: clones share the metrics.
#[derive(Clone, Default)]
pub struct Registry {
    inner: Arc<Mutex<prometheus_client::registry::Registry>>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `metric` under `name` (full name, `qmq_` prefix included; a counter without
    /// its `_total` suffix, which the encoder adds) with `help` (a full stop is added).
    /// Register each name once per registry.
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        self.inner.lock().register(name, help, metric);
    }

    /// Registers `collector`, asked for its metrics at every scrape (values computed from
    /// server state rather than counted as things happen). It may do blocking I/O: scrapes
    /// encode on a blocking thread.
    pub fn register_collector(&self, collector: impl Collector) {
        self.inner.lock().register_collector(Box::new(collector));
    }

    /// Every registered metric in the Prometheus text format ([`CONTENT_TYPE`]). Collectors run
    /// on the calling thread: call it off the async runtime.
    pub fn encode(&self) -> Result<String, MetricsError> {
        let mut out = String::new();
        let registry = self.inner.lock();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)
            .map_err(|_| MetricsError::Encode)?;
        Ok(out)
    }
}

/// Writes one unlabelled gauge with value `v` from a scrape-time [`Collector`].
pub fn encode_gauge(
    encoder: &mut prometheus_client::encoding::DescriptorEncoder,
    name: &str,
    help: &str,
    v: i64,
) -> fmt::Result {
    use prometheus_client::encoding::EncodeMetric;
    let metric = prometheus_client::metrics::gauge::ConstGauge::new(v);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

/// Writes one unlabelled counter with value `v` from a scrape-time [`Collector`] (`name`
/// without `_total`: the encoder adds it).
pub fn encode_counter(
    encoder: &mut prometheus_client::encoding::DescriptorEncoder,
    name: &str,
    help: &str,
    v: u64,
) -> fmt::Result {
    use prometheus_client::encoding::EncodeMetric;
    let metric = prometheus_client::metrics::counter::ConstCounter::new(v);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;

    use super::*;

    fn parse(text: &str) -> prometheus_parse::Scrape {
        prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap()
    }

    fn counter(scrape: &prometheus_parse::Scrape, name: &str, label: Option<(&str, &str)>) -> f64 {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v) => v,
                ref other => panic!("{name} is not a counter: {other:?}"),
            })
            .unwrap_or_else(|| panic!("no {name} in the scrape"))
    }

    #[test]
    fn a_registered_counter_is_encoded_with_its_suffix() {
        let registry = Registry::new();
        let c: Counter = Counter::default();
        registry.register("qmq_test_things", "Things counted", c.clone());
        c.inc_by(3);
        let text = registry.encode().unwrap();
        assert!(
            text.contains("# TYPE qmq_test_things_total counter"),
            "{text}"
        );
        assert_eq!(counter(&parse(&text), "qmq_test_things_total", None), 3.0);
    }

    #[tokio::test]
    async fn get_metrics_serves_what_is_registered() {
        let registry = Registry::new();
        let family = Family::<[(&'static str, String); 1], Counter>::default();
        registry.register("qmq_test_received", "Received per subject", family.clone());
        let server = serve("127.0.0.1:0".parse().unwrap(), registry.clone())
            .await
            .unwrap();
        family
            .get_or_create(&[("subject", "a".to_owned())])
            .inc_by(2);
        family.get_or_create(&[("subject", "b".to_owned())]).inc();
        // Registered after the server started: scrapes see it too.
        let late: Counter = Counter::default();
        registry.register("qmq_test_late", "Registered late", late.clone());
        late.inc();

        let got = scrape(&server.addr().to_string()).await.unwrap();
        assert_eq!(got.content_type, CONTENT_TYPE);
        let scraped = parse(&got.text);
        let received = "qmq_test_received_total";
        assert_eq!(counter(&scraped, received, Some(("subject", "a"))), 2.0);
        assert_eq!(counter(&scraped, received, Some(("subject", "b"))), 1.0);
        assert_eq!(counter(&scraped, "qmq_test_late_total", None), 1.0);
        server.shutdown().await;
    }

    #[tokio::test]
    async fn other_paths_are_not_found() {
        let server = serve("127.0.0.1:0".parse().unwrap(), Registry::new())
            .await
            .unwrap();
        let err = http::get(&server.addr().to_string(), "/other")
            .await
            .unwrap_err();
        assert!(err.to_string().contains("404"), "{err}");
        server.shutdown().await;
    }
}
