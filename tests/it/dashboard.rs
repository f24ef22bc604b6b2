//! `mammo-edge dashboard` end to end: real daemons publish through real mosquitto brokers (one
//! site, and a fleet: two sites bridged by mosquitto's own bridge to a central broker), the
//! dashboard binary subscribes and serves its page; the page is read by Debian's Chromium,
//! headless, driven over WebDriver (chromedriver), and the JSON API over HTTP.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::ClientBuilder;
use serde_json::{json, Value};

use crate::daemon::harness::*;
use crate::util::tmp;

/// The dashboard binary on a free loopback port with its own SQLite file. Killed on drop.
struct Dashboard {
    port: u16,
    child: Child,
    log: PathBuf,
    /// Everything but `--listen` (kept for a restart on the same database and client id).
    args: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Dashboard {
    fn start(brokers: &[String], topics: &str, extra: &[&str]) -> Dashboard {
        let dir = tmp();
        let port = free_port();
        let log = dir.path().join("dashboard.log");
        let mut args = vec!["dashboard".to_string()];
        for b in brokers {
            args.extend(["--broker".to_string(), b.clone()]);
        }
        args.extend(["--topics".to_string(), topics.to_string()]);
        if !extra.contains(&"--db") {
            args.extend([
                "--db".to_string(),
                format!("sqlite:{}", dir.path().join("db.sqlite").display()),
            ]);
        }
        args.extend(["--client-id".to_string(), format!("dash-{port}")]);
        args.extend(extra.iter().map(|a| a.to_string()));
        let child = Self::spawn(&args, port, &log);
        Dashboard {
            port,
            child,
            log,
            args,
            _dir: dir,
        }
    }

    fn spawn(args: &[String], port: u16, log: &Path) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = Command::new(BIN)
            .args(args)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        wait_port(port, true);
        child
    }

    /// SIGKILL: no clean disconnect, the broker keeps the persistent session.
    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Start again on the same database, client id and port.
    fn restart(&mut self) {
        self.child = Self::spawn(&self.args, self.port, &self.log);
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// GET a JSON API route (200 expected).
    fn get(&self, path: &str) -> Value {
        let mut r = ureq::get(&self.url(path)).call().unwrap_or_else(|e| {
            panic!("GET {path}: {e}\n{}", self.log_text());
        });
        serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap()
    }

    /// GET a route, `None` when nothing listens.
    fn get_or_refused(&self, path: &str) -> Option<Value> {
        match ureq::get(&self.url(path)).call() {
            Ok(mut r) => {
                Some(serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap())
            }
            Err(ureq::Error::Io(_)) | Err(ureq::Error::ConnectionFailed) => None,
            Err(e) => panic!("GET {path}: {e}"),
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Poll `path` until `pred` holds (at most `secs`); returns the last answer.
    fn wait(&self, secs: u64, path: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let t0 = Instant::now();
        loop {
            let v = self.get(path);
            if pred(&v) {
                return v;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(secs),
                "{what}: {path} = {v:#}\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Dashboard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// chromedriver on a free port (Debian's `chromium-driver`, driving `/usr/bin/chromium`).
struct ChromeDriver {
    port: u16,
    child: Child,
}

impl ChromeDriver {
    fn start() -> ChromeDriver {
        for exe in ["/usr/bin/chromedriver", "/usr/bin/chromium"] {
            assert!(
                Path::new(exe).exists(),
                "{exe} is missing: the dashboard's browser test needs Debian's chromium and \
                 chromium-driver (scripts/test-deps.sh installs them)"
            );
        }
        let port = free_port();
        let child = Command::new("/usr/bin/chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_port(port, true);
        ChromeDriver { port, child }
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A retained drift message and the alert it raises, for one source of `prefix`, checked
/// against docs/schemas/drift.json and alert.json before they are published.
fn drift_alert(model_sha: &str) -> (Value, Value) {
    let model = json!({
        "name": "mammo-mtl-demo", "version": "test", "sha256": model_sha,
        "intended_use": "research only, not for clinical use"
    });
    let source = json!({
        "id": "acme-detector-9", "manufacturer": "ACME", "manufacturer_model_name": "Detector 9",
        "vendor": "other"
    });
    let common = json!({
        "produced_at": "2026-12-06T10:00:00Z", "model": model, "source": source,
        "reference": {"source": "all", "images": 235},
        "window": {"images": 120, "size": 200, "min_images": 100, "judged": true},
        "psi": {"cancer_probability": 0.612, "density": 0.034, "percent_density": 0.118},
        "ood_rate": {"window": 0.17, "reference": 0.0125},
        "thresholds": {"psi": 0.25, "ood_rate": 0.10},
        "reasons": ["PSI of cancer_probability 0.612 > 0.25", "OOD rate 0.170 > 0.100"]
    });
    let mut drift = common.clone();
    let d = drift.as_object_mut().unwrap();
    d.insert("schema".into(), "mammo-edge.drift/1".into());
    d.insert(
        "result_id".into(),
        "6f1c1c8e-2a53-5b7e-9a1d-0c3f6a1b2c3d".into(),
    );
    d.insert("alert".into(), true.into());
    d.insert(
        "distributions".into(),
        json!({
            "cancer_probability": {"window": [0.1, 0.1, 0.2, 0.3, 0.3], "reference": [0.2, 0.2, 0.2, 0.2, 0.2]},
            "density": {"window": [0.25, 0.25, 0.25, 0.25], "reference": [0.2, 0.3, 0.3, 0.2]},
            "percent_density": {"window": [0.2, 0.2, 0.2, 0.2, 0.2], "reference": [0.2, 0.2, 0.2, 0.2, 0.2]}
        }),
    );
    let mut alert = common;
    let a = alert.as_object_mut().unwrap();
    a.insert("schema".into(), "mammo-edge.alert/1".into());
    a.insert(
        "result_id".into(),
        "0b9e4a59-8c2f-5d41-8e6a-1f2d3c4b5a69".into(),
    );
    a.insert("kind".into(), "drift".into());
    a.insert("state".into(), "raised".into());
    assert_valid(&schema("drift"), &drift);
    assert_valid(&schema("alert"), &alert);
    (drift, alert)
}

/// Publish with QoS 1 through a real client and wait for the PUBACKs.
fn publish(port: u16, msgs: &[(String, Value, bool)]) {
    let mut o = rumqttc::MqttOptions::new(format!("pub-{}", free_port()), "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(5));
    let (client, mut conn) = rumqttc::Client::new(o, 16);
    for (topic, payload, retain) in msgs {
        client
            .publish(
                topic.clone(),
                rumqttc::QoS::AtLeastOnce,
                *retain,
                payload.to_string(),
            )
            .unwrap();
    }
    let mut acked = 0;
    for ev in conn.iter() {
        if let Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) = ev {
            acked += 1;
            if acked == msgs.len() {
                break;
            }
        }
        ev.unwrap();
    }
    client.disconnect().ok();
}

fn drop_exam(s: &Setup, seed: u64) {
    let src = tmp();
    for f in exam(src.path(), seed) {
        drop_in(&s.watch, &f, f.file_name().unwrap().to_str().unwrap());
    }
}

/// The rendered text of the first element matching `selector` and of its first descendant
/// matching each of `parts` (empty when absent), read in one script so that the page
/// re-rendering on a server-sent event cannot leave a stale element between two reads; polled
/// until the element exists or `within` has passed (`None`).
async fn texts(
    c: &fantoccini::Client,
    selector: &str,
    parts: &[&str],
    within: Duration,
) -> Option<Vec<String>> {
    const READ: &str = "const [sel, parts] = arguments;
        const t = n => (n.innerText === undefined ? n.textContent : n.innerText).trim();
        const e = document.querySelector(sel);
        if (!e) return null;
        return [t(e)].concat(parts.map(p => {
            const q = e.querySelector(p); return q ? t(q) : ''; }));";
    let end = Instant::now() + within;
    loop {
        let v = c
            .execute(READ, vec![json!(selector), json!(parts)])
            .await
            .unwrap();
        if let Some(a) = v.as_array() {
            return Some(
                a.iter()
                    .map(|t| t.as_str().unwrap_or_default().to_string())
                    .collect(),
            );
        }
        if Instant::now() > end {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn screenshot_path(name: &str) -> PathBuf {
    let dir = std::env::var_os("MAMMO_SCREENSHOT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[test]
fn the_page_in_chromium_shows_the_exam_card_an_appliance_going_offline_and_a_drift_alert() {
    let mut broker = Broker::start();
    let s = Setup::new(&broker.url(), "");
    let dash = Dashboard::start(&[broker.url()], "mammo/test/#", &[]);
    let mut d = s.start();
    drop_exam(&s, 21);
    // the API first: the exam as the daemon published it
    let exams = dash.wait(90, "/api/exams", "one complete exam", |v| {
        v.as_array()
            .is_some_and(|a| a.len() == 1 && a[0]["complete"] == true)
    });
    let x = &exams[0];
    assert_eq!(x["device"], s.prefix.as_str());
    assert_eq!(x["uid_mode"], "plain");
    assert_eq!(x["breasts"].as_array().unwrap().len(), 2);
    assert!(["priority", "review", "routine"].contains(&x["triage"].as_str().unwrap()));
    let model_sha = x["model"]["sha256"].as_str().unwrap().to_string();
    dash.wait(30, "/api/devices", "the appliance online", |v| {
        v[0]["device"] == s.prefix.as_str() && v[0]["online"] == true
    });

    let driver = ChromeDriver::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let shot = screenshot_path("dashboard.png");
    rt.block_on(async {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1400,1000"]
            }),
        );
        let c = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", driver.port))
            .await
            .expect("chromedriver session");
        c.goto(&dash.url("/")).await.unwrap();
        let wait = Duration::from_secs(30);
        // the exam card, with what the API says of it
        let card = texts(
            &c,
            &format!(
                ".exam-card[data-result-id=\"{}\"]",
                x["result_id"].as_str().unwrap()
            ),
            &[".density", ".exam-score"],
            wait,
        )
        .await
        .expect("the exam card");
        let text = &card[0];
        assert!(
            text.to_lowercase().contains(x["triage"].as_str().unwrap()),
            "{text}"
        );
        assert_eq!(card[1], x["density"].as_str().unwrap());
        assert_eq!(
            card[2],
            format!("{:.1} %", 100.0 * x["cancer_probability"].as_f64().unwrap())
        );
        assert!(text.contains("research only"), "{text}");
        let device = format!(".device[data-device=\"{}\"]", s.prefix);
        texts(&c, &format!("{device} .state.online"), &[], wait)
            .await
            .expect("the appliance shown online");

        // the appliance dies: the broker publishes its retained `offline` LWT
        d.kill9();
        texts(
            &c,
            &format!("{device} .state.offline"),
            &[],
            Duration::from_secs(60),
        )
        .await
        .expect("the appliance shown offline");

        // a drift alert of one source of this appliance
        let (drift, alert) = drift_alert(&model_sha);
        // (rumqttc's blocking client runs its own runtime: on a thread of its own)
        let msgs = [
            (format!("{}/drift/acme-detector-9", s.prefix), drift, true),
            (format!("{}/alert", s.prefix), alert, false),
        ];
        let port = broker.port;
        std::thread::spawn(move || publish(port, &msgs))
            .join()
            .unwrap();
        let text = texts(
            &c,
            "#alerts .alert.raised[data-source=\"acme-detector-9\"]",
            &[],
            wait,
        )
        .await
        .expect("the drift alert")
        .remove(0);
        assert!(text.contains("ACME Detector 9"), "{text}");
        assert!(text.contains("PSI of cancer_probability 0.612"), "{text}");
        let row = texts(
            &c,
            &format!("{device} .drift-row[data-source=\"acme-detector-9\"]"),
            &[],
            wait,
        )
        .await
        .expect("the drift row of the appliance")
        .remove(0);
        assert!(row.contains("0.612") && row.contains("ALERT"), "{row}");
        // charts: one exam in the density chart
        let svg = texts(&c, "#density-chart svg", &[], wait)
            .await
            .expect("the density chart")
            .remove(0);
        assert!(svg.contains('A') && svg.contains('D'), "{svg}");
        // the broker goes away: the page says its appliances' states are the last known
        broker.down();
        let banner = texts(
            &c,
            &format!(".broker-down[data-url=\"{}\"]", broker.url()),
            &[],
            wait,
        )
        .await
        .expect("the broker shown disconnected")
        .remove(0);
        assert!(banner.contains("last known"), "{banner}");
        let png = c.screenshot().await.unwrap();
        assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000);
        std::fs::write(&shot, &png).unwrap();
        c.close().await.unwrap();
    });
    eprintln!("screenshot: {}", shot.display());
    let dev = dash.get("/api/devices");
    assert_eq!(dev[0]["online"], false);
    assert_eq!(dev[0]["drift"][0]["alert"], true);
    assert_eq!(dash.get("/api/alerts")[0]["state"], "raised");
}

#[test]
fn a_token_is_required_beyond_loopback_and_checked_on_every_route() {
    let broker = Broker::start();
    // not loopback and no token: refused at start
    let out = Command::new(BIN)
        .args([
            "dashboard",
            "--broker",
            &broker.url(),
            "--listen",
            "0.0.0.0:0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no --token-file"), "{err}");
    let dir = tmp();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "0123456789abcdef-token\n").unwrap();
    let dash = Dashboard::start(
        &[broker.url()],
        "mammo/#",
        &["--token-file", token_file.to_str().unwrap()],
    );
    for path in ["/", "/api/exams", "/api/devices", "/api/events"] {
        let r = ureq::get(&dash.url(path)).call();
        assert!(
            matches!(r, Err(ureq::Error::StatusCode(401))),
            "{path} without a token: {r:?}"
        );
    }
    let r = ureq::get(&dash.url("/api/exams?token=0123456789abcdef-token"))
        .call()
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = ureq::get(&dash.url("/api/devices"))
        .header("Authorization", "Bearer 0123456789abcdef-token")
        .call()
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = ureq::get(&dash.url("/api/devices"))
        .header("Authorization", "Bearer 0123456789abcdef-tokeX")
        .call();
    assert!(matches!(r, Err(ureq::Error::StatusCode(401))));
    // a parameter out of its range is refused, not silently replaced
    for q in ["limit=0", "limit=-1", "limit=1001", "limit=abc"] {
        let r = ureq::get(&dash.url(&format!("/api/exams?{q}")))
            .header("Authorization", "Bearer 0123456789abcdef-token")
            .call();
        assert!(matches!(r, Err(ureq::Error::StatusCode(400))), "{q}: {r:?}");
    }
    let r = ureq::get(&dash.url("/api/stats?days=7"))
        .header("Authorization", "Bearer 0123456789abcdef-token")
        .call()
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// mosquitto of one site, bridged to `central` (mosquitto's bridge: `topic mammo/# out 1`,
/// persistent bridge session). Killed on drop.
struct SiteBroker {
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl SiteBroker {
    fn start(name: &str, central: u16) -> SiteBroker {
        let dir = tmp();
        let port = free_port();
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\n\
                 persistence true\npersistence_location {dir}/\n\
                 connection {name}-to-central\naddress 127.0.0.1:{central}\n\
                 topic mammo/# out 1\ncleansession false\nbridge_protocol_version mqttv311\n\
                 try_private true\nrestart_timeout 1 5\n",
                dir = dir.path().display()
            ),
        )
        .unwrap();
        let child = mosquitto(&conf);
        wait_port(port, true);
        SiteBroker {
            port,
            child,
            _dir: dir,
        }
    }
}

impl Drop for SiteBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_fleet_of_two_sites_bridged_to_a_central_broker_shows_both_appliances_on_one_dashboard() {
    let central = Broker::start();
    let dash = Dashboard::start(&[central.url()], "mammo/#", &[]);
    let site_a = SiteBroker::start("site-a", central.port);
    let site_b = SiteBroker::start("site-b", central.port);
    let a = Setup::new(&format!("mqtt://127.0.0.1:{}", site_a.port), "");
    let b = Setup::new(&format!("mqtt://127.0.0.1:{}", site_b.port), "");
    assert_ne!(a.prefix, b.prefix);
    let mut da = a.start();
    let mut db = b.start();
    drop_exam(&a, 31);
    drop_exam(&b, 32);
    let exams = dash.wait(120, "/api/exams", "a complete exam of each site", |v| {
        let a_done = v.as_array().is_some_and(|x| {
            x.iter()
                .any(|e| e["device"] == a.prefix.as_str() && e["complete"] == true)
        });
        let b_done = v.as_array().is_some_and(|x| {
            x.iter()
                .any(|e| e["device"] == b.prefix.as_str() && e["complete"] == true)
        });
        a_done && b_done
    });
    assert_eq!(exams.as_array().unwrap().len(), 2);
    let devices = dash.wait(
        30,
        "/api/devices",
        "both appliances online with health",
        |v| {
            v.as_array().is_some_and(|d| {
                d.len() == 2
                    && d.iter()
                        .all(|x| x["online"] == true && x["health"].is_object())
            })
        },
    );
    for d in devices.as_array().unwrap() {
        // 4 images and the exam of each site crossed the bridge
        assert!(d["counts"]["image"].as_i64().unwrap() >= 4, "{d:#}");
        assert!(d["counts"]["exam"].as_i64().unwrap() >= 1, "{d:#}");
    }
    // one site's appliance dies: its LWT crosses the bridge, the other stays online
    da.kill9();
    dash.wait(60, "/api/devices", "site A offline, site B online", |v| {
        v.as_array().is_some_and(|d| {
            d.iter()
                .any(|x| x["device"] == a.prefix.as_str() && x["online"] == false)
                && d.iter()
                    .any(|x| x["device"] == b.prefix.as_str() && x["online"] == true)
        })
    });
    assert!(db.stop().success());
}

#[test]
fn a_dashboard_killed_gets_what_arrived_meanwhile_from_its_persistent_session() {
    let mut broker = Broker::start();
    let s = Setup::new(&broker.url(), "");
    let mut dash = Dashboard::start(&[broker.url()], "mammo/test/#", &[]);
    let mut d = s.start();
    // subscribed: the appliance's retained status has been recorded
    dash.wait(30, "/api/devices", "the appliance online", |v| {
        v[0]["online"] == true
    });
    let info_count = dash.get("/api/devices")[0]["counts"]["status/info"].clone();
    dash.kill9();
    drop_exam(&s, 41);
    // the whole exam delivered to the broker (PUBACK) while no dashboard was connected
    wait_for(90, "the exam delivered", &s, || {
        s.count(
            "SELECT COUNT(*) FROM outbox WHERE topic LIKE '%/exam' AND delivered_at IS NOT NULL",
        ) == 1
            && s.count("SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL") == 0
    });
    assert_eq!(
        dash.get_or_refused("/api/exams"),
        None,
        "the dashboard is down"
    );
    dash.restart();
    let exams = dash.wait(30, "/api/exams", "the exam queued by the broker", |v| {
        v.as_array()
            .is_some_and(|a| a.len() == 1 && a[0]["complete"] == true)
    });
    assert_eq!(exams[0]["device"], s.prefix.as_str());
    let dev = dash.wait(10, "/api/devices", "4 images counted", |v| {
        v[0]["counts"]["image"] == 4
    });
    assert_eq!(dev[0]["counts"]["exam"], 1);
    assert!(
        dash.log_text().contains("session present: true"),
        "{}",
        dash.log_text()
    );
    // the retained status, health and drift handed over again on subscribing are not counted
    // twice, and do not make the appliance "seen" at the restart
    assert_eq!(dev[0]["counts"]["status/info"], info_count, "{:#}", dev[0]);
    assert_eq!(dash.get("/api/brokers")[0]["connected"], true);
    assert!(d.stop().success());
    broker.down();
    let b = dash.wait(30, "/api/brokers", "the broker shown disconnected", |v| {
        v[0]["connected"] == false
    });
    assert!(b[0]["error"].is_string(), "{b:#}");
}

/// A throw-away PostgreSQL server from Debian's `postgresql` binaries: `initdb` into a temporary
/// folder (as `nobody` when the tests run as root, which PostgreSQL refuses), trust
/// authentication on loopback, fsync off. Stopped on drop.
struct PgServer {
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl PgServer {
    fn start() -> PgServer {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .and_then(|d| {
                d.filter_map(|e| e.ok().map(|e| e.path().join("bin")))
                    .filter(|b| b.join("initdb").is_file())
                    .max()
            })
            .expect(
                "PostgreSQL's server binaries (/usr/lib/postgresql/*/bin) are missing: \
                 apt-get install postgresql (scripts/test-deps.sh installs it)",
            );
        let dir = tmp();
        let port = free_port();
        let as_user = |exe: &str| {
            let mut c = if is_root() {
                let mut c = Command::new("setpriv");
                c.args(["--reuid=65534", "--regid=65534", "--clear-groups"]);
                c.arg(bin.join(exe));
                c
            } else {
                Command::new(bin.join(exe))
            };
            c.stdout(Stdio::null()).stderr(Stdio::null());
            c
        };
        if is_root() {
            let st = Command::new("chown")
                .arg("65534:65534")
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(st.success());
        }
        let data = dir.path().join("data");
        let st = as_user("initdb")
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
                "-D",
            ])
            .arg(&data)
            .status()
            .unwrap();
        assert!(st.success(), "initdb failed");
        let child = as_user("postgres")
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-k"])
            .arg(dir.path())
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .spawn()
            .unwrap();
        wait_port(port, true);
        PgServer {
            port,
            child,
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `v` without the keys that are the receiving dashboard's own clock, at any depth.
fn without_receipt_times(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !matches!(k.as_str(), "received_at" | "last_seen" | "since"))
                .map(|(k, x)| (k.clone(), without_receipt_times(x)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(without_receipt_times).collect()),
        x => x.clone(),
    }
}

#[test]
fn postgresql_keeps_what_sqlite_keeps_and_survives_a_restart() {
    let pg = PgServer::start();
    let broker = Broker::start();
    let s = Setup::new(&broker.url(), "");
    let lite = Dashboard::start(&[broker.url()], "mammo/test/#", &[]);
    let mut post = Dashboard::start(&[broker.url()], "mammo/test/#", &["--db", &pg.url()]);
    let mut d = s.start();
    drop_exam(&s, 51);
    let complete = |v: &Value| {
        v.as_array()
            .is_some_and(|a| a.len() == 1 && a[0]["complete"] == true)
    };
    lite.wait(90, "/api/exams", "the exam in SQLite", complete);
    post.wait(30, "/api/exams", "the exam in PostgreSQL", complete);
    let model_sha = lite.get("/api/exams")[0]["model"]["sha256"]
        .as_str()
        .unwrap()
        .to_string();
    let (drift, alert) = drift_alert(&model_sha);
    let msgs = [
        (format!("{}/drift/acme-detector-9", s.prefix), drift, true),
        (format!("{}/alert", s.prefix), alert, false),
    ];
    publish(broker.port, &msgs);
    for dash in [&lite, &post] {
        dash.wait(30, "/api/alerts", "the alert", |v| {
            v.as_array().is_some_and(|a| a.len() == 1)
        });
        dash.wait(30, "/api/devices", "4 images and the drift", |v| {
            v[0]["counts"]["image"] == 4 && v[0]["drift"].as_array().is_some_and(|a| a.len() == 2)
        });
    }
    assert!(d.stop().success());
    for dash in [&lite, &post] {
        dash.wait(30, "/api/devices", "the appliance offline", |v| {
            v[0]["online"] == false
        });
    }
    let routes = [
        "/api/exams",
        "/api/devices",
        "/api/alerts",
        "/api/stats",
        "/api/brokers",
    ];
    let seen: Vec<Value> = routes
        .iter()
        .map(|r| without_receipt_times(&lite.get(r)))
        .collect();
    for (r, want) in routes.iter().zip(&seen) {
        assert_eq!(&without_receipt_times(&post.get(r)), want, "{r}");
    }
    // typed columns, not text: the exam's numbers and flags come back as JSON numbers / booleans
    let x = &seen[0][0];
    assert!(
        x["cancer_probability"].is_f64() && x["revision"].is_i64(),
        "{x:#}"
    );
    assert!(
        x["dense_breasts"].is_boolean() && x["complete"] == true,
        "{x:#}"
    );
    assert_eq!(seen[3]["exams"], 1);
    assert_eq!(seen[3]["alerts_raised"], 1);
    // the PostgreSQL dashboard killed and started again: everything is still there
    post.kill9();
    post.restart();
    post.wait(30, "/api/brokers", "connected again", |v| {
        v[0]["connected"] == true
    });
    for (r, want) in routes.iter().zip(&seen) {
        assert_eq!(
            &without_receipt_times(&post.get(r)),
            want,
            "{r} after a restart"
        );
    }
}
