//! Startup packets: SSLRequest, CancelRequest, StartupMessage parsing must be total.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgferry::protocol::startup::{check_startup_len, parse_startup};

fuzz_target!(|data: &[u8]| {
    if data.len() >= 4 {
        let _ = check_startup_len([data[0], data[1], data[2], data[3]]);
    }
    let _ = parse_startup(data);
});
