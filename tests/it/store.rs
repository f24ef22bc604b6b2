//! The SQLite state on real files in temp folders: claims and attempts, quarantine, crash
//! recovery, result + outbox atomicity and order, duplicates, purge, schema and pragmas.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::os::unix::ffi::OsStrExt;

use mammo_edge::edge::store::{
    result_id, Claim, Committed, ImageKey, OutboxMessage, Status, Store, StoreError, Ticket,
    DB_FILE, IO_REASON, PURGED_BEFORE_REASON, SCHEMA_VERSION,
};
use serde_json::json;

use crate::util::tmp;

const SHA: &str = "ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef0123456789";

fn mtime(s: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000 + s)
}

fn msg(topic: &str, n: u32) -> OutboxMessage {
    OutboxMessage {
        topic: topic.into(),
        payload: json!({ "n": n }),
        retain: false,
    }
}

fn key(sop: &str) -> ImageKey {
    key_in(sop, "1.2.3")
}

fn key_in(sop: &str, study: &str) -> ImageKey {
    ImageKey {
        sop_instance_uid: sop.into(),
        study_instance_uid: study.into(),
        model_sha256: SHA.into(),
        result_id: result_id(sop, SHA),
    }
}

fn process(c: Claim) -> Ticket {
    match c {
        Claim::Process(t) => t,
        other => panic!("expected Process, got {other:?}"),
    }
}

fn attempts(s: &Store, p: &Path) -> u32 {
    s.ledger_entry(p).unwrap().expect("ledger row").attempts
}

fn status(s: &Store, p: &Path) -> Status {
    s.ledger_entry(p).unwrap().expect("ledger row").status
}

#[test]
fn open_sets_wal_full_sync_and_schema_version() {
    let dir = tmp();
    let state = dir.path().join("state");
    let s = Store::open(&state, 3).unwrap();
    assert_eq!(s.path(), state.join(DB_FILE));
    assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
    assert_eq!(SCHEMA_VERSION, 5);
    drop(s);
    // Read back by a separate connection: WAL is persistent, user_version is in the header.
    let c = rusqlite::Connection::open(state.join(DB_FILE)).unwrap();
    let mode: String = c
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let v: u32 = c
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(v, SCHEMA_VERSION);
    // Reopening does not migrate again.
    let s = Store::open(&state, 3).unwrap();
    assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
}

#[test]
fn a_newer_schema_is_refused() {
    let dir = tmp();
    drop(Store::open(dir.path(), 3).unwrap());
    let c = rusqlite::Connection::open(dir.path().join(DB_FILE)).unwrap();
    c.pragma_update(None, "user_version", 99).unwrap();
    drop(c);
    match Store::open(dir.path(), 3) {
        Err(StoreError::SchemaTooNew {
            found: 99,
            supported,
        }) => {
            assert_eq!(supported, SCHEMA_VERSION)
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("a newer schema must be refused"),
    }
}

#[test]
fn claim_marks_in_progress_and_counts_attempts_before_decoding() {
    let dir = tmp();
    let mut s = Store::open(dir.path(), 3).unwrap();
    let f = PathBuf::from("/srv/dicom-export/a.dcm");
    let t = process(s.claim(&f, 1000, mtime(0)).unwrap());
    assert_eq!(t.attempts, 1);
    let e = s.ledger_entry(&f).unwrap().unwrap();
    assert_eq!(e.status, Status::InProgress);
    assert_eq!((e.attempts, e.size), (1, 1000));
    assert_eq!(e.mtime_ns, 1_700_000_000 * 1_000_000_000);
    // While in progress another claim is told to leave it.
    assert_eq!(s.claim(&f, 1000, mtime(0)).unwrap(), Claim::Busy);

    s.commit_error(&t, None, None, "truncated", &msg("p/error", 1))
        .unwrap();
    assert_eq!(status(&s, &f), Status::Error);
    assert_eq!(
        s.ledger_entry(&f).unwrap().unwrap().reason.as_deref(),
        Some("truncated")
    );
    // Same path, size and mtime: already finished.
    assert_eq!(
        s.claim(&f, 1000, mtime(0)).unwrap(),
        Claim::Finished(Status::Error)
    );
    // The file changed (re-exported in place): processed again, attempts start over.
    let t2 = process(s.claim(&f, 1001, mtime(5)).unwrap());
    assert_eq!(t2.attempts, 1);
    assert_eq!(t2.ledger_id, t.ledger_id);
    // A ticket finishes its row once; a second commit with it is refused.
    s.commit_skip(
        &t2,
        Some("9.9"),
        Some("1.2.3"),
        "for_processing",
        &msg("p/skipped", 2),
    )
    .unwrap();
    let err = s
        .commit_skip(&t2, None, None, "again", &msg("p/skipped", 3))
        .unwrap_err();
    assert!(matches!(err, StoreError::StaleTicket { .. }), "{err}");
    // The failed commit wrote nothing.
    assert_eq!(s.undelivered_count().unwrap(), 2);
    let e = s.ledger_entry(&f).unwrap().unwrap();
    assert_eq!(e.status, Status::Skipped);
    assert_eq!(e.sop_instance_uid.as_deref(), Some("9.9"));
}

#[test]
fn a_file_that_keeps_failing_is_quarantined_after_max_attempts() {
    let dir = tmp();
    let mut s = Store::open(dir.path(), 3).unwrap();
    let f = PathBuf::from("/x/poison.dcm");
    for n in 1..=3 {
        let t = process(s.claim(&f, 10, mtime(0)).unwrap());
        assert_eq!(t.attempts, n);
        s.retry_later(&t, "decode timed out").unwrap();
        assert_eq!(status(&s, &f), Status::New);
        assert_eq!(attempts(&s, &f), n);
    }
    let q = match s.claim(&f, 10, mtime(0)).unwrap() {
        Claim::Quarantine(t) => t,
        other => panic!("expected Quarantine, got {other:?}"),
    };
    assert_eq!(
        q.attempts, 3,
        "a quarantine claim does not count an attempt"
    );
    s.commit_quarantine(&q, "timed out 3 times", &msg("p/error", 1))
        .unwrap();
    let e = s.ledger_entry(&f).unwrap().unwrap();
    assert_eq!((e.status, e.attempts), (Status::Quarantined, 3));
    assert_eq!(e.reason.as_deref(), Some("timed out 3 times"));
    assert_eq!(
        s.claim(&f, 10, mtime(0)).unwrap(),
        Claim::Finished(Status::Quarantined)
    );
    let out = s.next_undelivered(10).unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].topic, "p/error");
}

#[test]
fn a_quarantined_content_is_found_under_any_name_and_after_a_touch() {
    let dir = tmp();
    let mut s = Store::open(dir.path(), 2).unwrap();
    let f = PathBuf::from("/x/poison.dcm");
    let hash = "5".repeat(64);
    for _ in 1..=2 {
        let t = process(s.claim(&f, 10, mtime(0)).unwrap());
        s.record_content(&t, &hash).unwrap();
        s.retry_later(&t, "decode timed out").unwrap();
    }
    assert_eq!(
        s.quarantined_content(&hash).unwrap(),
        None,
        "not yet quarantined"
    );
    let q = match s.claim(&f, 10, mtime(0)).unwrap() {
        Claim::Quarantine(t) => t,
        other => panic!("expected Quarantine, got {other:?}"),
    };
    s.commit_quarantine(&q, "timed out twice", &msg("p/error", 1))
        .unwrap();
    assert_eq!(
        s.quarantined_content(&hash).unwrap().as_deref(),
        Some("timed out twice")
    );
    assert_eq!(s.quarantined_content(&"6".repeat(64)).unwrap(), None);
    // touched: a new file for the ledger (attempts start over, hash forgotten on the row) but
    // the content stays quarantined, and survives a reopen
    let t = process(s.claim(&f, 10, mtime(5)).unwrap());
    assert_eq!(t.attempts, 1);
    drop(s);
    let s = Store::open(dir.path(), 2).unwrap();
    assert_eq!(
        s.quarantined_content(&hash).unwrap().as_deref(),
        Some("timed out twice")
    );
    // a stale ticket cannot record a hash
    let mut s = s;
    s.recover().unwrap();
    assert!(matches!(
        s.record_content(&t, &hash),
        Err(StoreError::StaleTicket { .. })
    ));
}

#[test]
fn a_version_1_database_is_migrated_keeping_its_rows() {
    let dir = tmp();
    let db = dir.path().join(DB_FILE);
    {
        // the schema as version 1 wrote it, with one finished row
        let c = rusqlite::Connection::open(&db).unwrap();
        c.execute_batch(
            "CREATE TABLE ledger (
                id INTEGER PRIMARY KEY, path TEXT NOT NULL UNIQUE, size INTEGER NOT NULL,
                mtime_ns INTEGER NOT NULL, sop_instance_uid TEXT, study_instance_uid TEXT,
                status TEXT NOT NULL CHECK (status IN
                    ('new', 'in_progress', 'done', 'skipped', 'error', 'quarantined')),
                reason TEXT, attempts INTEGER NOT NULL DEFAULT 0,
                created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL);
            CREATE INDEX ledger_sop ON ledger (sop_instance_uid);
            CREATE INDEX ledger_status ON ledger (status, updated_at);
            CREATE TABLE results (sop_instance_uid TEXT NOT NULL, model_sha256 TEXT NOT NULL,
                result_id TEXT NOT NULL UNIQUE, study_instance_uid TEXT NOT NULL,
                ledger_id INTEGER REFERENCES ledger (id) ON DELETE SET NULL,
                result_json TEXT NOT NULL, created_at INTEGER NOT NULL,
                PRIMARY KEY (sop_instance_uid, model_sha256));
            CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL,
                payload TEXT NOT NULL, retain INTEGER NOT NULL DEFAULT 0,
                created_at INTEGER NOT NULL, delivered_at INTEGER);
            CREATE TABLE exams (study_instance_uid TEXT PRIMARY KEY,
                revision INTEGER NOT NULL DEFAULT 0, pending INTEGER NOT NULL DEFAULT 1,
                last_image_at INTEGER NOT NULL, published_at INTEGER, published_json TEXT);
            INSERT INTO ledger (path, size, mtime_ns, status, attempts, created_at, updated_at)
                VALUES ('/x/old.dcm', 10, 1700000000000000000, 'done', 1, 1, 1);
            PRAGMA user_version = 1;",
        )
        .unwrap();
    }
    let mut s = Store::open(dir.path(), 3).unwrap();
    assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
    // the last migration's tables are there (drift windows, migration 5)
    {
        let c = rusqlite::Connection::open(dir.path().join(DB_FILE)).unwrap();
        let n: i64 = c
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE name IN ('drift_obs', 'drift_state')",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 2);
    }
    let old = PathBuf::from("/x/old.dcm");
    assert_eq!(status(&s, &old), Status::Done);
    assert_eq!(
        s.claim(&old, 10, mtime(0)).unwrap(),
        Claim::Finished(Status::Done)
    );
    let t = process(s.claim(Path::new("/x/new.dcm"), 10, mtime(0)).unwrap());
    s.record_content(&t, &"7".repeat(64)).unwrap();
}

#[test]
fn crash_while_decoding_is_retried_with_attempts_preserved() {
    let dir = tmp();
    let f = PathBuf::from("/x/crash.dcm");
    for n in 1..=2 {
        let mut s = Store::open(dir.path(), 3).unwrap();
        if n > 1 {
            assert_eq!(s.recover().unwrap(), 1);
            let e = s.ledger_entry(&f).unwrap().unwrap();
            assert_eq!((e.status, e.attempts), (Status::New, n - 1));
            assert_eq!(e.reason.as_deref(), Some("interrupted"));
        }
        let t = process(s.claim(&f, 10, mtime(0)).unwrap());
        assert_eq!(t.attempts, n);
        // Crash: the store is dropped without any commit.
        drop(s);
    }
    // Third crash, then the fourth claim quarantines: a poison file is never retried forever.
    let mut s = Store::open(dir.path(), 3).unwrap();
    s.recover().unwrap();
    let t = process(s.claim(&f, 10, mtime(0)).unwrap());
    assert_eq!(t.attempts, 3);
    drop(s);
    let mut s = Store::open(dir.path(), 3).unwrap();
    assert_eq!(s.recover().unwrap(), 1);
    assert!(matches!(
        s.claim(&f, 10, mtime(0)).unwrap(),
        Claim::Quarantine(Ticket { attempts: 3, .. })
    ));
    // A ticket from before the recovery cannot commit.
    s.recover().unwrap();
    let err = s.commit_error(&t, None, None, "late", &msg("p/error", 1));
    assert!(matches!(err, Err(StoreError::StaleTicket { .. })));
    assert_eq!(s.undelivered_count().unwrap(), 0);
}

#[test]
fn result_and_outbox_commit_together_in_order_and_survive_reopen() {
    let dir = tmp();
    let mut s = Store::open(dir.path(), 3).unwrap();
    let fa = PathBuf::from("/x/a.dcm");
    let fb = PathBuf::from("/x/b.dcm");
    let ta = process(s.claim(&fa, 1, mtime(0)).unwrap());
    let tb = process(s.claim(&fb, 1, mtime(0)).unwrap());
    let id_a = result_id("1.2.3.1", SHA);
    let got = s
        .commit_result(
            &ta,
            &key("1.2.3.1"),
            &json!({ "cancer_probability": 0.25 }),
            &[msg("p/image", 1), msg("p/health", 2)],
        )
        .unwrap();
    assert_eq!(got, Committed::Stored(id_a));
    let e = s.ledger_entry(&fa).unwrap().unwrap();
    assert_eq!(e.status, Status::Done);
    assert_eq!(e.sop_instance_uid.as_deref(), Some("1.2.3.1"));
    assert_eq!(e.study_instance_uid.as_deref(), Some("1.2.3"));
    s.commit_result(
        &tb,
        &key("1.2.3.2"),
        &json!({ "b": 1 }),
        &[msg("p/image", 3)],
    )
    .unwrap();

    let results = s.study_results("1.2.3", SHA).unwrap();
    assert_eq!(results.len(), 2);
    assert_eq!(results[0].sop_instance_uid, "1.2.3.1");
    assert_eq!(results[0].result_id, id_a);
    assert_eq!(results[0].result_json, r#"{"cancer_probability":0.25}"#);
    let exam = s.exam_state("1.2.3").unwrap().expect("exam row");
    assert!(exam.pending);
    assert_eq!(exam.revision, 0);

    let out = s.next_undelivered(10).unwrap();
    let order: Vec<(&str, &str)> = out
        .iter()
        .map(|r| (r.topic.as_str(), r.payload.as_str()))
        .collect();
    assert_eq!(
        order,
        [
            ("p/image", r#"{"n":1}"#),
            ("p/health", r#"{"n":2}"#),
            ("p/image", r#"{"n":3}"#)
        ]
    );
    assert!(out.windows(2).all(|w| w[0].id < w[1].id));
    assert_eq!(s.next_undelivered(2).unwrap().len(), 2);

    assert!(s.mark_delivered(out[0].id).unwrap());
    assert!(!s.mark_delivered(out[0].id).unwrap(), "delivered only once");
    assert_eq!(s.undelivered_count().unwrap(), 2);
    drop(s);

    // After a restart the undelivered rows are still there, in order; delivered ones are not.
    let mut s = Store::open(dir.path(), 3).unwrap();
    assert_eq!(s.recover().unwrap(), 0);
    let out2 = s.next_undelivered(10).unwrap();
    assert_eq!(out2, out[1..].to_vec());
    assert_eq!(s.undelivered_count().unwrap(), 2);
}

#[test]
fn a_failed_commit_leaves_neither_result_nor_outbox_rows() {
    let dir = tmp();
    let mut s = Store::open(dir.path(), 3).unwrap();
    let f = PathBuf::from("/x/a.dcm");
    let t = process(s.claim(&f, 1, mtime(0)).unwrap());
    // Recovery between claim and commit makes the ticket stale: the whole transaction rolls
    // back, including the result row inserted before the ledger check.
    s.recover().unwrap();
    let err = s
        .commit_result(&t, &key("7.7"), &json!({}), &[msg("p/image", 1)])
        .unwrap_err();
    assert!(matches!(err, StoreError::StaleTicket { .. }), "{err}");
    assert!(!s.seen_sop("7.7").unwrap());
    assert_eq!(s.undelivered_count().unwrap(), 0);
    assert!(s.exam_state("1.2.3").unwrap().is_none());
}

#[test]
fn same_sop_instance_uid_twice_is_detected() {
    let dir = tmp();
    let mut s = Store::open(dir.path(), 3).unwrap();
    let t = process(s.claim(Path::new("/x/a.dcm"), 1, mtime(0)).unwrap());
    assert!(!s.seen_sop("5.5").unwrap());
    s.commit_result(&t, &key("5.5"), &json!({}), &[msg("p/image", 1)])
        .unwrap();
    assert!(s.seen_sop("5.5").unwrap());

    // Re-exported under another name: the caller checks seen_sop and finishes it as duplicate.
    let copy = PathBuf::from("/x/copy-of-a.dcm");
    let t = process(s.claim(&copy, 1, mtime(1)).unwrap());
    s.commit_duplicate(&t, "5.5", Some("1.2.3")).unwrap();
    let e = s.ledger_entry(&copy).unwrap().unwrap();
    assert_eq!(
        (e.status, e.reason.as_deref()),
        (Status::Done, Some("duplicate_sop"))
    );

    // A caller that skipped the check still cannot create a second result or message.
    let again = PathBuf::from("/x/again.dcm");
    let t = process(s.claim(&again, 1, mtime(2)).unwrap());
    let got = s
        .commit_result(&t, &key("5.5"), &json!({ "x": 1 }), &[msg("p/image", 2)])
        .unwrap();
    assert_eq!(got, Committed::Duplicate(result_id("5.5", SHA)));
    assert_eq!(s.study_results("1.2.3", SHA).unwrap().len(), 1);
    assert_eq!(s.undelivered_count().unwrap(), 1);
    assert_eq!(status(&s, &again), Status::Done);
}

#[test]
fn result_id_is_uuid_v5_of_sop_and_model() {
    let a = result_id("1.2.840.1", SHA);
    assert_eq!(a.get_version_num(), 5);
    assert_eq!(a, result_id("1.2.840.1", &SHA.to_ascii_lowercase()));
    assert_ne!(a, result_id("1.2.840.2", SHA));
    assert_ne!(a, result_id("1.2.840.1", "00"));
    assert_eq!(
        a,
        uuid::Uuid::new_v5(
            &uuid::Uuid::NAMESPACE_OID,
            format!("1.2.840.1/{}", SHA.to_ascii_lowercase()).as_bytes()
        )
    );
}

/// Review #13: past retention nothing finished is kept: delivered messages, finished ledger
/// rows, results and published exams go; what is still open stays. The content of a purged row
/// is remembered one retention period more, so a file left in the folder is finished again
/// without a second message.
#[test]
fn purge_deletes_everything_finished_past_retention_and_remembers_the_content() {
    let dir = tmp();
    let mut s = Store::open(dir.path(), 3).unwrap();
    let (a, b) = ("a".repeat(64), "b".repeat(64));
    let done = PathBuf::from("/x/done.dcm");
    let t = process(s.claim(&done, 1, mtime(0)).unwrap());
    s.record_content(&t, &a).unwrap();
    s.commit_result(
        &t,
        &key_in("1.1", "7.1"),
        &json!({}),
        &[msg("p/image", 1), msg("p/image", 2)],
    )
    .unwrap();
    s.commit_exam("7.1", 1, &json!({}), &[]).unwrap();
    // an image of a study whose exam is not published yet
    let open = PathBuf::from("/x/open.dcm");
    let t = process(s.claim(&open, 1, mtime(0)).unwrap());
    s.commit_result(&t, &key_in("2.2", "7.2"), &json!({}), &[])
        .unwrap();
    let err = PathBuf::from("/x/err.dcm");
    let t = process(s.claim(&err, 1, mtime(0)).unwrap());
    s.record_content(&t, &b).unwrap();
    s.commit_error(&t, Some("3.3"), None, "damaged", &msg("p/error", 3))
        .unwrap();
    // a read error still being retried, and a file given back for a later try
    let io = PathBuf::from("/x/io.dcm");
    let t = process(s.claim(&io, 1, mtime(0)).unwrap());
    s.commit_error(&t, None, None, IO_REASON, &msg("p/error", 4))
        .unwrap();
    let later = PathBuf::from("/x/later.dcm");
    let t = process(s.claim(&later, 1, mtime(0)).unwrap());
    s.retry_later(&t, "timeout").unwrap();
    let first = s.next_undelivered(1).unwrap()[0].id;
    assert!(s.mark_delivered(first).unwrap());

    // Within retention nothing goes.
    let p = s.purge(Duration::from_secs(30 * 86_400)).unwrap();
    assert_eq!((p.outbox, p.ledger, p.results, p.exams), (0, 0, 0, 0));
    std::thread::sleep(Duration::from_millis(5));
    let p = s.purge(Duration::ZERO).unwrap();
    // the delivered message; done, open and err; the published study's result and exam
    assert_eq!((p.outbox, p.ledger, p.results, p.exams), (1, 3, 1, 1));
    for gone in [&done, &open, &err] {
        assert!(s.ledger_entry(gone).unwrap().is_none(), "{gone:?} kept");
    }
    assert_eq!(status(&s, &io), Status::Error);
    assert_eq!(status(&s, &later), Status::New);
    assert_eq!(s.undelivered_count().unwrap(), 3);
    assert!(!s.seen_sop("1.1").unwrap());
    assert!(s.exam_state("7.1").unwrap().is_none());
    assert!(s.exam_state("7.2").unwrap().unwrap().pending);
    assert_eq!(s.study_results("7.2", SHA).unwrap().len(), 1);
    assert_eq!(s.purged_content(&a).unwrap(), Some(Status::Done));
    assert_eq!(s.purged_content(&b).unwrap(), Some(Status::Error));
    let text = crate::util::database_text(s.path());
    for id in ["1.1", "7.1", "3.3", "/x/done.dcm", "/x/err.dcm"] {
        assert!(!text.contains(id), "{id} kept:\n{text}");
    }

    // The scored file, still in the folder, is claimed again and finished without a message.
    let t = process(s.claim(&done, 1, mtime(0)).unwrap());
    s.record_content(&t, &a).unwrap();
    s.commit_purged_before(&t, Status::Done).unwrap();
    let e = s.ledger_entry(&done).unwrap().unwrap();
    assert_eq!(
        (e.status, e.reason.as_deref()),
        (Status::Done, Some(PURGED_BEFORE_REASON))
    );
    assert_eq!(s.undelivered_count().unwrap(), 3);
    // One retention period later the content of a file seen again is still remembered; the
    // error file, gone from the folder, is forgotten.
    std::thread::sleep(Duration::from_millis(5));
    s.purge(Duration::ZERO).unwrap();
    assert_eq!(s.purged_content(&a).unwrap(), Some(Status::Done));
    assert_eq!(s.purged_content(&b).unwrap(), None);
}

/// Review #13: with hashed identifiers the database keeps no path and no plain UID, those an
/// earlier run kept plain included, and lookups by path and UID still find their rows.
#[test]
fn hashed_identifiers_are_kept_at_rest_and_plain_rows_of_an_earlier_run_rewritten() {
    use mammo_edge::edge::message::hmac_hex;
    let dir = tmp();
    let key = b"0123456789abcdef0123456789abcdef";
    let hashed = |u: &str| format!("hmac-sha256:{}", hmac_hex(key, u.as_bytes()));
    let named = PathBuf::from("/srv/export/DOE^JANE_1970-01-01/IMG0001.dcm");
    let latin1 = PathBuf::from(std::ffi::OsStr::from_bytes(
        b"/srv/export/M\xdcLLER^HANS/1.dcm",
    ));
    {
        // an earlier run with plain identifiers
        let mut s = Store::open(dir.path(), 3).unwrap();
        let t = process(s.claim(&named, 1, mtime(0)).unwrap());
        s.commit_result(&t, &key_in("1.2.840.9.1", "1.2.840.9"), &json!({}), &[])
            .unwrap();
        let t = process(s.claim(&latin1, 1, mtime(0)).unwrap());
        s.commit_error(
            &t,
            Some("1.2.840.9.2"),
            Some("1.2.840.9"),
            "damaged",
            &msg("p/error", 1),
        )
        .unwrap();
        let text = crate::util::database_text(s.path());
        assert!(text.contains("DOE^JANE") && text.contains("1.2.840.9.1"));
    }
    let mut s = Store::open(dir.path(), 3).unwrap();
    assert_eq!(s.hash_at_rest(key, hashed).unwrap(), 9);
    assert_eq!(
        s.hash_at_rest(key, hashed).unwrap(),
        0,
        "nothing left plain"
    );
    let text = crate::util::database_text(s.path());
    for secret in [
        "DOE^JANE",
        "1970-01-01",
        "/srv/export",
        "4ddc4c4c4552",
        "1.2.840.9",
    ] {
        assert!(!text.contains(secret), "{secret} kept:\n{text}");
    }
    // the rows are found again by path and by the hashed UIDs
    assert_eq!(
        s.claim(&named, 1, mtime(0)).unwrap(),
        Claim::Finished(Status::Done)
    );
    assert_eq!(
        s.claim(&latin1, 1, mtime(0)).unwrap(),
        Claim::Finished(Status::Error)
    );
    assert!(s.seen_sop(&hashed("1.2.840.9.1")).unwrap());
    let e = s.ledger_entry(&named).unwrap().unwrap();
    assert_eq!(e.path, hashed_path_of(key, &named));
    assert_eq!(e.sop_instance_uid, Some(hashed("1.2.840.9.1")));
    assert!(s.exam_state(&hashed("1.2.840.9")).unwrap().is_some());
    // new rows are kept hashed too
    let new = PathBuf::from("/srv/export/ROE^RICHARD/2.dcm");
    let t = process(s.claim(&new, 1, mtime(0)).unwrap());
    s.retry_later(&t, "timeout").unwrap();
    assert!(!crate::util::database_text(s.path()).contains("ROE^RICHARD"));
}

fn hashed_path_of(key: &[u8], p: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    format!(
        "hmac-sha256:{}",
        mammo_edge::edge::message::hmac_hex(key, p.as_os_str().as_bytes())
    )
}

#[test]
fn exam_revisions_are_stored_in_sequence() {
    let dir = tmp();
    let mut s = Store::open(dir.path(), 3).unwrap();
    let t = process(s.claim(Path::new("/x/a.dcm"), 1, mtime(0)).unwrap());
    s.commit_result(&t, &key("2.1"), &json!({}), &[]).unwrap();
    // Quiet for zero seconds: due; for an hour: not yet.
    std::thread::sleep(Duration::from_millis(5));
    assert_eq!(s.quiet_exams(Duration::ZERO).unwrap().len(), 1);
    assert!(s.quiet_exams(Duration::from_secs(3600)).unwrap().is_empty());

    let err = s.commit_exam("1.2.3", 2, &json!({}), &[]).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::RevisionConflict {
                expected: 1,
                got: 2,
                ..
            }
        ),
        "{err}"
    );
    s.commit_exam("1.2.3", 1, &json!({ "revision": 1 }), &[msg("p/exam", 1)])
        .unwrap();
    let st = s.exam_state("1.2.3").unwrap().unwrap();
    assert_eq!((st.revision, st.pending), (1, false));
    assert_eq!(st.published_json.as_deref(), Some(r#"{"revision":1}"#));
    assert!(s.quiet_exams(Duration::ZERO).unwrap().is_empty());

    // A later image makes the exam pending again; the next publication is revision 2.
    let t = process(s.claim(Path::new("/x/b.dcm"), 1, mtime(0)).unwrap());
    s.commit_result(&t, &key("2.2"), &json!({}), &[]).unwrap();
    let st = s.exam_state("1.2.3").unwrap().unwrap();
    assert_eq!((st.revision, st.pending), (1, true));
    s.commit_exam("1.2.3", 2, &json!({ "revision": 2 }), &[msg("p/exam", 2)])
        .unwrap();
    assert_eq!(s.exam_state("1.2.3").unwrap().unwrap().revision, 2);
    assert_eq!(s.undelivered_count().unwrap(), 2);
}

/// Review #8 (issue 13): a read error (`io`: permissions fixed later, NFS `ESTALE`) is not
/// final. The same path, size and mtime is claimed again once its back-off has passed (1 s,
/// then 2 s …), marked as a retry so the same error again is recorded without a second
/// message; any other error stays final.
#[test]
fn a_transient_read_error_is_retried_after_a_back_off_and_reported_once() {
    let dir = tmp();
    let mut s = Store::open(dir.path(), 3).unwrap();
    let f = PathBuf::from("/srv/dicom-export/io.dcm");
    let t = process(s.claim(&f, 10, mtime(0)).unwrap());
    assert!(!t.io_retry);
    s.commit_error(&t, None, None, "io", &msg("p/error", 1))
        .unwrap();
    assert_eq!(s.claim(&f, 10, mtime(0)).unwrap(), Claim::Later);
    std::thread::sleep(Duration::from_millis(1100));
    let t2 = process(s.claim(&f, 10, mtime(0)).unwrap());
    assert!(t2.io_retry);
    s.commit_error_again(&t2, "io").unwrap();
    // the back-off doubled: not yet after 1.1 s, due after 2 s
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(s.claim(&f, 10, mtime(0)).unwrap(), Claim::Later);
    std::thread::sleep(Duration::from_millis(1000));
    let t3 = process(s.claim(&f, 10, mtime(0)).unwrap());
    s.commit_skip(
        &t3,
        Some("7.7"),
        Some("1.2.3"),
        "not_mammogram",
        &msg("p/skipped", 2),
    )
    .unwrap();
    assert_eq!(status(&s, &f), Status::Skipped);
    let sent: Vec<String> = s
        .next_undelivered(10)
        .unwrap()
        .into_iter()
        .map(|r| r.topic)
        .collect();
    assert_eq!(
        sent,
        ["p/error", "p/skipped"],
        "one error message, not three"
    );
    // a decoding error is final
    let g = PathBuf::from("/srv/dicom-export/bad.dcm");
    let t = process(s.claim(&g, 10, mtime(0)).unwrap());
    s.commit_error(&t, None, None, "truncated", &msg("p/error", 3))
        .unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(
        s.claim(&g, 10, mtime(0)).unwrap(),
        Claim::Finished(Status::Error)
    );
}

#[test]
fn the_sr_outbox_keeps_sources_with_results_and_drains_each_destination_in_order() {
    use mammo_edge::edge::store::SrOutgoing;
    let dir = tmp();
    let mut s = Store::open(dir.path(), 3).unwrap();
    // two images of one study, one kept with its SR source, one without
    let t = process(s.claim(Path::new("/x/a.dcm"), 1, mtime(0)).unwrap());
    s.commit_result_with_source(
        &t,
        &key_in("1.1", "7.1"),
        &json!({ "laterality": "L" }),
        &[],
        Some(r#"{"sop_instance_uid":"1.1"}"#),
        None,
    )
    .unwrap();
    let t = process(s.claim(Path::new("/x/b.dcm"), 1, mtime(0)).unwrap());
    s.commit_result(
        &t,
        &key_in("1.2", "7.1"),
        &json!({ "laterality": "R" }),
        &[],
    )
    .unwrap();
    let sources = s.study_sr_sources("7.1", SHA).unwrap();
    assert_eq!(
        sources,
        [(
            r#"{"sop_instance_uid":"1.1"}"#.to_string(),
            r#"{"laterality":"L"}"#.to_string()
        )]
    );
    // two revisions' SRs for the PACS, one for the folder, committed with their exams
    let sr = |dest: &str, uid: &str| SrOutgoing {
        destination: dest.into(),
        sop_instance_uid: uid.into(),
        object: uid.as_bytes().to_vec(),
    };
    s.commit_exam_with_srs(
        "7.1",
        1,
        &json!({}),
        &[],
        &[sr("PACS", "9.1"), sr("folder", "9.1")],
    )
    .unwrap();
    s.commit_exam_with_srs("7.1", 2, &json!({}), &[], &[sr("PACS", "9.2")])
        .unwrap();
    // a revision conflict writes no SR
    assert!(s
        .commit_exam_with_srs("7.1", 2, &json!({}), &[], &[sr("PACS", "9.x")])
        .is_err());
    assert_eq!(
        s.sr_undelivered().unwrap(),
        [("PACS".to_string(), 2), ("folder".to_string(), 1)]
    );
    // the PACS head fails: it stays the head, with its try counted and its next time
    let head = s.sr_next("PACS").unwrap().unwrap();
    assert_eq!((head.sop_instance_uid.as_str(), head.attempts), ("9.1", 0));
    assert_eq!(head.object, b"9.1");
    s.sr_failed(head.id, 4_000_000_000_000, "association refused")
        .unwrap();
    let again = s.sr_next("PACS").unwrap().unwrap();
    assert_eq!((again.id, again.attempts), (head.id, 1));
    assert_eq!(again.next_try_at_ms, 4_000_000_000_000);
    // delivered: the next revision becomes the head; the object is dropped
    assert!(s.sr_delivered(head.id).unwrap());
    assert!(!s.sr_delivered(head.id).unwrap());
    assert_eq!(s.sr_next("PACS").unwrap().unwrap().sop_instance_uid, "9.2");
    let dropped: Option<Vec<u8>> = rusqlite::Connection::open(dir.path().join(DB_FILE))
        .unwrap()
        .query_row(
            "SELECT object FROM sr_outbox WHERE id = ?1",
            [head.id],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(dropped, None);
    // purge past retention: the delivered row, the results and with them their SR source;
    // undelivered SRs stay
    std::thread::sleep(Duration::from_millis(5));
    s.purge(Duration::ZERO).unwrap();
    assert!(s.study_sr_sources("7.1", SHA).unwrap().is_empty());
    let n: i64 = rusqlite::Connection::open(dir.path().join(DB_FILE))
        .unwrap()
        .query_row("SELECT COUNT(*) FROM sr_sources", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 0);
    assert_eq!(
        s.sr_undelivered().unwrap(),
        [("PACS".to_string(), 1), ("folder".to_string(), 1)]
    );
}
