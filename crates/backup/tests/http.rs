//! The HTTP query API over a filled index: QMQ's `/api/message` (its JSON fields, 64-bit
//! numbers as strings, the paging cursor, empty results for rejected queries) and the `/v1`
//! JSON endpoints; over stored messages (sync type 6), dead letters, delay messages, property
//! queries, the replay endpoint's checks and message bodies from the backup's copy.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use qmq_backup::brokers::Brokers;
use qmq_backup::http::Api;
use qmq_backup::IndexStore;
use qmq_protocol::{
    Message, MessageFlags, StoredRecord, SyncIndexChunk, SyncIndexRecord, SyncMessagesChunk,
};
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

/// An index of stored messages (sync type 6): in `orders` a delay message and one with
/// properties, and two dead letters (consumer groups `a` and `b`) held by broker group `g1`,
/// which [`Brokers`] does not know.
fn stored_api() -> (tempfile::TempDir, Api) {
    let dir = tempfile::tempdir().unwrap();
    let store = IndexStore::open(&dir.path().join("i.redb"), None).unwrap();
    let m = |id: &str, t: i64, attrs: &[(&str, &str)]| Message {
        flags: MessageFlags::default(),
        created_time: t,
        expire_or_schedule: t + 60_000,
        subject: "orders".into(),
        message_id: id.into(),
        tags: vec![],
        attrs: attrs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    };
    let mut dead_a = m(
        "d-1",
        1_700_000_001_000,
        &[("order", "42"), ("body", "dead body"), ("qmq_times", "3")],
    );
    dead_a.flags = dead_a.flags.with_tags(true);
    dead_a.tags = vec!["red".into()];
    let record = |seq: i64, subject: &str, m: &Message| StoredRecord {
        sequence: seq,
        subject: subject.into(),
        stored: m.to_stored().unwrap(),
    };
    let records = vec![
        record(
            0,
            "orders",
            &m(
                "late",
                1_700_000_000_000,
                &[("qmq_scheduleReceiveTime", "1700000900000")],
            ),
        ),
        record(1, "orders", &m("kv", 1_700_000_000_500, &[("order", "42")])),
        record(
            2,
            "orders",
            &m("other", 1_700_000_000_600, &[("order", "43")]),
        ),
        record(0, "%DEAD_RETRY%orders%a", &dead_a),
        record(
            0,
            "%DEAD_RETRY%orders%b",
            &m("d-2", 1_700_000_002_000, &[("body", "b")]),
        ),
    ];
    store
        .apply_messages("g1", 0, &SyncMessagesChunk { next: 10, records }, false)
        .unwrap();
    let api = Api::new(
        Arc::new(store),
        Arc::new(Brokers::default()),
        vec!["sesame".to_owned()],
    );
    (dir, api)
}

/// Sends `req` to the application over `api`: status and body text.
async fn call(api: &Api, req: Request<Body>) -> (StatusCode, String) {
    let resp = qmq_backup::http::router_with(api.clone())
        .oneshot(req)
        .await
        .unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

async fn api_get(api: &Api, uri: &str) -> (StatusCode, Value) {
    let (status, body) = call(api, Request::get(uri).body(Body::empty()).unwrap()).await;
    let json = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{uri}: {e}: {body:?}"));
    (status, json)
}

const WIDE: (i64, i64) = (0, 1_800_000_000_000);

#[tokio::test]
async fn qmq_dead_letter_query_and_delay_messages() {
    let (_dir, api) = stored_api();
    let dead_uri = |q: Value| qmq_uri(q).replace("/api/message?", "/api/message/dead?");
    let (status, page) = api_get(
        &api,
        &dead_uri(json!({"subject": "orders", "len": 10,
                         "msgCreateTimeBegin": WIDE.0, "msgCreateTimeEnd": WIDE.1})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        page,
        json!({"list": [
            {"subject": "%DEAD_RETRY%orders%a", "messageId": "d-1", "sequence": "0",
             "createTime": "1700000001000", "brokerGroup": "g1", "consumerGroup": "a"},
            {"subject": "%DEAD_RETRY%orders%b", "messageId": "d-2", "sequence": "0",
             "createTime": "1700000002000", "brokerGroup": "g1", "consumerGroup": "b"},
        ], "next": null})
    );
    // One group; paged.
    let (_, only_b) = api_get(
        &api,
        &dead_uri(json!({"subject": "orders", "consumerGroup": "b", "len": 10,
                         "msgCreateTimeBegin": WIDE.0, "msgCreateTimeEnd": WIDE.1})),
    )
    .await;
    assert_eq!(only_b["list"].as_array().unwrap().len(), 1);
    assert_eq!(only_b["list"][0]["messageId"], "d-2");
    let (_, first) = api_get(
        &api,
        &dead_uri(json!({"subject": "orders", "len": 1,
                         "msgCreateTimeBegin": WIDE.0, "msgCreateTimeEnd": WIDE.1})),
    )
    .await;
    assert_eq!(first["list"][0]["messageId"], "d-1");
    let next = first["next"].as_str().unwrap();
    let (_, second) = api_get(
        &api,
        &dead_uri(json!({"subject": "orders", "len": 1, "start": next,
                         "msgCreateTimeBegin": WIDE.0, "msgCreateTimeEnd": WIDE.1})),
    )
    .await;
    assert_eq!(second["list"][0]["messageId"], "d-2");
    assert_eq!(second["next"], Value::Null);
    // Rejected: an empty result.
    let (_, rejected) = api_get(&api, &dead_uri(json!({"subject": "orders", "len": 0}))).await;
    assert_eq!(rejected, json!({"list": [], "next": null}));

    // isDelay: the delay message only; without it, all three.
    let (_, delayed) = api_get(
        &api,
        &qmq_uri(json!({"subject": "orders", "isDelay": true, "len": 10,
                        "msgCreateTimeBegin": WIDE.0, "msgCreateTimeEnd": WIDE.1})),
    )
    .await;
    let ids = |v: &Value| -> Vec<Value> {
        v["list"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["messageId"].clone())
            .collect()
    };
    assert_eq!(ids(&delayed), [json!("late")]);
    let (_, all) = api_get(
        &api,
        &qmq_uri(json!({"subject": "orders", "isDelay": false, "len": 10,
                        "msgCreateTimeBegin": WIDE.0, "msgCreateTimeEnd": WIDE.1})),
    )
    .await;
    assert_eq!(ids(&all), [json!("late"), json!("kv"), json!("other")]);
    // By id, delay messages only.
    let (_, by_id) = api_get(
        &api,
        &qmq_uri(
            json!({"subject": "orders", "messageId": "kv", "isDelay": true, "len": 10,
                        "msgCreateTimeBegin": WIDE.0, "msgCreateTimeEnd": WIDE.1}),
        ),
    )
    .await;
    assert!(ids(&by_id).is_empty());
}

#[tokio::test]
async fn v1_dead_letters_and_messages_by_property() {
    let (_dir, api) = stored_api();
    let (status, dead) = api_get(
        &api,
        &format!("/v1/dead?subject=orders&from={}&to={}", WIDE.0, WIDE.1),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let letters = dead["dead_letters"].as_array().unwrap();
    assert_eq!(letters.len(), 2, "{dead}");
    assert_eq!(letters[0]["consumer_group"], "a");
    assert_eq!(letters[0]["message_id"], "d-1");
    assert_eq!(letters[0]["sequence"], 0);
    assert_eq!(letters[0]["subject"], "%DEAD_RETRY%orders%a");
    assert_eq!(
        letters[0]["details"]["properties"],
        json!([["order", "42"]])
    );
    assert_eq!(letters[1]["consumer_group"], "b");
    assert_eq!(dead["next"], Value::Null);
    let (_, only_a) = api_get(
        &api,
        &format!(
            "/v1/dead?subject=orders&group=a&from={}&to={}",
            WIDE.0, WIDE.1
        ),
    )
    .await;
    assert_eq!(only_a["dead_letters"].as_array().unwrap().len(), 1);
    let (status, _) = api_get(&api, "/v1/dead?group=a").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let (status, found) = api_get(
        &api,
        &format!(
            "/v1/messages?subject=orders&key=order%3D42&from={}&to={}",
            WIDE.0, WIDE.1
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let ids: Vec<_> = found["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["message_id"].clone())
        .collect();
    assert_eq!(ids, [json!("kv")], "{found}");
    let (_, delayed) = api_get(
        &api,
        &format!(
            "/v1/messages?subject=orders&delayed=true&from={}&to={}",
            WIDE.0, WIDE.1
        ),
    )
    .await;
    assert_eq!(delayed["messages"][0]["message_id"], "late");
    assert_eq!(delayed["messages"].as_array().unwrap().len(), 1);
    assert_eq!(
        delayed["messages"][0]["details"]["delayed_until"],
        1_700_000_900_000i64
    );
    for bad in ["order", "%3D42"] {
        let (status, body) = api_get(&api, &format!("/v1/messages?subject=orders&key={bad}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "key={bad}");
        assert!(body["error"].as_str().unwrap().contains("k=v"), "{body}");
    }
}

fn replay_request(token: Option<&str>, body: &str) -> Request<Body> {
    let mut req = Request::post("/v1/dead/replay").header("content-type", "application/json");
    if let Some(t) = token {
        req = req.header(qmq_backup::http::TOKEN_HEADER, t);
    }
    req.body(Body::from(body.to_owned())).unwrap()
}

#[tokio::test]
async fn a_replay_needs_an_admin_token_and_a_whole_request() {
    let (_dir, api) = stored_api();
    let good = r#"{"subject":"orders","group":"a"}"#;
    for token in [None, Some("wrong"), Some("")] {
        let (status, body) = call(&api, replay_request(token, good)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{token:?}: {body}");
    }
    for bad in [
        "{not json",
        r#"{"subject":"orders"}"#,
        r#"{"subject":"orders","group":""}"#,
        r#"{"subject":"orders","group":"a","from":"yesterday"}"#,
    ] {
        let (status, body) = call(&api, replay_request(Some("sesame"), bad)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        let json: Value = serde_json::from_str(&body).unwrap();
        assert!(json["error"].is_string(), "{body}");
    }
    // Authorised and whole: the letter is found, and its broker group has no client address.
    let (status, body) = call(
        &api,
        replay_request(
            Some("sesame"),
            &format!(
                r#"{{"subject":"orders","group":"a","from":{},"to":{}}}"#,
                WIDE.0, WIDE.1
            ),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let json: Value = serde_json::from_str(&body).unwrap();
    let replayed = json["replayed"].as_array().unwrap();
    assert_eq!(replayed.len(), 1, "{body}");
    assert_eq!(replayed[0]["message_id"], "d-1");
    assert_eq!(replayed[0]["retry_subject"], "%RETRY%orders%a");
    assert!(
        replayed[0]["error"]
            .as_str()
            .unwrap()
            .contains("client address"),
        "{body}"
    );
    // Without any admin token configured, every replay is refused.
    let closed = Api {
        admin_tokens: Arc::new(Vec::new()),
        ..api.clone()
    };
    let (status, _) = call(&closed, replay_request(Some(""), good)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_dead_letter_is_read_from_the_backups_copy_when_its_broker_is_unknown() {
    let (_dir, api) = stored_api();
    let (status, m) = api_get(
        &api,
        "/v1/message?group=g1&subject=%25DEAD_RETRY%25orders%25a&sequence=0",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{m}");
    assert_eq!(m["source"], "backup");
    assert_eq!(m["message_id"], "d-1");
    assert_eq!(m["subject"], "%DEAD_RETRY%orders%a");
    assert_eq!(m["broker_group"], "g1");
    assert_eq!(m["created_time"], 1_700_000_001_000i64);
    assert_eq!(m["body"], "dead body");
    assert_eq!(m["tags"], json!(["red"]));
    assert_eq!(m["attrs"]["order"], "42");
    assert_eq!(m["attrs"]["qmq_times"], "3");

    // Not a dead letter, or a dead letter not held: the broker would be needed, and it is
    // not known.
    for uri in [
        "/v1/message?group=g1&subject=orders&sequence=1",
        "/v1/message?group=g1&subject=%25DEAD_RETRY%25orders%25a&sequence=7",
    ] {
        let (status, body) = api_get(&api, uri).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {body}");
        assert!(body["error"].as_str().unwrap().contains("g1"), "{body}");
    }
    let (status, _) = api_get(&api, "/v1/message?group=g1&subject=orders").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // QMQ's detail query of the dead letter: its attributes.
    let detail_uri = |q: Value| qmq_uri(q).replace("/api/message?", "/api/message/detail?");
    let (status, detail) = api_get(
        &api,
        &detail_uri(
            json!({"subject": "%DEAD_RETRY%orders%a", "brokerGroup": "g1",
                           "sequence": "0"}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        detail,
        json!({"subject": "%DEAD_RETRY%orders%a", "messageId": "d-1", "brokerGroup": "g1",
               "sequence": "0", "tags": ["red"], "storeAtFailed": false, "durable": true,
               "attrs": {"order": "42", "body": "dead body", "qmq_times": "3"}})
    );
    // Not held anywhere: `{}`.
    let (_, none) = api_get(
        &api,
        &detail_uri(json!({"subject": "orders", "brokerGroup": "g1", "sequence": 1})),
    )
    .await;
    assert_eq!(none, json!({}));
}
