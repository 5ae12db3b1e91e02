//! Authentication input: the SCRAM-SHA-256 client-first and client-final messages a client
//! sends (split at the first NUL; `r=@` in the final message stands for the nonce the server
//! chose, so the fuzzer reaches proof checking), the server-first and server-final messages a
//! server sends to pgferry's pass-through SCRAM client (same halves), and the auth_file /
//! stored-secret parsers. Any bytes yield a reply or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgferry::auth::{
    parse_secret, parse_userlist, scram_keys_from_password, ScramKeys, ScramKeysClient,
    ScramSecret, ScramServer,
};
use std::sync::OnceLock;

fn secret() -> &'static ScramSecret {
    static SECRET: OnceLock<ScramSecret> = OnceLock::new();
    SECRET.get_or_init(|| ScramSecret::from_password("pw"))
}

fn keys() -> &'static ScramKeys {
    static KEYS: OnceLock<ScramKeys> = OnceLock::new();
    KEYS.get_or_init(|| scram_keys_from_password(secret(), b"pw").expect("keys"))
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
    // pgferry as the SCRAM client of a server.
    let mut client = ScramKeysClient::new(keys().clone());
    let _ = client.client_first();
    if client.server_first(first).is_ok() {
        let _ = client.server_final(fin);
    }
    // pgferry as the SCRAM server of a client.
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
