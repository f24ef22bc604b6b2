//! `mammo-edge demo --broker URL`: the demo against a running broker (mosquitto) instead of its
//! embedded one; an independent subscriber on that broker sees what the demo printed.

use std::process::Command;
use std::sync::{Arc, Mutex};

use serde_json::Value;

use super::harness::*;

#[test]
fn demo_with_broker_publishes_through_that_broker() {
    let broker = Broker::start();
    let got = Arc::new(Mutex::new(Vec::new()));
    // the demo's topics are mammo/demo/edge-<its pid>/…
    let sub = Subscriber::start(broker.port, "mammo/demo", "sub-demo", got);
    let out = Command::new(BIN)
        .args(["demo", "--json", "--broker"])
        .arg(broker.url())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("(--broker, topics mammo/demo/edge-"));
    let printed: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(printed.len(), 9, "4 images, 1 exam, 4 refusals");
    sub.wait(30, "the demo's 9 messages", |s| {
        s.on("image").len() + s.on("exam").len() + s.on("skipped").len() + s.on("error").len() >= 9
    });
    let (images, exams) = (sub.on("image"), sub.on("exam"));
    assert_eq!((images.len(), exams.len()), (4, 1));
    assert_eq!((sub.on("skipped").len(), sub.on("error").len()), (2, 2));
    let (vi, ve) = (schema("image"), schema("exam"));
    for m in &images {
        assert_valid(&vi, m);
        assert!(printed.contains(m), "printed as received: {m}");
    }
    assert_valid(&ve, &exams[0]);
    assert!(printed.contains(&exams[0]));
    // the daemon went offline cleanly when the demo stopped it
    assert!(sub
        .all()
        .iter()
        .any(|r| r.topic.ends_with("/status") && r.payload == "offline"));
}
