//! The Storer actor against a real Postgres: rows of concurrent events share statements, and each
//! sender still gets its own answer (inserted, duplicate, or the refusal of its own row).

mod common;

use actix::prelude::*;
use common::*;
use nasa_ingest::actors::storer::{BatchLimits, IsStored, Store, Storer};
use nasa_ingest::db::{self, NewImage, Stored};
use nasa_ingest::errors::{EventError, Transient};
use nasa_ingest::metrics::METRICS;
use nasa_ingest::supervision::Lifeline;

fn row(nasa_id: &str) -> NewImage {
    NewImage {
        nasa_id: nasa_id.into(),
        title: Some(format!("title of {nasa_id}")),
        query: Some("moon".into()),
        image_url: format!("http://127.0.0.1/image/{nasa_id}/a.jpg"),
        content_type: "image/jpeg".into(),
        byte_size: 3,
        sha256: "not checked here".into(),
        image_bytes: vec![1, 2, 3],
        event_id: None,
        kafka_partition: Some(0),
        kafka_offset: Some(0),
        trace_id: None,
    }
}

fn storer(db: &TestDb, limits: BatchLimits) -> Addr<Storer> {
    let pool = db::pool(&db.url, 4);
    db::migrate(&pool).expect("migrations");
    Storer::new(pool, limits, Lifeline::unsupervised("storer")).start()
}

/// The batch histogram is global to this test binary: tests that write hold this, so that one
/// test's batches are not counted in another's.
static WRITERS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// (statements written, rows in them) so far, from the Storer's histogram.
fn batches() -> (u64, f64) {
    (METRICS.store_batch_rows.get_sample_count(), METRICS.store_batch_rows.get_sample_sum())
}

#[actix_rt::test]
async fn concurrent_rows_share_statements_and_each_sender_learns_its_outcome() {
    let _serial = WRITERS.lock().await;
    let db = TestDb::create();
    let storer = storer(&db, BatchLimits { max_rows: 16, max_bytes: 1 << 20, max_in_flight: 1 });
    for id in ["old-1", "old-2"] {
        assert_eq!(storer.send(Store(row(id))).await.unwrap().unwrap(), Stored::Inserted);
    }
    let before = batches();
    // 40 rows at once: 30 new ids, "new-0".."new-4" a second time, and the two stored already.
    let mut ids: Vec<String> = (0..30).map(|i| format!("new-{i}")).collect();
    ids.extend((0..5).map(|i| format!("new-{i}")));
    ids.extend(["old-1".to_owned(), "old-2".to_owned()]);
    let answers = futures::future::join_all(ids.iter().map(|id| storer.send(Store(row(id))))).await;
    let answers: Vec<Stored> = answers.into_iter().map(|a| a.unwrap().unwrap()).collect();

    for (i, id) in ids.iter().enumerate() {
        let inserted = ids.iter().zip(&answers).filter(|(other, a)| *other == id && **a == Stored::Inserted).count();
        let expected = if id.starts_with("old-") { 0 } else { 1 };
        assert_eq!(inserted, expected, "{id} inserted {inserted} times (answer {i}: {:?})", answers[i]);
    }
    assert_eq!(answers.iter().filter(|a| **a == Stored::Duplicate).count(), 7, "5 repeats and 2 stored before");
    assert_eq!(db.rows_count(), 32);
    let (statements, rows) = (batches().0 - before.0, batches().1 - before.1);
    println!("{rows} rows in {statements} statements");
    assert_eq!(rows, 37.0);
    assert!(statements <= 5, "37 rows at once, one statement at a time, 16 rows a statement: a few statements, not {statements}");
}

#[actix_rt::test]
async fn a_row_postgres_refuses_fails_alone_and_its_batch_mates_are_stored() {
    let _serial = WRITERS.lock().await;
    let db = TestDb::create();
    let storer = storer(&db, BatchLimits { max_rows: 64, max_bytes: 1 << 20, max_in_flight: 1 });
    // A nasa_id too large for the unique index (random, so it does not compress): Postgres
    // answers, and refuses this row only.
    let huge: String = {
        use rand::Rng;
        let mut rng = rand::rng();
        (0..10_000).map(|_| rng.sample(rand::distr::Alphanumeric) as char).collect()
    };
    let mut ids: Vec<String> = (0..10).map(|i| format!("good-{i}")).collect();
    ids.insert(5, huge.clone());
    let answers = futures::future::join_all(ids.iter().map(|id| storer.send(Store(row(id))))).await;
    for (id, answer) in ids.iter().zip(answers) {
        let answer = answer.unwrap();
        if *id == huge {
            assert!(matches!(answer, Err(EventError::Transient(Transient::DatabaseRefused(_)))), "{answer:?}");
        } else {
            assert_eq!(answer.unwrap(), Stored::Inserted, "{id}");
        }
    }
    assert_eq!(db.rows_count(), 10);
}

#[actix_rt::test]
async fn is_stored_questions_asked_at_once_each_get_their_own_answer() {
    let _serial = WRITERS.lock().await;
    let db = TestDb::create();
    let storer = storer(&db, BatchLimits::default());
    for i in 0..5 {
        storer.send(Store(row(&format!("have-{i}")))).await.unwrap().unwrap();
    }
    let ids: Vec<String> = (0..5).map(|i| format!("have-{i}")).chain((0..15).map(|i| format!("lack-{i}"))).collect();
    let answers = futures::future::join_all(ids.iter().map(|id| storer.send(IsStored(id.clone())))).await;
    for (id, answer) in ids.iter().zip(answers) {
        assert_eq!(answer.unwrap().unwrap(), id.starts_with("have-"), "{id}");
    }
}

#[actix_rt::test]
async fn postgres_down_answers_every_sender_with_a_transient_failure() {
    let _serial = WRITERS.lock().await;
    let db = TestDb::create();
    let proxy = TcpProxy::start("127.0.0.1:5432");
    let url = db.url.replace("127.0.0.1:5432", &format!("127.0.0.1:{}", proxy.port));
    let pool = db::pool(&url, 2);
    db::migrate(&pool).expect("migrations");
    let storer = Storer::new(pool, BatchLimits::default(), Lifeline::unsupervised("storer")).start();
    proxy.cut();
    let answers = futures::future::join_all((0..6).map(|i| storer.send(Store(row(&format!("cut-{i}")))))).await;
    for a in answers {
        let e = a.unwrap().unwrap_err();
        assert!(matches!(e, EventError::Transient(Transient::Database(_))), "retried, not dead-lettered: {e}");
        assert_eq!(e.to_string().matches("Postgres unavailable").count(), 1, "said once, not wrapped again: {e}");
    }
    proxy.restore();
    let again = storer.send(Store(row("cut-0"))).await.unwrap();
    assert_eq!(again.unwrap(), Stored::Inserted);
}
