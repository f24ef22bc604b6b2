//! The daemon's C-STORE receiver with dcmtk as the real peer (issue 14): `storescu` sends
//! phantom exams (plain, JPEG lossless, JPEG-LS) and the real GE / Hologic mammograms
//! (`MAMMO_TEST_DATA`), `echoscu` verifies, wrong AE titles, an address outside the allow-list
//! and one association over the limit are refused with A-ASSOCIATE-RJ, a short state folder
//! answers "out of resources", and a crash after the answer loses nothing.

use std::path::PathBuf;
use std::process::{Command, Output};

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::harness::*;
use crate::util::{encode, tmp, Codec};

const AE: &str = "MAMMO_EDGE";
const MODALITY: &str = "MG_ROOM1";

/// `[dicom]` on a free loopback port, the modality allowed; `more` adds or overrides keys.
fn dicom_section(port: u16, more: &str) -> (String, u16) {
    let mut s = format!(
        "[dicom]\nlisten = \"127.0.0.1:{port}\"\nae_title = \"{AE}\"\n\
         calling_ae_allow = [\"{MODALITY}\"]\n"
    );
    if !more.contains("ip_allow") {
        s.push_str("ip_allow = [\"127.0.0.1\"]\n");
    }
    s.push_str(more);
    (s, port)
}

/// A dcmtk network tool run to its end; a missing tool is a failure (scripts/test-deps.sh
/// installs dcmtk).
fn dcmtk(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} not runnable ({e}); install dcmtk"))
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn echo(port: u16, calling: &str, called: &str) -> Output {
    dcmtk(
        "echoscu",
        &[
            "-aet",
            calling,
            "-aec",
            called,
            "127.0.0.1",
            &port.to_string(),
        ],
    )
}

/// Wait until the receiver answers a C-ECHO from the modality.
fn wait_receiver(port: u16, s: &Setup) {
    wait_for(30, "the DICOM receiver to answer C-ECHO", s, || {
        echo(port, MODALITY, AE).status.success()
    });
}

/// `storescu` from the modality with `propose` (e.g. `-xs` for JPEG lossless) and the files.
fn store(port: u16, propose: &[&str], files: &[PathBuf]) -> Output {
    let port = port.to_string();
    let mut args: Vec<&str> = propose.to_vec();
    args.extend(["-aet", MODALITY, "-aec", AE, "127.0.0.1", &port]);
    let names: Vec<&str> = files.iter().map(|f| f.to_str().unwrap()).collect();
    args.extend(names);
    dcmtk("storescu", &args)
}

fn received_files(s: &Setup) -> Vec<PathBuf> {
    match std::fs::read_dir(mammo_edge::edge::dicom_scp::received_dir(&s.state)) {
        Ok(rd) => rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "dcm"))
            .collect(),
        Err(_) => Vec::new(),
    }
}

#[test]
fn storescu_sends_an_exam_plain_and_compressed_that_is_scored_once_published_and_removed() {
    let broker = Broker::start();
    let (dicom, port) = dicom_section(free_port(), "");
    let s = Setup::new(&broker.url(), &dicom);
    let got = Arc::new(Mutex::new(Vec::new()));
    let sub = Subscriber::start(broker.port, &s.prefix, "sub-scp", got);
    let _d = s.start();
    wait_receiver(port, &s);

    let src = tmp();
    let files = exam(src.path(), 21);
    let names: Vec<(String, String)> = files.iter().map(|f| patient(f)).collect();
    // two views as they are (Explicit VR Little Endian), one JPEG lossless, one JPEG-LS: each
    // sent in the transfer syntax it is stored in, which the receiver must accept as such
    let jpeg = src.path().join("jpegll.dcm");
    encode(Codec::JpegLosslessSv1, &files[2], &jpeg);
    let jls = src.path().join("jls.dcm");
    encode(Codec::JpegLs, &files[3], &jls);
    let t0 = Instant::now();
    for (propose, batch) in [
        (vec![], vec![files[0].clone(), files[1].clone()]),
        (vec!["-xs"], vec![jpeg.clone()]),
        (vec!["-xt"], vec![jls.clone()]),
    ] {
        let out = store(port, &propose, &batch);
        assert!(out.status.success(), "storescu {propose:?}: {}", text(&out));
        assert!(!text(&out).contains("Store Failed"), "{}", text(&out));
    }
    sub.wait(60, "4 images and 1 exam", |s| {
        s.on("image").len() >= 4 && !s.on("exam").is_empty()
    });
    eprintln!(
        "4 views stored to complete exam published: {:?}",
        t0.elapsed()
    );
    let images = sub.on("image");
    let exams = sub.on("exam");
    assert_eq!(images.len(), 4, "{images:?}");
    let vi = schema("image");
    let mut views: Vec<String> = images
        .iter()
        .map(|m| {
            assert_valid(&vi, m);
            format!(
                "{}-{}",
                m["laterality"].as_str().unwrap(),
                m["view"].as_str().unwrap()
            )
        })
        .collect();
    views.sort();
    assert_eq!(views, ["L-CC", "L-MLO", "R-CC", "R-MLO"]);
    assert_eq!(exams[0]["complete"], true, "{:?}", exams[0]);
    assert_eq!(exams[0]["images"], 4);
    // scored objects are removed from the receiver's folder; their ledger rows are done
    wait_for(10, "received objects removed", &s, || {
        received_files(&s).is_empty()
    });
    assert_eq!(
        s.count("SELECT COUNT(*) FROM ledger WHERE status = 'done' AND reason IS NULL"),
        4
    );

    // the same four instances again (a modality retrying): success, and scored once
    let out = store(port, &[], &files);
    assert!(out.status.success(), "{}", text(&out));
    wait_for(30, "the second copies finished as duplicates", &s, || {
        s.count("SELECT COUNT(*) FROM ledger WHERE reason = 'duplicate_sop'") == 4
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        sub.on("image").len(),
        4,
        "a resent instance was published again"
    );
    assert_eq!(s.count("SELECT COUNT(*) FROM results"), 4);

    // no patient name or ID in the log
    let log = s.log_text();
    for (name, id) in &names {
        assert!(!log.contains(name.as_str()), "patient name in the log");
        assert!(!log.contains(id.as_str()), "patient ID in the log");
    }
    assert!(log.contains("dicom: association from MG_ROOM1 at 127.0.0.1 accepted"));
}

#[test]
fn real_ge_and_hologic_mammograms_sent_by_storescu_are_scored() {
    let Some(data) = crate::util::data_dir() else {
        return;
    };
    let real = data.join("real-mammo");
    let ge: Vec<PathBuf> = [
        "ge_senographe_L_CC_jpegll.dcm",
        "ge_senographe_R_CC_jpegll.dcm",
    ]
    .iter()
    .map(|n| real.join(n))
    .collect();
    let hologic: Vec<PathBuf> = [
        "hologic_selenia_L_CC_j2k.dcm",
        "hologic_selenia_R_MLO_j2k.dcm",
    ]
    .iter()
    .map(|n| real.join(n))
    .collect();
    let broker = Broker::start();
    let (dicom, port) = dicom_section(free_port(), "");
    let s = Setup::new(&broker.url(), &dicom);
    let got = Arc::new(Mutex::new(Vec::new()));
    let sub = Subscriber::start(broker.port, &s.prefix, "sub-scp-real", got);
    let _d = s.start();
    wait_receiver(port, &s);
    // JPEG lossless (GE) and JPEG 2000 lossless (Hologic), as stored
    for (propose, files) in [("-xs", &ge), ("-xv", &hologic)] {
        let out = store(port, &[propose], files);
        assert!(out.status.success(), "storescu {propose}: {}", text(&out));
        assert!(!text(&out).contains("Store Failed"), "{}", text(&out));
    }
    sub.wait(120, "4 images", |s| s.on("image").len() >= 4);
    let mut seen: Vec<(String, String, String)> = sub
        .on("image")
        .iter()
        .map(|m| {
            (
                m["vendor"].as_str().unwrap_or("").to_string(),
                m["laterality"].as_str().unwrap().to_string(),
                m["view"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    seen.sort();
    let expected: Vec<(String, String, String)> = [
        ("ge", "L", "CC"),
        ("ge", "R", "CC"),
        ("hologic", "L", "CC"),
        ("hologic", "R", "MLO"),
    ]
    .iter()
    .map(|(v, l, w)| (v.to_string(), l.to_string(), w.to_string()))
    .collect();
    assert_eq!(seen, expected);
}

#[test]
fn associations_outside_the_allow_lists_or_over_the_limit_are_rejected() {
    let broker = Broker::start();
    let (dicom, port) = dicom_section(free_port(), "max_associations = 1\n");
    let s = Setup::new(&broker.url(), &dicom);
    let _d = s.start();
    wait_receiver(port, &s);

    let wrong_calling = echo(port, "INTRUDER", AE);
    assert!(!wrong_calling.status.success());
    assert!(
        text(&wrong_calling).contains("Calling AE Title Not Recognized"),
        "{}",
        text(&wrong_calling)
    );
    let wrong_called = echo(port, MODALITY, "OTHER_AE");
    assert!(!wrong_called.status.success());
    assert!(
        text(&wrong_called).contains("Called AE Title Not Recognized"),
        "{}",
        text(&wrong_called)
    );
    // one association open (a peer that connected and says nothing): the next is refused,
    // transiently, with the reason; once it is gone the modality is served again
    let held = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let over = echo(port, MODALITY, AE);
    assert!(!over.status.success());
    let t = text(&over);
    assert!(
        t.contains("Rejected Transient") && t.contains("Local Limit Exceeded"),
        "{t}"
    );
    drop(held);
    wait_receiver(port, &s);

    // an address outside ip_allow: rejected before any negotiation
    let broker2 = Broker::start();
    let (dicom2, port2) = dicom_section(free_port(), "ip_allow = [\"192.0.2.0/24\"]\n");
    let s2 = Setup::new(&broker2.url(), &dicom2);
    let _d2 = s2.start();
    wait_for(30, "the second daemon to listen", &s2, || {
        s2.log_text().contains("DICOM receiver on")
    });
    let outside = echo(port2, MODALITY, AE);
    assert!(!outside.status.success());
    assert!(
        text(&outside).contains("Rejected Permanent"),
        "{}",
        text(&outside)
    );
    assert!(s2
        .log_text()
        .contains("refused: address not in dicom.ip_allow"));

    // a dual-stack listener on [::] sees an IPv4 modality as ::ffff:127.0.0.1, which the IPv4
    // allow-list still admits (the address is compared in its canonical form)
    let broker3 = Broker::start();
    let port3 = free_port();
    let dicom3 = format!(
        "[dicom]\nlisten = \"[::]:{port3}\"\nae_title = \"{AE}\"\n\
         calling_ae_allow = [\"{MODALITY}\"]\nip_allow = [\"127.0.0.1\"]\n"
    );
    let s3 = Setup::new(&broker3.url(), &dicom3);
    let _d3 = s3.start();
    wait_receiver(port3, &s3);
    let mapped = echo(port3, MODALITY, AE);
    assert!(mapped.status.success(), "{}", text(&mapped));
    assert!(!s3.log_text().contains("refused"), "{}", s3.log_text());
}

#[test]
fn a_state_folder_short_of_space_answers_out_of_resources_and_stores_nothing() {
    let broker = Broker::start();
    let (dicom, port) = dicom_section(free_port(), "");
    let s = Setup::new(&broker.url(), &dicom);
    // more free space asked for than any test machine has
    let cfg = std::fs::read_to_string(&s.config).unwrap();
    std::fs::write(
        &s.config,
        cfg.replace("[state]\n", "[state]\nmin_free_mb = 1000000000\n"),
    )
    .unwrap();
    let _d = s.start();
    wait_receiver(port, &s);
    let src = tmp();
    let files = exam(src.path(), 23);
    let out = store(port, &["-v"], &files[..1]);
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(
        t.contains("Received Store Response (Refused: OutOfResources)"),
        "{t}"
    );
    assert!(received_files(&s).is_empty());
    assert_eq!(s.count("SELECT COUNT(*) FROM ledger"), 0);
    assert!(s.log_text().contains("status 0xA700"));
}

#[test]
fn objects_acknowledged_before_a_crash_are_scored_after_the_restart_once() {
    let broker = Broker::start();
    let (dicom, port) = dicom_section(free_port(), "");
    let s = Setup::new(&broker.url(), &dicom);
    let got = Arc::new(Mutex::new(Vec::new()));
    let sub = Subscriber::start(broker.port, &s.prefix, "sub-scp-crash", got);
    let mut d = s.start();
    wait_receiver(port, &s);
    let src = tmp();
    let files = exam(src.path(), 25);
    let out = store(port, &[], &files);
    assert!(out.status.success(), "{}", text(&out));
    // killed at once: some or none of the four may be scored; every one was acknowledged
    d.kill9();
    let acknowledged = received_files(&s).len() as i64 + s.count("SELECT COUNT(*) FROM results");
    assert!(
        acknowledged >= 4,
        "an acknowledged object is neither kept nor scored"
    );
    let _d = s.start();
    sub.wait(60, "4 distinct images", |s| {
        let mut ids: Vec<String> = s
            .on("image")
            .iter()
            .map(|m| m["result_id"].as_str().unwrap().to_string())
            .collect();
        ids.sort();
        ids.dedup();
        ids.len() >= 4
    });
    assert_eq!(s.count("SELECT COUNT(*) FROM results"), 4);
    wait_for(10, "received objects removed", &s, || {
        received_files(&s).is_empty()
    });
}

#[test]
fn demo_dicom_sends_its_exam_by_c_store_and_every_message_arrives() {
    let broker = Broker::start();
    let got = Arc::new(Mutex::new(Vec::new()));
    let sub = Subscriber::start(broker.port, "mammo/demo", "sub-demo-dicom", got);
    let out = Command::new(BIN)
        .args(["demo", "--dicom", "--json", "--broker"])
        .arg(broker.url())
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("sending 4 images by C-STORE to 127.0.0.1:"),
        "{err}"
    );
    assert!(
        err.contains("dicom: association from MAMMO_DEMO at 127.0.0.1 accepted"),
        "{err}"
    );
    // the exam's Mammography CAD SR came back (to the demo's SR folder)
    assert!(err.contains("1 Mammography CAD SR written"), "{err}");
    sub.wait(30, "the demo's 4 images and its exam", |s| {
        s.on("image").len() >= 4 && !s.on("exam").is_empty()
    });
    let exam = &sub.on("exam")[0];
    assert_eq!(exam["complete"], true);
    // the images came through the receiver: their file names are the received names
    for m in sub.on("image") {
        let f = m["file"].as_str().unwrap();
        assert!(f.len() == 36 && f.ends_with(".dcm"), "{f}");
    }
}

/// dcmtk's storescp on a free port writing into `dir`; killed on drop.
struct StoreScp(std::process::Child);

impl StoreScp {
    fn start(dir: &std::path::Path, port: u16) -> StoreScp {
        StoreScp::start_with(dir, port, &[])
    }

    /// With more options (`+tls key cert +cf ca`: DICOM TLS requiring a client certificate).
    fn start_with(dir: &std::path::Path, port: u16, more: &[&std::ffi::OsStr]) -> StoreScp {
        let child = Command::new("storescp")
            .args(["-aet", "PACS", "+xa", "+B"])
            .args(more)
            .arg("-od")
            .arg(dir)
            .arg(port.to_string())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("storescp (dcmtk) not runnable");
        wait_port(port, true);
        StoreScp(child)
    }
}

impl Drop for StoreScp {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn our_scu_stores_plain_and_compressed_files_at_dcmtk_storescp_unchanged() {
    let src = tmp();
    let files = exam(src.path(), 27);
    let jls = src.path().join("jls.dcm");
    encode(Codec::JpegLs, &files[1], &jls);
    let out_dir = tmp();
    let port = free_port();
    let _scp = StoreScp::start(out_dir.path(), port);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let peer = mammo_edge::edge::dicom_scu::Peer {
        address: format!("127.0.0.1:{port}"),
        calling_ae: "MAMMO_EDGE".into(),
        called_ae: "PACS".into(),
        timeout: Duration::from_secs(30),
        tls: None,
    };
    rt.block_on(mammo_edge::edge::dicom_scu::echo(&peer))
        .unwrap();
    let sent = vec![files[0].clone(), jls.clone()];
    let statuses = rt
        .block_on(mammo_edge::edge::dicom_scu::store_files(&peer, &sent))
        .unwrap();
    assert_eq!(statuses, [0, 0]);
    // storescp names files <modality>.<SOPInstanceUID>; the data sets arrive byte for byte
    let dataset = |p: &std::path::Path| {
        let o = dicom_object::open_file(p).unwrap();
        let ts = o
            .meta()
            .transfer_syntax()
            .trim_end_matches('\0')
            .to_string();
        let uid = o
            .meta()
            .media_storage_sop_instance_uid()
            .trim_end_matches('\0')
            .to_string();
        let mut bytes = Vec::new();
        o.write_dataset(&mut bytes).unwrap();
        (uid, ts, bytes)
    };
    let mut stored: Vec<_> = std::fs::read_dir(out_dir.path())
        .unwrap()
        .flatten()
        .map(|e| dataset(&e.path()))
        .collect();
    let mut expected: Vec<_> = sent.iter().map(|p| dataset(p)).collect();
    stored.sort();
    expected.sort();
    assert_eq!(stored.len(), 2);
    assert_eq!(stored, expected);
    assert!(expected
        .iter()
        .any(|(_, ts, _)| ts == "1.2.840.10008.1.2.4.80"));
    // an unreachable peer is an association error naming the address
    let gone = mammo_edge::edge::dicom_scu::Peer {
        address: format!("127.0.0.1:{}", free_port()),
        ..peer.clone()
    };
    let e = rt
        .block_on(mammo_edge::edge::dicom_scu::store_files(&gone, &sent))
        .unwrap_err();
    assert!(
        e.to_string().starts_with("association with 127.0.0.1:"),
        "{e}"
    );
}

/// The `.dcm` files of a folder (storescp's output, the SR folder).
fn dcm_files(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    v.retain(|p| {
        p.is_file()
            && !p
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
    });
    v.sort();
    v
}

#[test]
fn the_exam_sr_reaches_storescp_through_a_pacs_outage_and_a_crash_and_check_echoes_it() {
    let broker = Broker::start();
    let pacs_port = free_port();
    let sr_dir = tmp();
    let pacs_dir = tmp();
    let (mut dicom, port) = dicom_section(free_port(), "");
    dicom.push_str(&format!(
        "[sr]\nfolder = {:?}\nretry_max_secs = 2\n\
         [[sr.destination]]\nae_title = \"PACS\"\naddress = \"127.0.0.1:{pacs_port}\"\n\
         timeout_secs = 5\n",
        sr_dir.path()
    ));
    let s = Setup::new(&broker.url(), &dicom);
    let pacs_key = format!("PACS@127.0.0.1:{pacs_port}");

    // `check` names the destination that does not answer C-ECHO (exit 7)
    let check = s.state_tool("check", &[]);
    assert_eq!(check.status.code(), Some(7), "{}", text(&check));
    assert!(
        text(&check).contains(&format!("sr.destination {pacs_key}")),
        "{}",
        text(&check)
    );

    let got = Arc::new(Mutex::new(Vec::new()));
    let sub = Subscriber::start(broker.port, &s.prefix, "sub-sr", got);
    let mut d = s.start();
    wait_receiver(port, &s);
    let src = tmp();
    let files = exam(src.path(), 31);
    let (name, id) = patient(&files[0]);
    let sops: Vec<String> = files
        .iter()
        .map(|f| {
            let o = dicom_object::open_file(f).unwrap();
            o.meta()
                .media_storage_sop_instance_uid()
                .trim_end_matches('\0')
                .to_string()
        })
        .collect();
    let out = store(port, &[], &files);
    assert!(out.status.success(), "{}", text(&out));
    sub.wait(60, "the exam", |s| !s.on("exam").is_empty());
    // the PACS is down: the folder copy is written, the PACS copy waits in the state database
    wait_for(30, "the SR in the folder", &s, || {
        dcm_files(sr_dir.path()).len() == 1
    });
    wait_for(30, "a failed try at the PACS", &s, || {
        s.log_text()
            .contains(&format!("not delivered to {pacs_key} (try 1)"))
    });
    assert_eq!(
        s.count("SELECT COUNT(*) FROM sr_outbox WHERE delivered_at IS NULL"),
        1
    );
    // a crash during the outage, then the PACS comes back and the daemon restarts
    d.kill9();
    let _pacs = StoreScp::start(pacs_dir.path(), pacs_port);
    let _d = s.start();
    wait_for(60, "the SR at the PACS", &s, || {
        dcm_files(pacs_dir.path()).len() == 1
    });
    wait_for(10, "the SR row delivered", &s, || {
        s.count("SELECT COUNT(*) FROM sr_outbox WHERE delivered_at IS NOT NULL AND object IS NULL")
            == 2
    });
    let at_pacs = &dcm_files(pacs_dir.path())[0];
    let in_folder = &dcm_files(sr_dir.path())[0];
    let obj = dicom_object::open_file(at_pacs).unwrap();
    let get = |t| element_text(&obj, t);
    use dicom_dictionary_std::tags;
    assert_eq!(
        get(tags::SOP_CLASS_UID),
        mammo_edge::edge::sr::MAMMOGRAPHY_CAD_SR
    );
    let source = dicom_object::open_file(&files[0]).unwrap();
    assert_eq!(
        get(tags::STUDY_INSTANCE_UID),
        element_text(&source, tags::STUDY_INSTANCE_UID)
    );
    assert_eq!(get(tags::PATIENT_NAME), name);
    assert_eq!(get(tags::PATIENT_ID), id);
    assert_eq!(get(tags::COMPLETION_FLAG), "COMPLETE");
    // the same object in the folder and at the PACS (one instance, sent twice if need be)
    let folder_obj = dicom_object::open_file(in_folder).unwrap();
    assert_eq!(
        folder_obj
            .element(tags::SOP_INSTANCE_UID)
            .unwrap()
            .to_str()
            .unwrap(),
        obj.element(tags::SOP_INSTANCE_UID)
            .unwrap()
            .to_str()
            .unwrap()
    );
    // a valid Mammography CAD SR whose tree references the four scored images
    crate::sr::dciodvfy_clean(at_pacs);
    let tree = crate::sr::dsrdump(at_pacs);
    for sop in &sops {
        assert!(tree.contains(sop.as_str()), "{sop} not in the SR:\n{tree}");
    }
    let exam_msg = &sub.on("exam")[0];
    let p = crate::sr::pct(exam_msg["cancer_probability"].as_f64().unwrap());
    assert!(
        tree.contains(&format!(
            "\"Probability of cancer\")=\"{p}\" (%,UCUM,\"Percent\")"
        )),
        "exam probability {p} not in the SR:\n{tree}"
    );
    // the log names neither the patient nor the file; the SR only by its UID
    let log = s.log_text();
    assert!(!log.contains(name.as_str()) && !log.contains(id.as_str()));
    assert!(
        log.contains(&format!("delivered to {pacs_key} at try")),
        "{log}"
    );

    // check now echoes the destination
    let check = s.state_tool("check", &[]);
    assert!(check.status.success(), "{}", text(&check));
    assert!(text(&check).contains(&format!("ok: SR destination {pacs_key} answers C-ECHO")));
}

/// `openssl x509 -noout -fingerprint -sha256` of a certificate, as an operator copies it into
/// `dicom.tls_client_allow` (`AB:CD:…`).
fn openssl_fingerprint(cert: &std::path::Path) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(cert)
        .output()
        .expect("openssl CLI");
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim().rsplit('=').next().unwrap().to_string()
}

#[test]
fn dicom_tls_admits_only_an_allowed_client_certificate_and_the_sr_goes_to_a_tls_pacs() {
    let pki = Pki::generate();
    let broker = Broker::start();
    // dcmtk's storescp as a TLS PACS that requires a client certificate of the test CA
    let pacs_port = free_port();
    let pacs_dir = tmp();
    let tls_args = |key: &std::path::Path, cert: &std::path::Path| -> Vec<std::ffi::OsString> {
        vec![
            "+tls".into(),
            key.into(),
            cert.into(),
            "+cf".into(),
            pki.ca.clone().into(),
        ]
    };
    let server_tls = tls_args(&pki.server_key, &pki.server_cert);
    let refs: Vec<&std::ffi::OsStr> = server_tls.iter().map(|a| a.as_os_str()).collect();
    let _pacs = StoreScp::start_with(pacs_dir.path(), pacs_port, &refs);
    let fp = openssl_fingerprint(&pki.client_cert);
    assert_eq!(fp.len(), 95, "{fp}");
    let (mut dicom, port) = dicom_section(
        free_port(),
        &format!(
            "tls_cert = {:?}\ntls_key = {:?}\ntls_client_ca = {:?}\ntls_client_allow = [{fp:?}]\n",
            pki.server_cert, pki.server_key, pki.ca
        ),
    );
    dicom.push_str(&format!(
        "[[sr.destination]]\nae_title = \"PACS\"\naddress = \"127.0.0.1:{pacs_port}\"\n\
         tls_ca = {:?}\ntls_cert = {:?}\ntls_key = {:?}\n",
        pki.ca, pki.client_cert, pki.client_key
    ));
    let s = Setup::new(&broker.url(), &dicom);
    let pacs_key = format!("PACS@127.0.0.1:{pacs_port}");
    // check: the receiver's TLS files load and the PACS answers C-ECHO over TLS
    let check = s.state_tool("check", &[]);
    assert!(check.status.success(), "{}", text(&check));
    assert!(text(&check).contains(&format!("ok: SR destination {pacs_key} answers C-ECHO")));

    let got = Arc::new(Mutex::new(Vec::new()));
    let sub = Subscriber::start(broker.port, &s.prefix, "sub-tls", got);
    let _d = s.start();
    let with_tls = |program: &str, key: &std::path::Path, cert: &std::path::Path, rest: &[&str]| {
        let mut c = Command::new(program);
        c.args(tls_args(key, cert));
        c.args(["-aet", MODALITY, "-aec", AE, "127.0.0.1", &port.to_string()]);
        c.args(rest);
        c.output().unwrap()
    };
    wait_for(30, "a C-ECHO over TLS from the allowed client", &s, || {
        with_tls("echoscu", &pki.client_key, &pki.client_cert, &[])
            .status
            .success()
    });
    // plain DICOM on the TLS port, and a client certificate of the same CA not in the
    // allow-list, are refused
    assert!(!echo(port, MODALITY, AE).status.success());
    let other = with_tls("echoscu", &pki.client2_key, &pki.client2_cert, &[]);
    assert!(!other.status.success(), "{}", text(&other));
    // the exam over TLS: scored, published, and its SR stored at the TLS PACS
    let src = tmp();
    let files = exam(src.path(), 33);
    let names: Vec<&str> = files.iter().map(|f| f.to_str().unwrap()).collect();
    let out = with_tls("storescu", &pki.client_key, &pki.client_cert, &names);
    assert!(out.status.success(), "{}", text(&out));
    sub.wait(60, "4 images and the exam", |s| {
        s.on("image").len() >= 4 && !s.on("exam").is_empty()
    });
    wait_for(30, "the SR at the TLS PACS", &s, || {
        dcm_files(pacs_dir.path()).len() == 1
    });
    // storescp writes the file before it answers: read it once the row is marked delivered
    wait_for(10, "the SR marked delivered", &s, || {
        s.log_text().contains(&format!("delivered to {pacs_key}"))
    });
    crate::sr::dciodvfy_clean(&dcm_files(pacs_dir.path())[0]);
    let log = s.log_text();
    let fp2 = openssl_fingerprint(&pki.client2_cert)
        .replace(':', "")
        .to_ascii_lowercase();
    assert!(
        log.contains(&format!(
            "TLS client certificate sha256 {fp2} refused: not in the allow-list"
        )),
        "{log}"
    );
    assert!(log.contains("TLS handshake failed"), "{log}");
}
