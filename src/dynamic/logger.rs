//! `log` records to Envoy's log (its `dynamic_modules` logger).

use super::ffi::{self, LogLevel};
use log::{Level, LevelFilter, Log, Metadata, Record};

struct EnvoyLogger;

static LOGGER: EnvoyLogger = EnvoyLogger;

/// Routes the crate's `log` lines to Envoy; idempotent.
pub fn install() {
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(LevelFilter::Info);
    }
}

impl Log for EnvoyLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= Level::Info
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = match record.level() {
            Level::Error => LogLevel::Error,
            Level::Warn => LogLevel::Warn,
            Level::Info => LogLevel::Info,
            Level::Debug => LogLevel::Debug,
            Level::Trace => LogLevel::Trace,
        };
        ffi::log(level, &record.args().to_string());
    }

    fn flush(&self) {}
}
