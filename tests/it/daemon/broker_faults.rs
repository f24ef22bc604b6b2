//! Brokers that misbehave in ways mosquitto cannot be made to (review #7): a CONNACK that takes
//! 1.5 s, and a broker that takes PUBLISH packets and never acknowledges them. The peer is a
//! minimal MQTT 3.1.1 server written here over a real TCP socket; the daemon is the real binary.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::harness::*;
use crate::util::tmp;

/// What the fake broker does.
#[derive(Clone, Copy)]
enum Behaviour {
    /// CONNACK after this long, then PUBACK every PUBLISH.
    SlowConnack(Duration),
    /// CONNACK at once, never a PUBACK (PINGREQ is answered).
    NoPuback,
}

/// A packet the fake broker received (a PUBLISH with the number of its connection: 1, 2 …).
#[derive(Debug, Clone)]
enum Seen {
    Connect,
    Publish {
        conn: usize,
        topic: String,
        payload: String,
    },
}

struct FakeBroker {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl FakeBroker {
    fn start(behaviour: Behaviour) -> FakeBroker {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let log = seen.clone();
        std::thread::spawn(move || {
            for (i, stream) in listener.incoming().enumerate() {
                let Ok(stream) = stream else { return };
                let log = log.clone();
                std::thread::spawn(move || serve(stream, i + 1, behaviour, &log));
            }
        });
        FakeBroker { port, seen }
    }

    fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn connects(&self) -> usize {
        self.seen()
            .iter()
            .filter(|s| matches!(s, Seen::Connect))
            .count()
    }

    /// Payloads published on `topic` on connection `conn`.
    fn payloads_on(&self, conn: usize, topic: &str) -> Vec<String> {
        self.published_on(conn)
            .into_iter()
            .filter(|(t, _)| t == topic)
            .map(|(_, p)| p)
            .collect()
    }

    /// Topics and payloads published on connection `conn`.
    fn published_on(&self, conn: usize) -> Vec<(String, String)> {
        self.seen()
            .into_iter()
            .filter_map(|s| match s {
                Seen::Publish {
                    conn: c,
                    topic,
                    payload,
                } if c == conn => Some((topic, payload)),
                _ => None,
            })
            .collect()
    }
}

/// One MQTT packet: its first byte and its body (after the remaining length).
fn read_packet(s: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut b = [0u8; 1];
    s.read_exact(&mut b).ok()?;
    let (mut len, mut shift) = (0usize, 0);
    loop {
        let mut d = [0u8; 1];
        s.read_exact(&mut d).ok()?;
        len |= usize::from(d[0] & 0x7f) << shift;
        if d[0] & 0x80 == 0 {
            break;
        }
        shift += 7;
    }
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).ok()?;
    Some((b[0], body))
}

fn serve(mut s: TcpStream, conn: usize, behaviour: Behaviour, log: &Mutex<Vec<Seen>>) {
    while let Some((first, body)) = read_packet(&mut s) {
        let reply: &[u8] = match first >> 4 {
            1 => {
                log.lock().unwrap().push(Seen::Connect);
                if let Behaviour::SlowConnack(d) = behaviour {
                    std::thread::sleep(d);
                }
                &[0x20, 0x02, 0x00, 0x00]
            }
            3 => {
                let qos = (first >> 1) & 3;
                let n = usize::from(u16::from_be_bytes([body[0], body[1]]));
                let topic = String::from_utf8_lossy(&body[2..2 + n]).into_owned();
                let mut at = 2 + n;
                let pkid = if qos > 0 {
                    at += 2;
                    [body[at - 2], body[at - 1]]
                } else {
                    [0, 0]
                };
                let payload = String::from_utf8_lossy(&body[at..]).into_owned();
                log.lock().unwrap().push(Seen::Publish {
                    conn,
                    topic,
                    payload,
                });
                match behaviour {
                    Behaviour::SlowConnack(_) if qos > 0 => {
                        let _ = s.write_all(&[0x40, 0x02, pkid[0], pkid[1]]);
                    }
                    _ => {}
                }
                continue;
            }
            12 => &[0xD0, 0x00],
            14 => return,
            _ => continue,
        };
        if s.write_all(reply).is_err() {
            return;
        }
    }
}

/// Before the fix every 1 s tick dropped the connecting `poll()` future: 33 CONNECTs in 30 s and
/// no connection. Now one CONNECT waits for its CONNACK and the retained status goes out.
#[test]
fn a_connack_after_1_5_s_is_waited_for_not_cancelled() {
    let broker = FakeBroker::start(Behaviour::SlowConnack(Duration::from_millis(1500)));
    let s = Setup::new(&broker.url(), "");
    let mut d = s.start();
    wait_for(20, "the retained status online", &s, || {
        broker
            .published_on(1)
            .iter()
            .any(|(t, p)| *t == format!("{}/status", s.prefix) && p == "online")
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(broker.connects(), 1, "{:?}", broker.seen());
    assert!(s.log_text().contains("connected (session present"));
    assert!(d.alive());
    assert!(d.stop().success());
}

/// A connection that takes messages and never acknowledges them is dropped after
/// `mqtt.ack_timeout_secs` with a warning; the next connection sends the same outbox rows again,
/// and none is marked delivered.
#[test]
fn a_broker_that_never_acknowledges_is_left_and_the_messages_sent_again() {
    let broker = FakeBroker::start(Behaviour::NoPuback);
    let s = Setup::new(&broker.url(), "");
    let text = std::fs::read_to_string(&s.config).unwrap();
    std::fs::write(
        &s.config,
        text.replace("[mqtt]\n", "[mqtt]\nack_timeout_secs = 2\n"),
    )
    .unwrap();
    let mut d = s.start();
    let src = tmp();
    let files = exam(src.path(), 45);
    drop_in(&s.watch, &files[0], "one.dcm");
    let image_topic = format!("{}/image", s.prefix);
    wait_for(30, "the image on a first connection", &s, || {
        !broker.payloads_on(1, &image_topic).is_empty()
    });
    wait_for(
        20,
        "a second connection sending the image again",
        &s,
        || !broker.payloads_on(2, &image_topic).is_empty(),
    );
    assert_eq!(
        broker.payloads_on(1, &image_topic)[0],
        broker.payloads_on(2, &image_topic)[0],
        "the same outbox row, the same payload"
    );
    let log = s.log_text();
    assert!(
        log.contains("no PUBACK within mqtt.ack_timeout_secs = 2 s"),
        "{log}"
    );
    assert_eq!(
        s.count("SELECT COUNT(*) FROM outbox WHERE delivered_at IS NOT NULL"),
        0
    );
    assert!(d.alive());
    assert!(d.stop().success());
}
