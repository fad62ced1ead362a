//! Message bodies a QMQ Java consumer can read: sends three messages to `example.bodies` (or the
//! subject after `--subject`), each with an `id` property:
//!
//! - `short`: a text body of 12 chars, the plain `body` attribute (Java:
//!   `m.getStringProperty("body")`);
//! - `text`: a text body of [`TEXT_CHARS`] chars, split into `body#partN` as Java's
//!   `setLargeString("body", text)` does (Java: `m.getLargeString("body")`);
//! - `bytes`: [`BYTES_LEN`] bytes that are not UTF-8, base64 in `body` plus
//!   `bodyEncoding=base64` (Java: `Base64.getDecoder().decode(m.getLargeString("body"))`).
//!
//! The contents are made by [`text_body`] and [`bytes_body`]; `compat/java/Compat.java`
//! (`rust-body` check, run by `scripts/java-compat.sh`) makes the same and compares.
//!
//! `cargo run -p qmq-client --example body_producer -- 127.0.0.1:8080 [--subject SUBJECT]`

use std::sync::Arc;

use qmq_client::{new_message, MessageExt, MetaRouter, MetaRouterConfig, Producer, ProducerConfig};

/// Characters of the long text body (more than one 8192-char part).
const TEXT_CHARS: usize = 20_000;
/// Bytes of the bytes body.
const BYTES_LEN: usize = 70_000;
/// The short text body.
const SHORT: &str = "short body ✓";

/// Char `i` of the long text: cycles through ASCII, Latin-1 and BMP characters.
fn text_body() -> String {
    const CYCLE: [char; 8] = ['q', 'm', 'q', '-', 'é', 'ß', '✓', '中'];
    (0..TEXT_CHARS).map(|i| CYCLE[i % CYCLE.len()]).collect()
}

/// Byte `i` is `(i * 7 + 3) mod 256`: every byte value, not valid UTF-8.
fn bytes_body() -> Vec<u8> {
    (0..BYTES_LEN).map(|i| ((i * 7 + 3) % 256) as u8).collect()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // The meta server's HTTP address: `qmq standalone` serves it on 127.0.0.1:8080.
    let meta = args
        .first()
        .filter(|a| !a.starts_with("--"))
        .cloned()
        .unwrap_or_else(|| "127.0.0.1:8080".into());
    let subject = match args.iter().position(|a| a == "--subject") {
        Some(i) => args.get(i + 1).ok_or("--subject needs a subject")?.clone(),
        None => "example.bodies".to_owned(),
    };
    let router = Arc::new(MetaRouter::new(MetaRouterConfig::new(&meta, "example")));
    let producer = Producer::new(router, ProducerConfig::default());

    let mut short = new_message(&subject);
    short.set_string("id", "short")?;
    short.set_body_text(SHORT);
    let mut text = new_message(&subject);
    text.set_string("id", "text")?;
    text.set_body_text(&text_body());
    let mut bytes = new_message(&subject);
    bytes.set_string("id", "bytes")?;
    bytes.set_body(&bytes_body());

    for m in [short, text, bytes] {
        let id = m.get_string("id").unwrap_or_default().to_owned();
        let receipt = producer.send(m).await?;
        println!("sent {id} body as {}", receipt.message_id);
    }
    producer.close().await;
    Ok(())
}
