//! `--otlp-endpoint`: `qmq standalone` exports its spans over OTLP http/protobuf. A collector
//! in the test (axum, POST /v1/traces) decodes each request and hands its spans to the test,
//! which waits (bounded) for the broker's and the delay server's spans of two messages sent
//! with a trace context.

mod common;

use std::collections::HashSet;
use std::process::Command;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message as _;
use tokio::sync::mpsc;

/// One exported span: service name, span name, trace id (hex), parent span id (hex).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Got {
    service: String,
    name: String,
    trace: String,
    parent: String,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

/// Starts the collector on a free port; returns its address and the spans it receives (an
/// `Err` for a request that is not OTLP http/protobuf).
async fn collector() -> (String, mpsc::UnboundedReceiver<Result<Got, String>>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/v1/traces",
        post(move |headers: HeaderMap, body: Bytes| {
            let tx = tx.clone();
            async move {
                let ct = headers
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                if ct != "application/x-protobuf" {
                    let _ = tx.send(Err(format!("content-type {ct:?}")));
                    return StatusCode::UNSUPPORTED_MEDIA_TYPE;
                }
                let req = match ExportTraceServiceRequest::decode(body) {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = tx.send(Err(format!("not a trace export request: {e}")));
                        return StatusCode::BAD_REQUEST;
                    }
                };
                for rs in req.resource_spans {
                    let service = rs
                        .resource
                        .iter()
                        .flat_map(|r| &r.attributes)
                        .find(|kv| kv.key == "service.name")
                        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
                        .map(|v| match v {
                            Value::StringValue(s) => s.clone(),
                            other => format!("{other:?}"),
                        })
                        .unwrap_or_default();
                    for ss in rs.scope_spans {
                        for s in ss.spans {
                            let _ = tx.send(Ok(Got {
                                service: service.clone(),
                                name: s.name,
                                trace: hex(&s.trace_id),
                                parent: hex(&s.parent_span_id),
                            }));
                        }
                    }
                }
                StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, rx)
}

/// Runs `qmq` with `args` to success.
async fn qmq_ok(args: Vec<String>) {
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_qmq"))
            .args(&args)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "qmq failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const NOW_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const LATER_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const PARENT: &str = "00f067aa0ba902b7";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_exports_broker_and_delay_spans_over_otlp() {
    let (collector, mut spans) = collector().await;
    let dir = tempfile::tempdir().unwrap();
    let broker = format!("127.0.0.1:{}", free_port());
    let mut cmd = standalone_command(dir.path(), &broker);
    cmd.args(["--otlp-endpoint", &format!("http://{collector}")]);
    let mut server = Proc::spawn(cmd);
    // The collector runs on the other worker meanwhile.
    let (_, ready) = tokio::task::block_in_place(|| {
        server.wait_line("qmq standalone ready", 0, Duration::from_secs(30))
    });
    let meta_http = field(&ready, "http");

    let traceparent = |trace: &str| format!("qtrace_traceparent=00-{trace}-{PARENT}-01");
    let send = |trace: &str, subject: &str, route: [&str; 2], delay: &[&str]| {
        let mut a: Vec<String> = ["send", route[0], route[1], "-s", subject, "-p"]
            .map(String::from)
            .to_vec();
        a.push(traceparent(trace));
        a.extend(delay.iter().map(|s| s.to_string()));
        a.push("body".into());
        a
    };
    qmq_ok(send(NOW_TRACE, "otlp.now", ["--broker", &broker], &[])).await;
    qmq_ok(send(
        LATER_TRACE,
        "otlp.later",
        ["--meta", &meta_http],
        &["--delay", "1s"],
    ))
    .await;

    // Every span the servers make for these messages is a child of the producer's context.
    let want: HashSet<Got> = [
        (NOW_TRACE, "Qmq.Broker.Append"),
        (LATER_TRACE, "Qmq.Delay.Schedule"),
        (LATER_TRACE, "Qmq.Delay.Dispatch"),
        (LATER_TRACE, "Qmq.Broker.Append"),
    ]
    .into_iter()
    .map(|(trace, name)| Got {
        service: "qmq-standalone".into(),
        name: name.into(),
        trace: trace.into(),
        parent: PARENT.into(),
    })
    .collect();
    let mut seen = HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !want.is_subset(&seen) {
        let got = tokio::time::timeout_at(deadline, spans.recv())
            .await
            .unwrap_or_else(|_| panic!("spans still missing: {:?}", want.difference(&seen)))
            .unwrap();
        seen.insert(got.unwrap());
    }
    tokio::task::block_in_place(|| server.terminate());
}
