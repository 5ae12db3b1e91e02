//! Client-facing authentication input: the SCRAM-SHA-256 client-first and client-final
//! messages (split at the first NUL; `r=@` in the final message stands for the nonce the server
//! chose, so the fuzzer reaches proof checking), and the auth_file / stored-secret parsers.
//! Any bytes yield a reply or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgferry::auth::{parse_secret, parse_userlist, ScramSecret, ScramServer};
use std::sync::OnceLock;

fn secret() -> &'static ScramSecret {
    static SECRET: OnceLock<ScramSecret> = OnceLock::new();
    SECRET.get_or_init(|| ScramSecret::from_password("pw"))
}

/// The `r=` attribute of a server-first-message.
fn nonce(server_first: &[u8]) -> Option<&[u8]> {
    let rest = server_first.strip_prefix(b"r=")?;
    Some(&rest[..rest.iter().position(|&b| b == b',')?])
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = ScramSecret::parse(text);
        let _ = parse_secret(text);
        let _ = parse_userlist(text);
    }
    let (first, fin) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let mut s = ScramServer::new(secret().clone());
    let Ok(server_first) = s.client_first(first) else {
        return;
    };
    let mut fin = fin.to_vec();
    if let (Some(at), Some(n)) = (
        fin.windows(3).position(|w| w == b"r=@"),
        nonce(&server_first),
    ) {
        fin.splice(at + 2..at + 3, n.iter().copied());
    }
    if s.client_final(&fin).is_ok() {
        assert!(s.client_key().is_some());
    }
});
