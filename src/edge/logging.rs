//! Where the log goes: journald (`systemd-journal-logger`, native protocol, one entry per record
//! with its priority) when systemd started the process, else `env_logger` on stderr. The same
//! filter applies to both: `RUST_LOG` when set, else the level given (from `-v`). Main items:
//! [`init`], [`install_panic_hook`], [`LogTarget`], [`LoggingError`]. Log lines never carry patient data (the callers
//! name files by hash unless `privacy.publish_file_names`).

use log::{Log, Metadata, Record};
use systemd_journal_logger::JournalLog;
use thiserror::Error;

/// Where [`init`] sent the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogTarget {
    /// journald's native socket (`/run/systemd/journal/socket`).
    Journal,
    /// stderr (env_logger).
    Stderr,
}

/// Why the logger could not be installed.
#[derive(Debug, Error)]
pub enum LoggingError {
    /// A logger was installed already (`init` called twice).
    #[error("logger already installed: {0}")]
    AlreadySet(#[from] log::SetLoggerError),
}

/// Replace the default panic hook, which prints a panic's message to stderr (the journal, under
/// systemd), with one that logs only where the panic happened at ERROR and its message at DEBUG: a
/// decoder's message can quote file names or UIDs, and the daemon logs the caught panic itself with
/// the file's label and the message scrubbed (review #14).
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("unnamed");
        let at = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_else(|| "an unknown place".into());
        log::error!("thread {name} panicked at {at} (message in the debug log)");
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        log::debug!("panic message: {msg}");
    }));
}

/// True when systemd started this process: `JOURNAL_STREAM` (stdout/stderr connected to the
/// journal) or `INVOCATION_ID` (set for every unit's processes) is present in `env`.
pub fn started_by_systemd(env: impl Fn(&str) -> Option<std::ffi::OsString>) -> bool {
    env("JOURNAL_STREAM").is_some() || env("INVOCATION_ID").is_some()
}

/// Install the process logger. `default_filter` (env_logger syntax, e.g. `"info,jpeg2k=warn"`)
/// applies unless `RUST_LOG` is set. Under systemd ([`started_by_systemd`]) records go to
/// journald; when the journal socket cannot be reached they go to stderr and a warning says why.
/// Errors: `AlreadySet`.
pub fn init(default_filter: &str) -> Result<LogTarget, LoggingError> {
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_filter));
    if started_by_systemd(|k| std::env::var_os(k)) {
        match JournalLog::new() {
            Ok(journal) => {
                let filter = builder.build();
                log::set_max_level(filter.filter());
                log::set_boxed_logger(Box::new(Filtered { filter, journal }))?;
                log::debug!("logging to journald");
                return Ok(LogTarget::Journal);
            }
            Err(e) => {
                builder.try_init()?;
                log::warn!("started by systemd but journald unreachable ({e}); logging to stderr");
                return Ok(LogTarget::Stderr);
            }
        }
    }
    builder.try_init()?;
    Ok(LogTarget::Stderr)
}

/// journald with env_logger's filter (env_logger's `Logger` is used only for `matches`).
struct Filtered {
    filter: env_logger::Logger,
    journal: JournalLog,
}

impl Log for Filtered {
    fn enabled(&self, metadata: &Metadata) -> bool {
        self.filter.enabled(metadata)
    }

    fn log(&self, record: &Record) {
        if self.filter.matches(record) {
            self.journal.log(record);
        }
    }

    fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systemd_is_recognised_by_either_variable() {
        let none = |_: &str| None;
        assert!(!started_by_systemd(none));
        assert!(started_by_systemd(
            |k: &str| (k == "JOURNAL_STREAM").then(|| "8:1234".into())
        ));
        assert!(started_by_systemd(
            |k: &str| (k == "INVOCATION_ID").then(|| "0123abcd".into())
        ));
    }
}
