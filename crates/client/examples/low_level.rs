//! Low level, no meta server: one connection to one broker, one request at a time. Sends a
//! batch with `send_batch` and pulls it back with the single-broker `PullConsumer`, acking the
//! pull-log range it got.
//!
//! This is what the `Producer`, `Consumer` and `PullClient` of the other examples are built on,
//! and what `qmq send`/`qmq consume` use without `--meta`: no routing, send queue, retries,
//! circuit breaker, retry subject, metrics or tracing. Applications use the meta server
//! (`MetaRouter`) instead; `StaticRouter` gives `Producer`/`Consumer` a fixed broker list where
//! there is none (tests, one standalone broker).
//!
//! `cargo run -p qmq-client --example low_level -- 127.0.0.1:20881` (a broker's address)

use std::time::Duration;

use qmq_client::{new_message, send_batch, Connection, MessageExt, NewGroupStart, PullConsumer};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let broker = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:20881".into());
    let conn = Connection::connect(&broker).await?;

    let mut batch = Vec::new();
    for i in 0..3 {
        let mut m = new_message("example.low-level");
        m.set_i64("n", i)?;
        batch.push(m);
    }
    // One result per message, in order: stored, or refused by the broker (no retry here).
    for (m, result) in batch
        .iter()
        .zip(send_batch(&conn, &batch, Duration::from_secs(5)).await?)
    {
        match result {
            Ok(()) => println!("stored {}", m.message_id),
            Err(e) => println!("refused {}: {e}", m.message_id),
        }
    }

    // A new group would start after these messages (QMQ's rule); this one asks for the earliest.
    let mut consumer = PullConsumer::new(conn, "example.low-level", "low-level", "example-1")
        .new_group_start(NewGroupStart::Earliest);
    let (first, messages) = consumer.pull(10, Duration::from_secs(2)).await?;
    for m in &messages {
        println!("pulled {} n={:?}", m.message_id, m.get_i64("n"));
    }
    if !messages.is_empty() {
        // Pull-log offsets `first..=last`; what is not acked is handed out again.
        consumer
            .ack(first, first + messages.len() as i64 - 1)
            .await?;
    }
    Ok(())
}
