//! The systemd service-manager protocol (`sd_notify(3)`, through the `sd-notify` crate):
//! `READY=1` once the daemon has started, `RELOADING=1` + `MONOTONIC_USEC=` when a SIGHUP
//! reload begins (then `READY=1` again), `STOPPING=1` on shutdown, and `WATCHDOG=1` pings at
//! half of `WATCHDOG_USEC` sent only while the pipeline shows progress ([`Liveness`]), so a hung
//! loop or a stuck worker lets systemd's watchdog restart the service. Everything is a no-op
//! when `NOTIFY_SOCKET` is unset (not started by systemd with Type=notify). Also
//! [`catch_sighup_early`]: SIGHUP's default action (terminate, which systemd does not restart)
//! is replaced from the first lines of `run`. Main items: [`Notifier`], [`Liveness`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use sd_notify::NotifyState;

/// Set by the start-up SIGHUP handler of [`catch_sighup_early`].
static EARLY_SIGHUP: OnceLock<Arc<AtomicBool>> = OnceLock::new();

/// Catch SIGHUP from now on (review #25): until the daemon installs its reload handler, a SIGHUP
/// (a configuration-management run, `systemctl reload` right after a start) would otherwise
/// terminate the process by default, and systemd counts that as a clean exit. The handler only
/// records the signal ([`early_sighup_seen`]); it stays installed beside the daemon's own.
/// Errors: the handler could not be installed (the default action stays).
pub fn catch_sighup_early() -> std::io::Result<()> {
    let flag = EARLY_SIGHUP.get_or_init(Arc::default).clone();
    signal_hook::flag::register(signal_hook::consts::SIGHUP, flag).map(|_| ())
}

/// Whether a SIGHUP arrived since [`catch_sighup_early`] (cleared by this call).
pub fn early_sighup_seen() -> bool {
    EARLY_SIGHUP
        .get()
        .is_some_and(|f| f.swap(false, Ordering::SeqCst))
}

/// Shortest progress window: a loop may be quiet this long (the publisher's reconnection
/// backoff is up to 10 s) and still count as alive, whatever `WATCHDOG_USEC` is.
pub const LIVENESS_MIN: Duration = Duration::from_secs(15);

/// Last progress of the two loops that must keep turning: the pipeline (watch → claim → worker
/// replies) and the publisher (outbox → broker). Each loop calls its beat on every turn, an idle
/// turn included; the pipeline does not beat while its worker is past `ingest.file_timeout_secs`
/// on one file. Times are ms since the `Liveness` was made.
#[derive(Debug)]
pub struct Liveness {
    origin: Instant,
    pipeline_ms: AtomicU64,
    publisher_ms: AtomicU64,
}

impl Default for Liveness {
    fn default() -> Self {
        Liveness {
            origin: Instant::now(),
            pipeline_ms: AtomicU64::new(0),
            publisher_ms: AtomicU64::new(0),
        }
    }
}

impl Liveness {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The pipeline loop made progress (or turned while idle).
    pub fn pipeline(&self) {
        self.pipeline_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// The publisher loop made progress (or turned while idle or waiting to reconnect).
    pub fn publisher(&self) {
        self.publisher_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// Time since the older of the two last beats.
    pub fn stalest(&self) -> Duration {
        let oldest = self
            .pipeline_ms
            .load(Ordering::Relaxed)
            .min(self.publisher_ms.load(Ordering::Relaxed));
        Duration::from_millis(self.now_ms().saturating_sub(oldest))
    }
}

/// Talks to systemd when `NOTIFY_SOCKET` is set; otherwise every call does nothing.
#[derive(Debug, Clone)]
pub struct Notifier {
    enabled: bool,
    /// `WATCHDOG_USEC` (for this PID when `WATCHDOG_PID` is set), when the watchdog is on.
    watchdog: Option<Duration>,
}

impl Notifier {
    /// From the environment systemd gives a Type=notify service.
    pub fn from_env() -> Notifier {
        let enabled = std::env::var_os("NOTIFY_SOCKET").is_some();
        Notifier {
            enabled,
            watchdog: enabled
                .then(sd_notify::watchdog_enabled)
                .flatten()
                .filter(|d| !d.is_zero()),
        }
    }

    fn send(&self, states: &[NotifyState]) {
        if self.enabled {
            if let Err(e) = sd_notify::notify(states) {
                log::warn!("sd_notify {states:?}: {e}");
            }
        }
    }

    /// `READY=1` with a `STATUS=` line (no patient data).
    pub fn ready(&self, status: &str) {
        if self.enabled {
            log::info!("systemd: READY=1");
        }
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// `RELOADING=1` with `MONOTONIC_USEC=` (CLOCK_MONOTONIC now, µs: systemd ≥ 253 requires
    /// it with RELOADING and older versions ignore it) and a `STATUS=` line. Send
    /// [`Notifier::ready`] when the reload is done, whether it was applied or refused.
    pub fn reloading(&self, status: &str) {
        if !self.enabled {
            return;
        }
        log::info!("systemd: RELOADING=1");
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.send(&[NotifyState::Reloading, now, NotifyState::Status(status)]),
            Err(e) => {
                log::warn!("CLOCK_MONOTONIC unreadable ({e}); RELOADING=1 sent without it");
                self.send(&[NotifyState::Reloading, NotifyState::Status(status)]);
            }
        }
    }

    /// A `STATUS=` line alone (e.g. intake paused / resumed).
    pub fn status(&self, status: &str) {
        self.send(&[NotifyState::Status(status)]);
    }

    /// `STOPPING=1`: shutdown has begun.
    pub fn stopping(&self) {
        self.send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    }

    /// Interval of the watchdog pings (half of `WATCHDOG_USEC`), when the watchdog is on.
    pub fn ping_interval(&self) -> Option<Duration> {
        self.watchdog.map(|d| d / 2)
    }

    /// Ping `WATCHDOG=1` every [`Notifier::ping_interval`] while `liveness` saw both loops turn
    /// within max(interval, [`LIVENESS_MIN`]); otherwise skip the ping (logged) so that systemd
    /// restarts a hung daemon after `WatchdogSec`. Returns at once when the watchdog is off;
    /// else runs until aborted.
    pub async fn watchdog(self, liveness: Arc<Liveness>) {
        let Some(every) = self.ping_interval() else {
            return;
        };
        let window = every.max(LIVENESS_MIN);
        log::info!(
            "systemd watchdog: ping every {every:?} while the pipeline turns within {window:?}"
        );
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let stalest = liveness.stalest();
            if stalest <= window {
                self.send(&[NotifyState::Watchdog]);
            } else {
                log::error!(
                    "systemd watchdog: no pipeline/publisher progress for {stalest:?}; ping withheld"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn liveness_is_as_stale_as_its_oldest_loop() {
        let l = Liveness::default();
        l.pipeline();
        l.publisher();
        assert!(l.stalest() < Duration::from_millis(500));
        std::thread::sleep(Duration::from_millis(30));
        l.pipeline();
        assert!(l.stalest() >= Duration::from_millis(30));
        l.publisher();
        assert!(l.stalest() < Duration::from_millis(30));
    }
}
