//! Logging in to servers as a client's user without knowing the password: the credentials a
//! client's login leaves behind ([`ServerCredentials`], kept per pool in a
//! [`LearnedCredentials`] slot) and the client side of SCRAM-SHA-256 driven by the keys
//! recovered from the client's proof ([`ScramKeysClient`]).
//!
//! SCRAM pass-through works because PostgreSQL answers with the salt and iteration count of
//! the stored verifier, the same verifier pgferry authenticated the client against, so the
//! ClientKey recovered from the client's proof and the verifier's ServerKey are exactly what
//! a client holding the password would derive.

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use parking_lot::RwLock;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use rand::RngCore;

use super::ct_eq;
use super::error::AuthError;
use super::scram::ScramServer;
use super::scram_secret::{hmac_sha256, sha256, ScramSecret};

/// Random bytes in the client nonce (base64: 24 characters).
const CLIENT_NONCE_BYTES: usize = 18;

/// What a SCRAM client needs instead of a password: ClientKey and ServerKey, plus the salt
/// and iteration count of the verifier they belong to. `Debug` shows the iterations only.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramKeys {
    pub client_key: [u8; 32],
    pub server_key: [u8; 32],
    pub salt: Vec<u8>,
    pub iterations: u32,
}

impl fmt::Debug for ScramKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramKeys")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

impl ScramKeys {
    /// Keys for `secret` given the ClientKey a client proved; `None` unless
    /// H(client_key) is the secret's StoredKey.
    pub fn new(secret: &ScramSecret, client_key: [u8; 32]) -> Option<Self> {
        ct_eq(&sha256(&client_key), &secret.stored_key).then(|| Self {
            client_key,
            server_key: secret.server_key,
            salt: secret.salt.clone(),
            iterations: secret.iterations,
        })
    }
}

/// Checks a clear-text `password` against a SCRAM verifier (with PostgreSQL's SASLprep) by
/// running a whole exchange in memory; on success returns the keys for pass-through.
pub fn scram_keys_from_password(secret: &ScramSecret, password: &[u8]) -> Option<ScramKeys> {
    let mut server = ScramServer::new(secret.clone());
    let mut client = ScramSha256::new(password, ChannelBinding::unsupported());
    let first = server.client_first(client.message()).ok()?;
    client.update(&first).ok()?;
    let fin = server.client_final(client.message()).ok()?;
    client.finish(&fin).ok()?;
    server.keys()
}

/// Credentials for logging in to a server as a user.
#[derive(Clone, PartialEq, Eq)]
pub enum ServerCredentials {
    /// A password (from the auth_file or auth_query, never one a client typed).
    Plain(String),
    /// PostgreSQL's `md5…` secret, enough for md5 authentication.
    Md5(String),
    /// Keys recovered from a client's SCRAM proof.
    Scram(ScramKeys),
}

impl fmt::Debug for ServerCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ServerCredentials::Plain(_) => "Plain(<redacted>)",
            ServerCredentials::Md5(_) => "Md5(<redacted>)",
            ServerCredentials::Scram(_) => "Scram(<redacted>)",
        })
    }
}

/// A pool's server credentials learned from client logins: empty until a client of that
/// user has logged in, then replaced by each later login (so a changed password takes over
/// once a client has used it).
#[derive(Default)]
pub struct LearnedCredentials(RwLock<Option<ServerCredentials>>);

impl fmt::Debug for LearnedCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = if self.0.read().is_some() {
            "learned"
        } else {
            "empty"
        };
        f.debug_tuple("LearnedCredentials").field(&state).finish()
    }
}

impl LearnedCredentials {
    pub fn get(&self) -> Option<ServerCredentials> {
        self.0.read().clone()
    }

    pub fn set(&self, creds: ServerCredentials) {
        let mut slot = self.0.write();
        if slot.as_ref() != Some(&creds) {
            *slot = Some(creds);
        }
    }
}

/// Client side of one SCRAM-SHA-256 exchange (no channel binding) authenticated by
/// [`ScramKeys`] instead of a password.
pub struct ScramKeysClient {
    keys: ScramKeys,
    state: ClientState,
}

enum ClientState {
    Initial,
    SentFirst {
        client_first_bare: String,
        nonce: String,
    },
    SentFinal {
        server_signature: [u8; 32],
    },
    Done,
    Failed,
}

impl fmt::Debug for ScramKeysClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            ClientState::Initial => "initial",
            ClientState::SentFirst { .. } => "sent-first",
            ClientState::SentFinal { .. } => "sent-final",
            ClientState::Done => "done",
            ClientState::Failed => "failed",
        };
        f.debug_struct("ScramKeysClient")
            .field("state", &state)
            .finish()
    }
}

impl ScramKeysClient {
    pub fn new(keys: ScramKeys) -> Self {
        Self {
            keys,
            state: ClientState::Initial,
        }
    }

    /// The client-first-message (`n,,n=,r=<nonce>`; PostgreSQL takes the user name from the
    /// startup packet).
    pub fn client_first(&mut self) -> Vec<u8> {
        let mut raw = [0u8; CLIENT_NONCE_BYTES];
        rand::rng().fill_bytes(&mut raw);
        self.client_first_with_nonce(STANDARD.encode(raw))
    }

    fn client_first_with_nonce(&mut self, nonce: String) -> Vec<u8> {
        let client_first_bare = format!("n=,r={nonce}");
        let msg = format!("n,,{client_first_bare}").into_bytes();
        self.state = ClientState::SentFirst {
            client_first_bare,
            nonce,
        };
        msg
    }

    /// Handles the server-first-message (AuthenticationSASLContinue data) and returns the
    /// client-final-message. Fails if the server's salt or iteration count is not the
    /// verifier's: its secret changed and the keys cannot work.
    pub fn server_first(&mut self, msg: &[u8]) -> Result<Vec<u8>, AuthError> {
        let ClientState::SentFirst {
            client_first_bare,
            nonce,
        } = std::mem::replace(&mut self.state, ClientState::Failed)
        else {
            return Err(AuthError::Malformed(
                "unexpected SCRAM server-first-message",
            ));
        };
        let text = std::str::from_utf8(msg)
            .map_err(|_| AuthError::Malformed("SCRAM server-first-message is not UTF-8"))?;
        let mut attrs = text.split(',');
        let server_nonce = attrs
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .ok_or(AuthError::Malformed("SCRAM nonce attribute expected"))?;
        let salt = attrs
            .next()
            .and_then(|a| a.strip_prefix("s="))
            .and_then(|s| STANDARD.decode(s).ok())
            .ok_or(AuthError::Malformed("SCRAM salt attribute expected"))?;
        let iterations: u32 = attrs
            .next()
            .and_then(|a| a.strip_prefix("i="))
            .and_then(|i| i.parse().ok())
            .ok_or(AuthError::Malformed("SCRAM iteration count expected"))?;
        if server_nonce.len() <= nonce.len() || !server_nonce.starts_with(nonce.as_str()) {
            return Err(AuthError::Malformed(
                "SCRAM server nonce does not extend ours",
            ));
        }
        if salt != self.keys.salt || iterations != self.keys.iterations {
            return Err(AuthError::SecretChanged);
        }
        let without_proof = format!("c=biws,r={server_nonce}");
        let auth_message: &[&[u8]] = &[
            client_first_bare.as_bytes(),
            b",",
            msg,
            b",",
            without_proof.as_bytes(),
        ];
        let stored_key = sha256(&self.keys.client_key);
        let signature = hmac_sha256(&stored_key, auth_message);
        let mut proof = self.keys.client_key;
        for (p, s) in proof.iter_mut().zip(signature) {
            *p ^= s;
        }
        self.state = ClientState::SentFinal {
            server_signature: hmac_sha256(&self.keys.server_key, auth_message),
        };
        Ok(format!("{without_proof},p={}", STANDARD.encode(proof)).into_bytes())
    }

    /// Checks the server-final-message (AuthenticationSASLFinal data): the server must prove
    /// it knows the ServerKey.
    pub fn server_final(&mut self, msg: &[u8]) -> Result<(), AuthError> {
        let ClientState::SentFinal { server_signature } =
            std::mem::replace(&mut self.state, ClientState::Failed)
        else {
            return Err(AuthError::Malformed(
                "unexpected SCRAM server-final-message",
            ));
        };
        if msg.starts_with(b"e=") {
            return Err(AuthError::Malformed("server reported a SCRAM error"));
        }
        let given = msg
            .split(|&b| b == b',')
            .next()
            .and_then(|v| v.strip_prefix(b"v="))
            .and_then(|v| STANDARD.decode(v).ok())
            .ok_or(AuthError::Malformed("SCRAM server signature expected"))?;
        if !ct_eq(&given, &server_signature) {
            return Err(AuthError::ServerSignature);
        }
        self.state = ClientState::Done;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn keys_for(password: &str) -> (ScramSecret, ScramKeys) {
        let secret = ScramSecret::from_password(password);
        let keys = scram_keys_from_password(&secret, password.as_bytes()).unwrap();
        (secret, keys)
    }

    /// Our keys client against our SCRAM server; returns the server's verdict.
    fn run(secret: &ScramSecret, keys: ScramKeys) -> Result<(), AuthError> {
        let mut server = ScramServer::new(secret.clone());
        let mut client = ScramKeysClient::new(keys);
        let first = server.client_first(&client.client_first())?;
        let fin = server.client_final(&client.server_first(&first)?)?;
        client.server_final(&fin)
    }

    #[test]
    fn password_check_against_verifier() {
        let secret = ScramSecret::from_password("sésame");
        let keys = scram_keys_from_password(&secret, "sésame".as_bytes()).unwrap();
        assert_eq!(sha256(&keys.client_key), secret.stored_key);
        assert_eq!(keys.server_key, secret.server_key);
        assert_eq!(ScramKeys::new(&secret, keys.client_key), Some(keys));
        assert_eq!(scram_keys_from_password(&secret, b"sesame"), None);
        assert_eq!(ScramKeys::new(&secret, [7; 32]), None);
    }

    #[test]
    fn keys_client_logs_in() {
        let (secret, keys) = keys_for("pencil");
        run(&secret, keys).unwrap();
    }

    #[test]
    fn keys_client_agrees_with_postgres_protocol_password_client() {
        // The same nonce and server-first give the same final message as a client that
        // knows the password.
        let secret = ScramSecret::from_password("pencil");
        let keys = ScramKeys::new(
            &secret,
            scram_keys_from_password(&secret, b"pencil")
                .unwrap()
                .client_key,
        )
        .unwrap();
        let mut ours = ScramKeysClient::new(keys);
        ours.client_first_with_nonce("abcdef".into());
        let server_first = format!(
            "r=abcdefSERVER,s={},i={}",
            STANDARD.encode(&secret.salt),
            secret.iterations
        );
        let fin = ours.server_first(server_first.as_bytes()).unwrap();
        // compute the expected proof from the password, independently
        let salted = super::super::scram_secret::hi(b"pencil", &secret.salt, secret.iterations);
        let client_key = hmac_sha256(&salted, &[b"Client Key"]);
        let auth = format!("n=,r=abcdef,{server_first},c=biws,r=abcdefSERVER");
        let sig = hmac_sha256(&sha256(&client_key), &[auth.as_bytes()]);
        let proof: Vec<u8> = client_key.iter().zip(sig).map(|(k, s)| k ^ s).collect();
        assert_eq!(
            String::from_utf8(fin).unwrap(),
            format!("c=biws,r=abcdefSERVER,p={}", STANDARD.encode(proof))
        );
    }

    #[test]
    fn wrong_keys_or_changed_secret_fail() {
        let (secret, keys) = keys_for("pencil");
        let mut bad = keys.clone();
        bad.client_key[0] ^= 1;
        assert_eq!(run(&secret, bad), Err(AuthError::PasswordMismatch));
        // same password, new salt: the server's secret changed
        let other = ScramSecret::from_password("pencil");
        assert_eq!(run(&other, keys.clone()), Err(AuthError::SecretChanged));
        // a server that does not know the ServerKey is caught
        let mut forged = secret;
        forged.server_key[0] ^= 1;
        assert_eq!(run(&forged, keys), Err(AuthError::ServerSignature));
    }

    #[test]
    fn malformed_server_messages() {
        let (secret, keys) = keys_for("pw");
        let salt = STANDARD.encode(&secret.salt);
        let iters = secret.iterations;
        for msg in [
            String::new(),
            "r=abc".into(),
            format!("r=abcdef,s={salt},i={iters}"), // does not extend our nonce
            format!("r=abcdefX,s=!!,i={iters}"),
            format!("r=abcdefX,s={salt},i=x"),
            format!("r=abcdefX,s={salt}"),
            format!("s={salt},r=abcdefX,i={iters}"),
        ] {
            let mut c = ScramKeysClient::new(keys.clone());
            c.client_first_with_nonce("abcdef".into());
            assert!(c.server_first(msg.as_bytes()).is_err(), "{msg:?}");
            assert!(c.server_final(b"v=AAAA").is_err());
        }
        let mut c = ScramKeysClient::new(keys.clone());
        c.client_first_with_nonce("abcdef".into());
        c.server_first(format!("r=abcdefX,s={salt},i={iters}").as_bytes())
            .unwrap();
        assert!(c.server_final(b"e=invalid-proof").is_err());
        let mut c = ScramKeysClient::new(keys);
        assert!(c.server_first(b"r=x,s=AAAA,i=1").is_err());
        assert!(c.server_first(&[0xff, 0xfe]).is_err());
    }

    #[test]
    fn learned_slot_replaces() {
        let slot = LearnedCredentials::default();
        assert_eq!(slot.get(), None);
        slot.set(ServerCredentials::Md5("md5x".into()));
        slot.set(ServerCredentials::Plain("pw".into()));
        assert_eq!(slot.get(), Some(ServerCredentials::Plain("pw".into())));
        assert!(!format!("{slot:?}{:?}", slot.get()).contains("pw"));
    }
}
