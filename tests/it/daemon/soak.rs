//! SIGKILL at random moments while a stream of files arrives: after every restart the daemon
//! must end with exactly one ledger row, one result and one image message per file, all
//! delivered. Reduced in CI; `scripts/soak-daemon.sh` runs it long (env `MAMMO_SOAK_EXAMS`,
//! `MAMMO_SOAK_KILLS`, `MAMMO_SOAK_SEED`).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::harness::*;
use crate::util::tmp;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn sigkill_at_random_moments_loses_nothing_and_duplicates_nothing() {
    let exams = env_or("MAMMO_SOAK_EXAMS", 3) as usize;
    let kills = env_or("MAMMO_SOAK_KILLS", 6);
    let seed = env_or("MAMMO_SOAK_SEED", 2026);
    eprintln!("soak: {exams} exams, {kills} kills, seed {seed}");
    let mut rng = fastrand::Rng::with_seed(seed);

    let broker = Broker::start();
    let s = Setup::new(&broker.url(), "");
    let sub = Subscriber::start(broker.port, &s.prefix, "sub-soak", Arc::default());
    let src = tmp();
    let mut files = Vec::new();
    for e in 0..exams {
        let dir = src.path().join(format!("exam{e}"));
        std::fs::create_dir_all(&dir).unwrap();
        files.extend(exam(&dir, 100 + e as u64));
    }
    let n = files.len() as i64;

    // the exporter: one file every 0-700 ms, in its own thread
    let delays: Vec<u64> = files.iter().map(|_| rng.u64(0..700)).collect();
    let watch = s.watch.clone();
    let fed = Arc::new(Mutex::new(0usize));
    let fed_w = fed.clone();
    let feeder = std::thread::spawn(move || {
        for (i, (f, d)) in files.iter().zip(delays).enumerate() {
            std::thread::sleep(Duration::from_millis(d));
            drop_in(&watch, f, &format!("img{i:04}.dcm"));
            *fed_w.lock().unwrap() += 1;
        }
    });

    // kill -9 at random moments (1.0-2.6 s after each start, past start-up and the 1 s stability wait: scoring, commits,
    // publishing or idle), restart at once
    let mut d = s.start();
    let mut at_kill = Vec::new();
    for _ in 0..kills {
        std::thread::sleep(Duration::from_millis(rng.u64(1000..2600)));
        let done = s.count("SELECT COUNT(*) FROM ledger WHERE status = 'done'");
        at_kill.push((*fed.lock().unwrap(), done));
        d.kill9();
        d = s.start();
    }
    feeder.join().unwrap();
    eprintln!("soak: (files dropped, ledger done) at each kill: {at_kill:?}");

    let t0 = Instant::now();
    let starts = kills as usize + 1;
    while s.log_text().matches("watching 1 folder(s)").count() < starts
        || s.count("SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL") > 0
        || s.count("SELECT COUNT(*) FROM ledger WHERE status = 'done'") < n
        || s.count("SELECT COUNT(*) FROM exams WHERE pending = 0") < exams as i64
    {
        assert!(
            t0.elapsed() < Duration::from_secs(120 + 10 * n as u64),
            "not drained: {}",
            s.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    sub.wait(60, "every image and exam", |sub| {
        distinct_result_ids(&sub.on("image")).len() == n as usize
            && distinct_result_ids(&sub.on("exam")).len() == exams
    });
    assert!(d.stop().success(), "{}", s.log_text());

    // exactly one ledger row, one result, one committed image message per file
    assert_eq!(s.count("SELECT COUNT(*) FROM ledger"), n);
    assert_eq!(
        s.count("SELECT COUNT(DISTINCT sop_instance_uid) FROM ledger"),
        n
    );
    assert_eq!(
        s.count("SELECT COUNT(*) FROM ledger WHERE status = 'done'"),
        n
    );
    assert_eq!(s.count("SELECT COUNT(*) FROM results"), n);
    assert_eq!(
        s.count("SELECT COUNT(*) FROM outbox WHERE topic LIKE '%/image'"),
        n,
        "one image message per file in the outbox"
    );
    // delivered at least once; a redelivery (kill between PUBACK and its commit) repeats the
    // same result_id, never a new one
    let images = sub.on("image");
    assert!(images.len() >= n as usize);
    assert_eq!(distinct_result_ids(&images).len(), n as usize);
    let mut complete: Vec<String> = sub
        .on("exam")
        .iter()
        .filter(|e| e["complete"] == true)
        .map(|e| e["study_instance_uid"].as_str().unwrap().to_string())
        .collect();
    complete.sort();
    complete.dedup();
    assert_eq!(complete.len(), exams, "every exam published complete");
    eprintln!(
        "soak: {n} files, {kills} kills, {} image deliveries ({} repeated)",
        images.len(),
        images.len() - n as usize
    );
}
