//! The MQTT message builders fed hostile strings (reason texts, file names, UIDs as a file
//! could carry them): every message is valid JSON under the packet limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mammo_edge::edge::message::{Messages, ModelInfo, Privacy, MAX_MESSAGE_BYTES};
use mammo_edge::edge::publish::Topics;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(3, '\u{0}');
    let (a, b, c) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    );
    let m = Messages {
        topics: Topics::new("mammo/fuzz/edge"),
        model: ModelInfo {
            name: "fuzz".into(),
            version: "0".into(),
            sha256: "00".repeat(32),
            intended_use: "research only".into(),
            cancer_threshold: 0.5,
            ood_threshold: 1.0,
        },
        privacy: Privacy::local(),
    };
    let path = std::path::Path::new(a);
    for skipped in [true, false] {
        let msg = m.rejected(skipped, path, b, None, "fuzz_code", c);
        let json = msg.payload.to_string();
        assert!(msg.topic.len() + json.len() <= MAX_MESSAGE_BYTES);
        serde_json::from_str::<serde_json::Value>(&json).expect("valid JSON");
        let _ = mammo_edge::edge::message::summary(&msg.payload);
    }
});
