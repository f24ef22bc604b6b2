//! The daemon's TOML configuration: any text parses to a validated `Config` or a
//! `ConfigError` naming what is wrong.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mammo_edge::edge::config::Config;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(c) = Config::parse(text, "(fuzz)") {
            let _ = c.validate();
        }
    }
});
