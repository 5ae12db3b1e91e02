//! The TOML configuration parser and validator: any text yields a config or an error.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = pgferry::config::Config::parse_str(text, None);
    }
});
