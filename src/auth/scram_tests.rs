//! Tests of the SCRAM-SHA-256 server against postgres-protocol's client,
//! RFC 7677's example exchange, malformed input and random bytes.

#![allow(clippy::unwrap_used)]

use std::sync::OnceLock;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::scram_secret::{hi, hmac_sha256, sha256};
use super::{secret_for_scram, AuthError, ScramSecret, ScramServer, Secret};

/// Runs a full exchange with postgres-protocol's client; returns the
/// server's result of the final step and, on success, the client's verdict
/// on the server's signature.
fn exchange(
    secret: &ScramSecret,
    password: &str,
    cb: ChannelBinding,
) -> (ScramServer, Result<(), AuthError>) {
    let mut server = ScramServer::new(secret.clone());
    let mut client = ScramSha256::new(password.as_bytes(), cb);
    let server_first = match server.client_first(client.message()) {
        Ok(m) => m,
        Err(e) => return (server, Err(e)),
    };
    client.update(&server_first).unwrap();
    match server.client_final(client.message()) {
        Ok(server_final) => {
            client
                .finish(&server_final)
                .expect("client accepts server signature");
            (server, Ok(()))
        }
        Err(e) => (server, Err(e)),
    }
}

#[test]
fn plain_derived_secret_with_postgres_protocol_client() {
    let secret = secret_for_scram(&Secret::Plain("pencil".into())).unwrap();
    let (server, result) = exchange(&secret, "pencil", ChannelBinding::unsupported());
    result.unwrap();
    let client_key = server.client_key().unwrap();
    assert_eq!(sha256(&client_key), secret.stored_key);
    // the recovered ClientKey is HMAC(SaltedPassword, "Client Key")
    let salted = hi(b"pencil", &secret.salt, secret.iterations);
    assert_eq!(client_key, hmac_sha256(&salted, &[b"Client Key"]));
}

#[test]
fn stored_verifier_with_postgres_protocol_client() {
    let encoded = postgres_protocol::password::scram_sha_256("sésame ouvre-toi".as_bytes());
    let Secret::Scram(secret) = super::parse_secret(&encoded) else {
        panic!("not a SCRAM verifier: {encoded}");
    };
    let (server, result) = exchange(&secret, "sésame ouvre-toi", ChannelBinding::unsupported());
    result.unwrap();
    assert!(server.client_key().is_some());
    // `y,,`: the client could bind but believes the server cannot
    let (_, result) = exchange(&secret, "sésame ouvre-toi", ChannelBinding::unrequested());
    result.unwrap();
}

#[test]
fn wrong_password_is_a_mismatch() {
    let secret = ScramSecret::from_password("right");
    let (mut server, result) = exchange(&secret, "wrong", ChannelBinding::unsupported());
    assert_eq!(result, Err(AuthError::PasswordMismatch));
    assert_eq!(server.client_key(), None);
    assert!(server.client_final(b"c=biws,r=x,p=AAAA").is_err());
}

#[test]
fn channel_binding_is_refused() {
    let secret = ScramSecret::from_password("pw");
    let cb = ChannelBinding::tls_server_end_point(vec![1, 2, 3]);
    let (server, result) = exchange(&secret, "pw", cb);
    assert!(
        matches!(result, Err(AuthError::Unsupported(_))),
        "{result:?}"
    );
    assert_eq!(server.client_key(), None);
}

const RFC_NONCE: &str = "rOprNGfwEbeRWgbNEkqO";
const RFC_SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";

/// The verifier of RFC 7677's example (password "pencil"), derived once.
fn rfc7677_secret() -> ScramSecret {
    static SECRET: OnceLock<ScramSecret> = OnceLock::new();
    SECRET
        .get_or_init(|| {
            let salt = STANDARD.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
            ScramSecret::derive(b"pencil", &salt, 4096)
        })
        .clone()
}

fn rfc7677_server() -> ScramServer {
    ScramServer::new(rfc7677_secret())
}

fn rfc7677_final() -> String {
    format!("c=biws,r={RFC_NONCE}{RFC_SERVER_NONCE},p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
}

#[test]
fn rfc7677_example_exchange() {
    let mut server = rfc7677_server();
    let first = format!("n,,n=user,r={RFC_NONCE}");
    let server_first = server
        .client_first_fixed_nonce(first.as_bytes(), RFC_SERVER_NONCE)
        .unwrap();
    assert_eq!(
        String::from_utf8(server_first).unwrap(),
        format!("r={RFC_NONCE}{RFC_SERVER_NONCE},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
    );
    let server_final = server.client_final(rfc7677_final().as_bytes()).unwrap();
    assert_eq!(
        server_final,
        b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
    );
    assert!(server.client_key().is_some());
}

#[test]
fn server_nonce_extends_client_nonce() {
    let mut server = rfc7677_server();
    let reply = server.client_first(b"n,,n=,r=abc").unwrap();
    let reply = String::from_utf8(reply).unwrap();
    let nonce = reply
        .strip_prefix("r=abc")
        .unwrap()
        .split(',')
        .next()
        .unwrap();
    assert_eq!(nonce.len(), 24);
    assert!(nonce
        .bytes()
        .all(|b| (0x21..=0x7e).contains(&b) && b != b','));
}

#[test]
fn malformed_client_first() {
    let unsupported: &[&[u8]] = &[
        b"p=tls-server-end-point,,n=,r=abc",
        b"p",
        b"n,a=admin,n=,r=abc",
        b"n,,m=ext,n=,r=abc",
    ];
    for msg in unsupported {
        let r = rfc7677_server().client_first(msg);
        assert!(
            matches!(r, Err(AuthError::Unsupported(_))),
            "{msg:?}: {r:?}"
        );
    }
    let malformed: &[&[u8]] = &[
        b"",
        b"x",
        b"n",
        b"n,",
        b"n,,",
        b"n,x,n=,r=a",
        b"nn,,n=,r=a",
        b"n,,n=",
        b"n,,n=u",
        b"n,,n=u,",
        b"n,,n=u,r=",
        b"n,,r=abc",
        b"n,,n=u,x=abc",
        b"n,,n=u,r=ab c",
        b"n,,n=u,r=ab\xffc",
        b"n,,n=u,r=abc,=x",
        b"n,,n=u,r=abc,",
        b"n,,n=u,r=abc\0",
        b"\0n,,n=u,r=abc",
        b"N,,n=u,r=abc",
    ];
    for msg in malformed {
        let r = rfc7677_server().client_first(msg);
        assert!(matches!(r, Err(AuthError::Malformed(_))), "{msg:?}: {r:?}");
    }
    // extensions are ignored; the username is ignored whatever it is
    for msg in [&b"n,,n=u,r=abc,x=1"[..], b"y,,n=\xff\xfe,r=abc"] {
        assert!(rfc7677_server().client_first(msg).is_ok());
    }
}

#[test]
fn malformed_client_final() {
    let good = rfc7677_final();
    let full_nonce = format!("{RFC_NONCE}{RFC_SERVER_NONCE}");
    let proof = "p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    let mut cases: Vec<(Vec<u8>, bool)> = vec![
        (format!("c=eSws,r={full_nonce},{proof}").into_bytes(), false), // y,, instead of n,,
        (format!("c=biws,r={RFC_NONCE},{proof}").into_bytes(), false),
        (
            format!("c=biws,r={full_nonce}x,{proof}").into_bytes(),
            false,
        ),
        (format!("c=bi!s,r={full_nonce},{proof}").into_bytes(), false),
        (format!("r={full_nonce},c=biws,{proof}").into_bytes(), false),
        (format!("c=biws,r={full_nonce},p=AAAA").into_bytes(), false),
        (format!("c=biws,r={full_nonce},p=***").into_bytes(), false),
        (
            format!("c=biws,r={full_nonce},{proof},x=1").into_bytes(),
            false,
        ),
        (
            format!("c=biws,r={full_nonce},{proof}\0").into_bytes(),
            false,
        ),
        (
            format!("c=biws,r={full_nonce},x,{proof}").into_bytes(),
            false,
        ),
        (
            format!("c=biws,r={full_nonce},{proof}")
                .replace("dHzb", "dHzc")
                .into_bytes(),
            true,
        ),
    ];
    // every strict prefix of a good message is rejected
    for len in 0..good.len() {
        cases.push((good.as_bytes()[..len].to_vec(), false));
    }
    for (msg, mismatch) in cases {
        let mut server = rfc7677_server();
        server
            .client_first_fixed_nonce(
                format!("n,,n=user,r={RFC_NONCE}").as_bytes(),
                RFC_SERVER_NONCE,
            )
            .unwrap();
        let r = server.client_final(&msg);
        if mismatch {
            assert_eq!(r, Err(AuthError::PasswordMismatch), "{msg:?}");
        } else {
            assert!(matches!(r, Err(AuthError::Malformed(_))), "{msg:?}: {r:?}");
        }
        assert_eq!(server.client_key(), None);
    }
}

/// An extension attribute before the proof is covered by the proof and
/// otherwise ignored (computed here with an independent client).
#[test]
fn client_final_extension_before_proof() {
    let password = b"pw";
    let secret = ScramSecret::derive(password, b"0123456789abcdef", 4096);
    let mut server = ScramServer::new(secret.clone());
    let first_bare = "n=,r=clientnonce";
    let server_first = server
        .client_first_fixed_nonce(format!("y,,{first_bare}").as_bytes(), "SERVER")
        .unwrap();
    let server_first = String::from_utf8(server_first).unwrap();
    let without_proof = "c=eSws,r=clientnonceSERVER,x=ext";
    let auth_message = format!("{first_bare},{server_first},{without_proof}");
    let salted = hi(password, &secret.salt, secret.iterations);
    let client_key = hmac_sha256(&salted, &[b"Client Key"]);
    let signature = hmac_sha256(&sha256(&client_key), &[auth_message.as_bytes()]);
    let proof: Vec<u8> = client_key
        .iter()
        .zip(signature)
        .map(|(k, s)| k ^ s)
        .collect();
    let msg = format!("{without_proof},p={}", STANDARD.encode(proof));
    server.client_final(msg.as_bytes()).unwrap();
    assert_eq!(server.client_key(), Some(client_key));
}

#[test]
fn steps_out_of_order() {
    let mut server = rfc7677_server();
    assert!(server.client_final(rfc7677_final().as_bytes()).is_err());
    // a failed step ends the exchange
    assert!(server.client_first(b"n,,n=,r=abc").is_err());

    let mut server = rfc7677_server();
    server.client_first(b"n,,n=,r=abc").unwrap();
    assert!(server.client_first(b"n,,n=,r=abc").is_err());
    assert!(server.client_final(b"c=biws,r=abc,p=AAAA").is_err());
}

/// Random bytes and random mutations of good messages must never panic.
#[test]
fn random_input_never_panics() {
    const ALPHABET: &[u8] = b"nyp,=rcmaxs\0\xff+/AZbiws";
    let mut rng = StdRng::seed_from_u64(0x5c4a_3f00);
    let secret = ScramSecret::from_password("pw");
    let good_first = format!("n,,n=user,r={RFC_NONCE}").into_bytes();
    let good_final = rfc7677_final().into_bytes();
    for round in 0..20_000u32 {
        let base: &[u8] = match round % 3 {
            0 => &[],
            1 => &good_first,
            _ => &good_final,
        };
        let mut msg = base.to_vec();
        if msg.is_empty() {
            let len = rng.random_range(0..48);
            msg = (0..len)
                .map(|_| {
                    if rng.random_bool(0.5) {
                        ALPHABET[rng.random_range(0..ALPHABET.len())]
                    } else {
                        rng.random()
                    }
                })
                .collect();
        } else {
            for _ in 0..rng.random_range(1..4) {
                let at = rng.random_range(0..=msg.len());
                match rng.random_range(0..3) {
                    0 if at < msg.len() => msg[at] = rng.random(),
                    1 if at < msg.len() => {
                        msg.remove(at);
                    }
                    _ => msg.insert(at, ALPHABET[rng.random_range(0..ALPHABET.len())]),
                }
            }
        }
        let mut server = ScramServer::new(secret.clone());
        let _ = server.client_first(&msg);
        let mut server = rfc7677_server();
        if server
            .client_first_fixed_nonce(
                format!("n,,n=user,r={RFC_NONCE}").as_bytes(),
                RFC_SERVER_NONCE,
            )
            .is_ok()
        {
            let _ = server.client_final(&msg);
        }
        assert!(server.client_key().is_none() || msg == good_final);
    }
}
