//! The HTTP query API over a filled index: QMQ's `/api/message` (its JSON fields, 64-bit
//! numbers as strings, the paging cursor, empty results for rejected queries) and the `/v1`
//! JSON endpoints.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use qmq_backup::IndexStore;
use qmq_protocol::{SyncIndexChunk, SyncIndexRecord};
use serde_json::{json, Value};
use tower::ServiceExt;

fn store() -> (tempfile::TempDir, Arc<IndexStore>) {
    let dir = tempfile::tempdir().unwrap();
    let store = IndexStore::open(&dir.path().join("i.redb"), None).unwrap();
    let records = (0..5)
        .map(|i| SyncIndexRecord {
            sequence: i,
            created_time: 1_700_000_000_000 + i * 1000,
            subject: "orders".into(),
            message_id: format!("o-{i}"),
        })
        .collect();
    store
        .apply("g1", 0, &SyncIndexChunk { next: 99, records })
        .unwrap();
    (dir, Arc::new(store))
}

/// GET `uri`: status and body text.
async fn get(store: &Arc<IndexStore>, uri: &str) -> (StatusCode, String) {
    let resp = qmq_backup::http::router(store.clone())
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

async fn get_json(store: &Arc<IndexStore>, uri: &str) -> (StatusCode, Value) {
    let (status, body) = get(store, uri).await;
    (status, serde_json::from_str(&body).unwrap())
}

fn qmq_uri(query: Value) -> String {
    let q = query.to_string();
    let encoded: String = q
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    format!("/api/message?backupQuery={encoded}")
}

#[tokio::test]
async fn qmq_message_query_pages_with_strings_for_64_bit_numbers() {
    let (_dir, store) = store();
    let (status, page) = get_json(
        &store,
        &qmq_uri(json!({
            "subject": "orders",
            "msgCreateTimeBegin": 1_700_000_000_000i64,
            "msgCreateTimeEnd": 1_700_000_010_000i64,
            "isDelay": false,
            "len": 3,
        })),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        page["list"][0],
        json!({"subject": "orders", "messageId": "o-0", "sequence": "0",
               "createTime": "1700000000000", "brokerGroup": "g1"})
    );
    assert_eq!(page["list"].as_array().unwrap().len(), 3);
    let next = page["next"].as_str().unwrap().to_owned();
    let (_, rest) = get_json(
        &store,
        &qmq_uri(
            json!({"subject": "orders", "msgCreateTimeBegin": 1_700_000_000_000i64,
                        "msgCreateTimeEnd": 1_700_000_010_000i64, "isDelay": false,
                        "len": 3, "start": next}),
        ),
    )
    .await;
    let ids: Vec<_> = rest["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["messageId"].clone())
        .collect();
    assert_eq!(ids, [json!("o-3"), json!("o-4")]);
    assert_eq!(rest["next"], Value::Null);

    // By id within the subject.
    let (_, one) = get_json(
        &store,
        &qmq_uri(
            json!({"subject": "orders", "messageId": "o-2", "isDelay": false, "len": 10,
                        "msgCreateTimeBegin": 0, "msgCreateTimeEnd": 1_800_000_000_000i64}),
        ),
    )
    .await;
    assert_eq!(one["list"][0]["sequence"], "2");

    // Rejected queries: an empty result, HTTP 200.
    let empty = json!({"list": [], "next": null});
    for q in [
        json!({"isDelay": false, "len": 3}),
        json!({"subject": "orders", "isDelay": false, "len": 0}),
        json!({"subject": "orders", "isDelay": true, "len": 3}),
        json!({"subject": "orders", "isDelay": false, "len": 3, "start": "zz"}),
    ] {
        assert_eq!(
            get_json(&store, &qmq_uri(q.clone())).await,
            (StatusCode::OK, empty.clone()),
            "{q}"
        );
    }
    assert_eq!(
        get(&store, "/api/message?backupQuery=%7Bnot").await,
        (StatusCode::OK, "[]".into())
    );
    assert_eq!(
        get(&store, "/api/message").await,
        (StatusCode::OK, String::new())
    );
}

#[tokio::test]
async fn json_endpoints_by_id_by_range_and_status() {
    let (_dir, store) = store();
    let (status, found) = get_json(&store, "/v1/messages/o-1").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        found,
        json!({"messages": [{"subject": "orders", "message_id": "o-1", "sequence": 1,
                             "created_time": 1_700_000_001_000i64, "broker_group": "g1"}]})
    );
    assert_eq!(
        get_json(&store, "/v1/messages/nope").await.1,
        json!({"messages": []})
    );

    // RFC 3339 and ms mix; both ends inclusive.
    let (status, page) = get_json(
        &store,
        "/v1/messages?subject=orders&from=2023-11-14T22:13:21Z&to=1700000003000&limit=10",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let seqs: Vec<_> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["sequence"].clone())
        .collect();
    assert_eq!(seqs, [json!(1), json!(2), json!(3)]);
    assert_eq!(page["next"], Value::Null);

    let (_, page) = get_json(&store, "/v1/messages?subject=orders&from=0&limit=2").await;
    let next = page["next"].as_str().unwrap().to_owned();
    let (_, rest) = get_json(
        &store,
        &format!("/v1/messages?subject=orders&from=0&limit=10&cursor={next}"),
    )
    .await;
    assert_eq!(rest["messages"].as_array().unwrap().len(), 3);

    for bad in [
        "/v1/messages?from=0",
        "/v1/messages?subject=orders&from=yesterday",
        "/v1/messages?subject=orders&limit=0",
        "/v1/messages?subject=orders&cursor=00",
    ] {
        let (status, body) = get_json(&store, bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(body["error"].is_string());
    }

    let (_, status) = get_json(&store, "/v1/status").await;
    assert_eq!(
        status,
        json!({"messages": 5, "groups": [{"group": "g1", "offset": 99, "action_offset": null}], "retention_ms": null})
    );
}

/// When the backup saw the first actions (after the messages' creation, before now) and the
/// retry copy's (after now, when the copy is indexed in this test).
const T1: i64 = 1_790_000_000_000;
const T2: i64 = 1_900_000_000_000;

fn framed(action: &qmq_store::action::Action) -> Vec<u8> {
    let payload = action.encode();
    let mut r = Vec::new();
    r.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    r.extend_from_slice(&crc32c::crc32c(&payload).to_be_bytes());
    r.extend_from_slice(&payload);
    r
}

#[tokio::test]
async fn records_and_life_of_a_message_with_a_retry_copy() {
    use qmq_store::action::Action;
    use qmq_store::ConsumerKey;
    let (_dir, store) = store();
    // o-1 failed by group "b": a retry copy, pulled and acked.
    store
        .apply(
            "g1",
            99,
            &SyncIndexChunk {
                next: 120,
                records: vec![SyncIndexRecord {
                    sequence: 0,
                    created_time: 1_700_000_001_000,
                    subject: "%RETRY%orders%b".into(),
                    message_id: "o-1".into(),
                }],
            },
        )
        .unwrap();
    let key = |subject: &str, group: &str| ConsumerKey {
        subject: subject.into(),
        group: group.into(),
        consumer: "c".into(),
    };
    let pull = |subject: &str, group: &str, seqs: Vec<u64>| Action::Pull {
        key: key(subject, group),
        broadcast: false,
        first_pull: 0,
        next: seqs.last().map_or(0, |s| s + 1),
        seqs,
    };
    let ack = |subject: &str, group: &str, last| Action::Ack {
        key: key(subject, group),
        first: 0,
        last,
    };
    let mut bytes = Vec::new();
    for a in [
        pull("orders", "a", vec![0, 1]),
        pull("orders", "b", vec![0, 1]),
        ack("orders", "a", 1),
        ack("orders", "b", 1),
    ] {
        bytes.extend(framed(&a));
    }
    store.apply_actions("g1", 0, 0, &bytes, T1).unwrap();
    let mut more = framed(&pull("%RETRY%orders%b", "b", vec![0]));
    more.extend(framed(&ack("%RETRY%orders%b", "b", 0)));
    let from = bytes.len() as u64;
    store.apply_actions("g1", from, from, &more, T2).unwrap();

    let records_uri = |q: Value| {
        qmq_uri(q).replace(
            "/api/message?backupQuery",
            "/api/message/records?recordQuery",
        )
    };
    let (status, body) = get_json(
        &store,
        &records_uri(
            json!({"subject": "orders", "messageId": "o-1", "brokerGroup": "g1",
                            "sequence": 1, "recordCode": 0}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let records = body["records"].as_array().unwrap();
    assert_eq!(records.len(), 4, "{body}");
    assert_eq!(
        records[0],
        json!({"consumerGroup": "a", "action": 0, "type": 0, "timestamp": T1.to_string(),
               "consumerId": "c", "sequence": "1"})
    );
    let (_, body) = get_json(
        &store,
        &records_uri(json!({"subject": "orders", "messageId": "o-1", "recordCode": 1})),
    )
    .await;
    let actions: Vec<_> = body["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["consumerGroup"].clone(),
                r["action"].clone(),
                r["type"].clone(),
            )
        })
        .collect();
    assert_eq!(
        actions,
        [
            (json!("b"), json!(0), json!(1)),
            (json!("b"), json!(1), json!(1))
        ]
    );
    let (_, body) = get_json(&store, &records_uri(json!({"subject": "orders"}))).await;
    assert_eq!(body, json!({"records": []}));

    let (status, life) = get_json(&store, "/v1/messages/o-1/life").await;
    assert_eq!(status, StatusCode::OK);
    let steps: Vec<(String, String, String)> = life["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["event"].as_str().unwrap().to_owned(),
                e["consumer_group"].as_str().unwrap_or("").to_owned(),
                e["copy"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let s = |e: &str, g: &str, c: &str| (e.to_owned(), g.to_owned(), c.to_owned());
    assert_eq!(
        steps[..2],
        [s("created", "", "original"), s("stored", "", "original")]
    );
    assert_eq!(
        steps[2..],
        [
            s("pulled", "a", "original"),
            s("pulled", "b", "original"),
            s("acked", "a", "original"),
            s("acked", "b", "original"),
            s("retry", "b", "retry"),
            s("pulled", "b", "retry"),
            s("acked", "b", "retry"),
        ],
        "{life}"
    );
    let (_, status) = get_json(&store, "/v1/status").await;
    assert_eq!(
        status["groups"][0]["action_offset"],
        json!(from + more.len() as u64)
    );
    let (_, unknown) = get_json(&store, "/v1/messages/nope/life").await;
    assert_eq!(unknown["events"], json!([]));
}

#[tokio::test]
async fn a_dead_letter_is_a_record_of_code_2_and_a_step_of_the_life() {
    let (_dir, store) = store();
    store
        .apply(
            "g1",
            99,
            &SyncIndexChunk {
                next: 120,
                records: vec![SyncIndexRecord {
                    sequence: 4,
                    created_time: 1_700_000_002_000,
                    subject: "%DEAD_RETRY%orders%b".into(),
                    message_id: "o-2".into(),
                }],
            },
        )
        .unwrap();
    let uri = qmq_uri(json!({"subject": "orders", "messageId": "o-2", "recordCode": 2})).replace(
        "/api/message?backupQuery",
        "/api/message/records?recordQuery",
    );
    let (_, body) = get_json(&store, &uri).await;
    let records = body["records"].as_array().unwrap();
    assert_eq!(records.len(), 1, "{body}");
    assert_eq!(records[0]["consumerGroup"], "b");
    assert_eq!(records[0]["type"], 2);
    assert_eq!(records[0]["sequence"], "4");
    let (_, life) = get_json(&store, "/v1/messages/o-2/life").await;
    let events: Vec<&str> = life["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(events, ["created", "stored", "dead_lettered"], "{life}");
    assert_eq!(life["events"][2]["consumer_group"], "b");
    assert_eq!(life["events"][2]["copy"], "dead");
}
