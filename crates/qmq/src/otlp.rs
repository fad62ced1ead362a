//! OTLP export of the servers' spans (`--otlp-endpoint`), off unless asked for.
//!
//! With an endpoint, a tracer provider is installed as OpenTelemetry's global provider: spans
//! go through the SDK's batch span processor (its own thread) to an OTLP exporter speaking
//! http/protobuf to `<endpoint>/v1/traces` (hyper on this process's tokio runtime), under
//! resource `service.name` = `qmq-broker`, `qmq-delay` or `qmq-standalone`. The broker and
//! delay server are then told to make spans ([`qmq_broker::BrokerConfig::trace_spans`],
//! [`qmq_delay::DelayConfig::trace_spans`]). Without an endpoint nothing is installed and the
//! servers make no spans.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;

/// How long one export may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// OTLP trace export settings (`broker`, `delay`, `standalone`).
#[derive(Args, Debug, Clone, Default)]
pub struct OtlpArgs {
    /// Export spans over OTLP (http/protobuf) to this collector, e.g. `http://127.0.0.1:4318`
    /// (`/v1/traces` is added unless the URL already ends with it). Off unless given: no spans
    /// are made.
    #[arg(long, env = "QMQ_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
}

impl OtlpArgs {
    /// Whether spans are exported (and so made).
    pub fn enabled(&self) -> bool {
        self.otlp_endpoint.is_some()
    }
}

/// The installed exporter: flush it with [`Export::shutdown`] before the process ends.
pub struct Export {
    provider: SdkTracerProvider,
}

impl Export {
    /// Installs the global tracer provider exporting to `args`' endpoint, as service
    /// `service`; `None` when no endpoint is given (nothing is installed).
    pub fn install(args: &OtlpArgs, service: &'static str) -> anyhow::Result<Option<Self>> {
        let Some(endpoint) = &args.otlp_endpoint else {
            return Ok(None);
        };
        let url = traces_url(endpoint);
        let client = TokioHttpClient {
            handle: tokio::runtime::Handle::try_current()
                .context("OTLP export needs the tokio runtime")?,
            inner: std::sync::Arc::new(
                opentelemetry_http::hyper::HyperClient::with_default_connector(
                    EXPORT_TIMEOUT,
                    None,
                ),
            ),
        };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(url.clone())
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .with_context(|| format!("setting up OTLP export to {url}"))?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(Resource::builder().with_service_name(service).build())
            .build();
        opentelemetry::global::set_tracer_provider(provider.clone());
        tracing::info!(%url, service, "exporting spans over OTLP");
        Ok(Some(Self { provider }))
    }

    /// Exports what is still buffered and stops the exporter (on a blocking thread: the batch
    /// processor waits for its last export, which runs on the runtime).
    pub async fn shutdown(self) {
        let provider = self.provider;
        let done = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "flushing spans at shutdown failed"),
            Err(e) => tracing::warn!(error = %e, "flushing spans at shutdown failed"),
        }
    }
}

/// Shuts `export` down, if there is one.
pub async fn shutdown(export: Option<Export>) {
    if let Some(e) = export {
        e.shutdown().await;
    }
}

/// `<endpoint>/v1/traces`, unless `endpoint` already ends with `/v1/traces`.
fn traces_url(endpoint: &str) -> String {
    let base = endpoint.trim_end_matches('/');
    if base.ends_with("/v1/traces") {
        base.to_owned()
    } else {
        format!("{base}/v1/traces")
    }
}

/// Runs the hyper client's requests on the tokio runtime: the batch span processor exports
/// from its own thread, where hyper's connections (tokio sockets and timers) cannot run.
#[derive(Debug)]
struct TokioHttpClient {
    handle: tokio::runtime::Handle,
    inner: std::sync::Arc<opentelemetry_http::hyper::HyperClient>,
}

impl HttpClient for TokioHttpClient {
    fn send_bytes<'a, 'b>(
        &'a self,
        request: Request<Bytes>,
    ) -> Pin<Box<dyn Future<Output = Result<Response<Bytes>, HttpError>> + Send + 'b>>
    where
        'a: 'b,
        Self: 'b,
    {
        let inner = self.inner.clone();
        let task = self
            .handle
            .spawn(async move { inner.send_bytes(request).await });
        Box::pin(async move {
            match task.await {
                Ok(r) => r,
                Err(e) => Err(Box::new(e) as HttpError),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_traces_path_is_added_once() {
        assert_eq!(
            traces_url("http://c:4318"),
            "http://c:4318/v1/traces".to_owned()
        );
        assert_eq!(traces_url("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(
            traces_url("http://c:4318/v1/traces"),
            "http://c:4318/v1/traces"
        );
    }
}
