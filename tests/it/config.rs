//! The daemon configuration: defaults, the commented default file, loading, and validation
//! errors that name their key.

use std::path::PathBuf;

use mammo_edge::edge::config::{Broker, Config, ConfigError, FilesAfter, UidMode};

use crate::util::tmp;

/// Parse `text`, expecting a refusal; returns the error.
fn refuse(text: &str) -> ConfigError {
    match Config::parse(text, "(test)") {
        Ok(c) => panic!("should be refused:\n{text}\ngot {c:?}"),
        Err(e) => e,
    }
}

/// The error names `key` both as its key and in its message.
fn assert_names(text: &str, key: &str) {
    let e = refuse(text);
    assert_eq!(e.key(), key, "{e}");
    assert!(e.to_string().contains(key), "message {e:?} lacks {key}");
}

#[test]
fn the_dicom_receiver_is_off_by_default_and_its_section_parses() {
    assert!(Config::default().dicom.is_none());
    let c = Config::parse(
        "[dicom]\nlisten = \"127.0.0.1:11112\"\ncalling_ae_allow = [\"MG_ROOM1\"]\n\
         ip_allow = [\"10.1.2.0/24\", \"192.0.2.7\", \"::1\"]\n",
        "(test)",
    )
    .unwrap();
    let d = c.dicom.unwrap();
    assert_eq!(d.ae_title, "MAMMO_EDGE");
    assert_eq!(d.max_associations, 8);
    let blocks = d.ip_blocks().unwrap();
    assert!(blocks[0].contains(&"10.1.2.200".parse::<std::net::IpAddr>().unwrap()));
    assert!(!blocks[0].contains(&"10.1.3.1".parse::<std::net::IpAddr>().unwrap()));
    assert!(blocks[1].contains(&"192.0.2.7".parse::<std::net::IpAddr>().unwrap()));
    assert!(!blocks[1].contains(&"192.0.2.8".parse::<std::net::IpAddr>().unwrap()));
    assert!(blocks[2].contains(&"::1".parse::<std::net::IpAddr>().unwrap()));
}

#[test]
fn sr_is_off_by_default_and_its_destinations_parse_and_are_checked() {
    assert!(Config::default().sr.is_off());
    let c = Config::parse(
        "[sr]\nfolder = \"/var/lib/mammo-edge/sr\"\n\
         [[sr.destination]]\nae_title = \"PACS\"\naddress = \"pacs.example:104\"\n\
         [[sr.destination]]\nae_title = \"VIEWER\"\naddress = \"10.1.2.3:11112\"\n\
         calling_ae = \"EDGE_2\"\ntimeout_secs = 5\n",
        "(test)",
    )
    .unwrap();
    assert!(!c.sr.is_off());
    assert_eq!(c.sr.retry_max_secs, 300);
    let d = &c.sr.destination;
    assert_eq!(d.len(), 2);
    assert_eq!(
        (d[0].calling_ae.as_str(), d[0].timeout_secs),
        ("MAMMO_EDGE", 30)
    );
    assert_eq!(d[0].key(), "PACS@pacs.example:104");
    assert_eq!((d[1].calling_ae.as_str(), d[1].timeout_secs), ("EDGE_2", 5));
    for (bad, key) in [
        (
            "ae_title = \"\"\naddress = \"a:104\"",
            "sr.destination.ae_title",
        ),
        (
            "ae_title = \"A_TITLE_LONGER_THAN_16\"\naddress = \"a:104\"",
            "sr.destination.ae_title",
        ),
        (
            "ae_title = \"PACS\"\naddress = \"pacs.example\"",
            "sr.destination.address",
        ),
        (
            "ae_title = \"PACS\"\naddress = \"pacs:0\"",
            "sr.destination.address",
        ),
        (
            "ae_title = \"PACS\"\naddress = \"a:104\"\ncalling_ae = \"A\\\\B\"",
            "sr.destination.calling_ae",
        ),
        (
            "ae_title = \"PACS\"\naddress = \"a:104\"\ntimeout_secs = 0",
            "sr.destination.timeout_secs",
        ),
    ] {
        let e = Config::parse(&format!("[[sr.destination]]\n{bad}\n"), "(test)").unwrap_err();
        assert!(e.to_string().contains(key), "{bad}: {e}");
    }
    let e = Config::parse("[sr]\nretry_max_secs = 0\n", "(test)").unwrap_err();
    assert!(e.to_string().contains("sr.retry_max_secs"), "{e}");
    let e = Config::parse(
        "[[sr.destination]]\nae_title = \"P\"\naddress = \"a:104\"\ntls_cert = \"c.pem\"\n",
        "(test)",
    )
    .unwrap_err();
    assert!(e.to_string().contains("sr.destination.tls_cert"), "{e}");
}

#[test]
fn dicom_tls_needs_its_key_and_client_ca_and_takes_sha256_fingerprints() {
    let base = "[dicom]\ncalling_ae_allow = [\"M\"]\nip_allow = [\"127.0.0.1\"]\n";
    let fp = vec!["AB"; 32].join(":");
    let c = Config::parse(
        &format!(
            "{base}tls_cert = \"s.pem\"\ntls_key = \"s.key\"\ntls_client_ca = \"ca.pem\"\n\
             tls_client_allow = [\"{fp}\"]\n"
        ),
        "(test)",
    )
    .unwrap();
    assert!(c.dicom.unwrap().tls());
    for (keys, named) in [
        (
            "tls_cert = \"s.pem\"\ntls_client_ca = \"ca.pem\"",
            "dicom.tls_key",
        ),
        (
            "tls_cert = \"s.pem\"\ntls_key = \"s.key\"",
            "dicom.tls_client_ca",
        ),
        ("tls_key = \"s.key\"", "dicom.tls_cert"),
        ("tls_client_allow = [\"abcd\"]", "dicom.tls_client_allow"),
    ] {
        let e = Config::parse(&format!("{base}{keys}\n"), "(test)").unwrap_err();
        assert!(e.to_string().contains(named), "{keys}: {e}");
    }
}

#[test]
fn default_toml_parses_back_to_defaults() {
    let text = Config::default_toml();
    let parsed = Config::parse(&text, "(default)").expect("default config parses");
    assert_eq!(parsed, Config::default());
    // The values operators' scripts rely on.
    let d = Config::default();
    assert_eq!(d.watch.dirs, vec![PathBuf::from("/srv/dicom-export")]);
    assert_eq!(d.watch.stable_secs, 2);
    assert_eq!(d.watch.rescan_secs, 30);
    assert_eq!(d.state.dir, PathBuf::from("/var/lib/mammo-edge"));
    assert_eq!(d.state.retention_days, 30);
    assert_eq!(d.state.retention().as_secs(), 30 * 86_400);
    assert_eq!(d.model.threads, 1);
    assert_eq!(d.ingest.pixel_budget, 60_000_000);
    assert_eq!(d.ingest.file_timeout_secs, 60);
    assert_eq!(d.ingest.max_attempts, 3);
    assert!(!d.ingest.allow_for_processing);
    assert_eq!(d.mqtt.url, "mqtt://127.0.0.1:1883");
    assert_eq!(d.mqtt.topic_prefix, "mammo/site-1/edge-1");
    assert_eq!(d.mqtt.client_id, "mammo-edge-1");
    assert!(!d.mqtt.allow_insecure);
    assert_eq!(d.exam.quiet_secs, 300);
    assert_eq!(d.files.after, FilesAfter::Keep);
    assert_eq!(d.privacy.uids, UidMode::Plain);
    assert!(!d.privacy.publish_accession && !d.privacy.publish_file_names);
    // Every key of the default file is a commented, explicit line.
    for key in [
        "dirs",
        "stable_secs",
        "rescan_secs",
        "dir",
        "retention_days",
        "path",
        "threads",
        "pixel_budget",
        "file_timeout_secs",
        "max_attempts",
        "allow_for_processing",
        "url",
        "topic_prefix",
        "client_id",
        "ca_file",
        "client_cert",
        "client_key",
        "username",
        "password_file",
        "allow_insecure",
        "health_secs",
        "ack_timeout_secs",
        "quiet_secs",
        "after",
        "uids",
        "key_file",
        "publish_accession",
        "publish_file_names",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(&format!("{key} = "))),
            "default_toml lacks {key}"
        );
    }
    // An empty file is the defaults too.
    assert_eq!(Config::parse("", "(empty)").unwrap(), Config::default());
}

#[test]
fn load_reads_a_file_and_keeps_unset_keys_at_defaults() {
    let dir = tmp();
    let path = dir.path().join("config.toml");
    std::fs::write(
        &path,
        "[watch]\ndirs = [\"/a\", \"/b\"]\n[ingest]\nmax_attempts = 5\n\
         [mqtt]\nurl = \"mqtts://broker.example:8884\"\nca_file = \"/etc/ca.pem\"\n\
         [files]\nafter = \"move\"\n[privacy]\nuids = \"hashed\"\nkey_file = \"/etc/k\"\n",
    )
    .unwrap();
    let c = Config::load(&path).expect("loads");
    assert_eq!(c.watch.dirs, vec![PathBuf::from("/a"), PathBuf::from("/b")]);
    assert_eq!(c.watch.stable_secs, 2);
    assert_eq!(c.ingest.max_attempts, 5);
    assert_eq!(c.files.after, FilesAfter::Move);
    assert_eq!(c.privacy.uids, UidMode::Hashed);
    assert_eq!(
        c.mqtt.broker().unwrap(),
        Broker {
            tls: true,
            host: "broker.example".into(),
            port: 8884
        }
    );
    assert_eq!(c.ingest_options().max_pixel_bytes, 120_000_000);

    let missing = Config::load(&dir.path().join("nope.toml")).unwrap_err();
    assert!(matches!(missing, ConfigError::Read { .. }), "{missing}");
    assert!(missing.to_string().contains("nope.toml"), "{missing}");
}

#[test]
fn broker_urls() {
    let b = Broker::parse("mqtt://localhost").unwrap();
    assert_eq!((b.tls, b.host.as_str(), b.port), (false, "localhost", 1883));
    assert!(b.is_loopback());
    let b = Broker::parse("mqtts://[::1]/").unwrap();
    assert_eq!((b.tls, b.host.as_str(), b.port), (true, "::1", 8883));
    assert!(b.is_loopback());
    let b = Broker::parse("mqtt://10.1.2.3:1884").unwrap();
    assert_eq!((b.host.as_str(), b.port), ("10.1.2.3", 1884));
    assert!(!b.is_loopback());
    assert!(Broker::parse("mqtt://:1883").is_err());
    assert!(Broker::parse("mqtt://host:0").is_err());
    assert!(Broker::parse("mqtt://host:99999").is_err());
    assert!(Broker::parse("mqtt://host/topic").is_err());
}

#[test]
fn each_validation_error_names_its_key() {
    let cases: &[(&str, &str)] = &[
        ("[mqtt]\nurl = \"http://127.0.0.1\"", "mqtt.url"),
        ("[mqtt]\nurl = \"mqtt://user:pw@127.0.0.1\"", "mqtt.url"),
        ("[mqtt]\nurl = \"mqtt://broker.hospital.org\"", "mqtt.url"),
        (
            "[mqtt]\nurl = \"mqtts://broker.hospital.org\"",
            "mqtt.ca_file",
        ),
        (
            "[mqtt]\nurl = \"mqtts://b\"\nca_file = \"/ca\"\nclient_cert = \"/c\"",
            "mqtt.client_key",
        ),
        (
            "[mqtt]\nclient_cert = \"/c\"\nclient_key = \"/k\"",
            "mqtt.client_cert",
        ),
        ("[mqtt]\npassword_file = \"/p\"", "mqtt.username"),
        ("[mqtt]\npassword = \"hunter2\"", "mqtt.password"),
        ("[mqtt]\ntopic_prefix = \"mammo/#\"", "mqtt.topic_prefix"),
        ("[mqtt]\ntopic_prefix = \"/mammo\"", "mqtt.topic_prefix"),
        ("[mqtt]\nclient_id = \"\"", "mqtt.client_id"),
        ("[privacy]\nuids = \"hashed\"", "privacy.key_file"),
        ("[watch]\ndirs = []", "watch.dirs"),
        ("[watch]\nstable_secs = 0", "watch.stable_secs"),
        ("[watch]\nrescan_secs = 0", "watch.rescan_secs"),
        ("[state]\nretention_days = 0", "state.retention_days"),
        ("[state]\ndir = \"\"", "state.dir"),
        ("[model]\nthreads = 0", "model.threads"),
        ("[model]\npath = \"\"", "model.path"),
        ("[ingest]\npixel_budget = 0", "ingest.pixel_budget"),
        (
            "[ingest]\nfile_timeout_secs = 0",
            "ingest.file_timeout_secs",
        ),
        ("[ingest]\nmax_attempts = 0", "ingest.max_attempts"),
        ("[exam]\nquiet_secs = 0", "exam.quiet_secs"),
        // upper bounds (review #18: this time limit passed and overflowed the clock)
        (
            "[ingest]\nfile_timeout_secs = 9223372036854775807",
            "ingest.file_timeout_secs",
        ),
        ("[watch]\nstable_secs = 86401", "watch.stable_secs"),
        ("[watch]\nrescan_secs = 86401", "watch.rescan_secs"),
        ("[state]\nretention_days = 3651", "state.retention_days"),
        ("[ingest]\nmax_attempts = 101", "ingest.max_attempts"),
        ("[exam]\nquiet_secs = 604801", "exam.quiet_secs"),
        ("[mqtt]\nhealth_secs = 86401", "mqtt.health_secs"),
        ("[mqtt]\nack_timeout_secs = 86401", "mqtt.ack_timeout_secs"),
        ("[mqtt]\nack_timeout_secs = 0", "mqtt.ack_timeout_secs"),
        // Type and vocabulary errors come from parsing and still name the key.
        ("[files]\nafter = \"copy\"", "files.after"),
        ("[privacy]\nuids = \"salted\"", "privacy.uids"),
        ("[ingest]\nmax_attempts = \"three\"", "ingest.max_attempts"),
        ("[ingest]\nmax_attempts = -1", "ingest.max_attempts"),
        ("[watch]\nstable_secs = 1.5", "watch.stable_secs"),
        // the DICOM receiver
        ("[dicom]\nlisten = \"11112\"", "dicom.listen"),
        ("[dicom]\nip_allow = [\"10.1.2.0/33\"]", "dicom.ip_allow"),
        ("[dicom]\nip_allow = [\"pacs.example\"]", "dicom.ip_allow"),
        ("[dicom]\nae_title = \"\"", "dicom.ae_title"),
        (
            "[dicom]\nae_title = \"A_TITLE_OF_17_CHR\"",
            "dicom.ae_title",
        ),
        (
            "[dicom]\ncalling_ae_allow = [\"BAD\\\\AE\"]",
            "dicom.calling_ae_allow",
        ),
        ("[dicom]\nmax_associations = 0", "dicom.max_associations"),
        ("[dicom]\nmax_associations = 65", "dicom.max_associations"),
        ("[dicom]\ntimeout_secs = 0", "dicom.timeout_secs"),
        ("[dicom]\nport = 104", "dicom.port"),
    ];
    for (text, key) in cases {
        assert_names(text, key);
    }
    // The refused password is not echoed back.
    let e = refuse("[mqtt]\npassword = \"hunter2\"");
    assert!(!format!("{e} {e:?}").contains("hunter2"), "{e:?}");
}

#[test]
fn plaintext_to_a_remote_broker_needs_allow_insecure() {
    let text = "[mqtt]\nurl = \"mqtt://broker.hospital.org\"\nallow_insecure = true";
    let c = Config::parse(text, "(test)").expect("allowed when explicitly insecure");
    assert!(!c.mqtt.broker().unwrap().is_loopback());
    let e = refuse("[mqtt]\nurl = \"mqtt://broker.hospital.org\"");
    assert!(e.to_string().contains("allow_insecure"), "{e}");
    // TLS to a remote broker with a CA is fine without it.
    Config::parse(
        "[mqtt]\nurl = \"mqtts://broker.hospital.org\"\nca_file = \"/etc/ca.pem\"",
        "(test)",
    )
    .unwrap();
}

#[test]
fn unknown_keys_and_syntax_errors_are_refused_with_a_line() {
    let e = refuse("[watch]\nstable_sec = 3\n");
    assert_eq!(e.key(), "watch.stable_sec", "{e}");
    assert!(e.to_string().contains("stable_sec"), "{e}");
    assert!(e.to_string().contains("line 2"), "{e}");
    let e = refuse("[mqttt]\nurl = \"mqtt://127.0.0.1\"\n");
    assert_eq!(e.key(), "mqttt", "{e}");
    // A syntax error has no key, only its line.
    let e = refuse("[mqtt]\nurl = mqtt://x\n");
    assert!(matches!(e, ConfigError::Parse { line: Some(2), .. }), "{e}");
    assert!(
        e.to_string()
            .starts_with("config (test) line 2: string values must be quoted"),
        "{e}"
    );
}

/// `systemd/mammo-edge.service` value of `key` (the last assignment wins, as in systemd).
fn unit_value(unit: &str, key: &str) -> Option<String> {
    unit.lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
        .map(|v| v.trim().to_string())
}

/// Review #17: the unit bounds the daemon's memory, tasks and core dumps, and the memory bound
/// leaves room for the largest image ingest accepts: at `ingest.pixel_budget` pixels, the stored
/// samples and the decoded frame (2 bytes each), the grey image and the pipeline's work copy
/// (4 bytes each), plus 200 MiB for the model, SQLite and the runtime (measured idle RSS 30 MiB,
/// real 26 MP files 228 MiB: docs/bench-daemon.md).
#[test]
fn the_systemd_unit_bounds_memory_tasks_and_core_dumps_above_the_pixel_budget() {
    let unit = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/mammo-edge.service"),
    )
    .unwrap();
    let bytes = |v: &str| -> u64 {
        let (num, unit) = v.split_at(v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len()));
        let n: u64 = num.parse().unwrap_or_else(|_| panic!("MemoryMax={v}"));
        n * match unit {
            "" => 1,
            "K" => 1 << 10,
            "M" => 1 << 20,
            "G" => 1 << 30,
            other => panic!("MemoryMax unit {other}"),
        }
    };
    let max = bytes(&unit_value(&unit, "MemoryMax").expect("MemoryMax= set"));
    let need = Config::default().ingest.pixel_budget * 12 + (200 << 20);
    assert!(
        max >= need,
        "MemoryMax {max} B is below the {need} B one image at the pixel budget needs"
    );
    assert!(
        max <= 4 << 30,
        "MemoryMax {max} B bounds nothing on the appliance"
    );
    assert_eq!(unit_value(&unit, "LimitCORE").as_deref(), Some("0"));
    let tasks: u32 = unit_value(&unit, "TasksMax").unwrap().parse().unwrap();
    assert!((16..=256).contains(&tasks), "TasksMax={tasks}");
    let oom: i32 = unit_value(&unit, "OOMScoreAdjust")
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        oom > 0 && oom < 1000,
        "OOMScoreAdjust={oom}: the daemon goes first, not alone"
    );
}
