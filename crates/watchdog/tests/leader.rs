//! Two watchdogs on one meta database (SQLite, PostgreSQL and MariaDB): one holds the lease and
//! sends, the other waits; when the holder stops, the other takes over and sends. The outbox
//! is on PostgreSQL (registered as add-db registers it), or MariaDB when PostgreSQL is absent.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use qmq_client::idempotent::Dialect;
use qmq_client::MessageExt;
use qmq_meta::store::Store;
use qmq_watchdog::{start, ScanOptions, WatchdogConfig};

fn config(namespace: &str, node: &str, table: &str) -> WatchdogConfig {
    WatchdogConfig {
        namespace: namespace.into(),
        node: node.into(),
        lease: Duration::from_millis(1500),
        renew_interval: Duration::from_millis(200),
        check_interval: Duration::from_millis(100),
        refresh_interval: Duration::from_millis(100),
        table: table.into(),
        scan: ScanOptions {
            grace: Duration::ZERO,
            rate: 1000,
            ..ScanOptions::default()
        },
        ..WatchdogConfig::default()
    }
}

async fn one_leader_then_take_over(meta: Dialect, test: &str) {
    let Some(meta_db) = MetaDb::new(meta, test).await else {
        return;
    };
    let outbox_dialect = if qmq_testkit::require(&qmq_testkit::POSTGRES, test).is_some() {
        Dialect::Postgres
    } else {
        Dialect::MySql
    };
    let meta_url = meta_db.url.clone();
    with_outbox(outbox_dialect, test, |db| async move {
        let store = Store::connect(&meta_url).await.unwrap();
        let namespace = unique("ns");
        store
            .add_client_db(&registration(&db, &namespace))
            .await
            .unwrap();
        // A registration in another room is not this watchdog's business.
        let mut other = registration(&db, "elsewhere");
        other.url.push('0');
        store.add_client_db(&other).await.unwrap();

        let (b, _dir) = broker_on("127.0.0.1:0".parse().unwrap()).await;
        let addr = b.addr().to_string();
        let subject = unique("wd.lead");
        let a = start(
            config(&namespace, "a", &db.table),
            store.clone(),
            producer(&addr, 3),
        );
        let b2 = start(
            config(&namespace, "b", &db.table),
            store.clone(),
            producer(&addr, 3),
        );
        wait_for("a leader", T, || a.is_leader() || b2.is_leader()).await;
        // Never both, while they keep contending for a few lease periods.
        let end = std::time::Instant::now() + Duration::from_millis(1500);
        while std::time::Instant::now() < end {
            assert!(!(a.is_leader() && b2.is_leader()), "two leaders");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(a.is_leader() ^ b2.is_leader());
        let (leader, follower) = if a.is_leader() { (a, b2) } else { (b2, a) };
        let holder = store
            .lease_holder(&format!("qmq_watchdog_{namespace}"))
            .await
            .unwrap();
        assert!(holder.as_deref() == Some("a") || holder.as_deref() == Some("b"));

        let row = db
            .insert_raw(
                &format!(r#"{{"messageId":"first","subject":"{subject}"}}"#),
                0,
                0,
            )
            .await;
        let got = pull_exactly(&addr, &subject, "g", 1).await;
        assert_eq!(got[0].message_id, "first");
        assert_eq!(got[0].get_i64("qmq_sequence"), Some(row));
        wait_for_rows_gone(&db).await;

        leader.shutdown().await;
        wait_for("the take-over", Duration::from_secs(5), || {
            follower.is_leader()
        })
        .await;
        db.insert_raw(
            &format!(r#"{{"messageId":"second","subject":"{subject}"}}"#),
            0,
            0,
        )
        .await;
        let got = pull_exactly(&addr, &subject, "g", 1).await;
        assert_eq!(got[0].message_id, "second");
        follower.shutdown().await;
        b.shutdown().await.unwrap();
        store.close().await;
    })
    .await;
    meta_db.drop_now().await;
}

async fn wait_for_rows_gone(db: &Arc<OutboxDb>) {
    let end = std::time::Instant::now() + T;
    while !db.rows().await.is_empty() {
        assert!(std::time::Instant::now() < end, "rows not deleted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

on_all_databases!(one_leader_then_take_over);
