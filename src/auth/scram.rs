//! The server side of SCRAM-SHA-256 (RFC 5802 / RFC 7677) as PostgreSQL runs
//! it towards clients: [`ScramServer`], a two-step state machine fed the
//! SASLInitialResponse and SASLResponse bodies.
//!
//! Like PostgreSQL without TLS channel binding, only the gs2 headers `n,,`
//! and `y,,` are accepted; `p=` (channel binding), an authorization identity
//! and mandatory extensions (`m=`) are refused. The username inside the
//! client-first-message is ignored: the startup packet's user is the one
//! being authenticated.

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use rand::RngCore;

use super::ct_eq;
use super::error::AuthError;
use super::passthrough::ScramKeys;
use super::scram_secret::{hmac_sha256, sha256, ScramSecret};

/// Random bytes in the server's part of the nonce (base64: 24 characters).
const SERVER_NONCE_BYTES: usize = 18;

/// Server side of one SCRAM-SHA-256 exchange with one client.
pub struct ScramServer {
    secret: ScramSecret,
    state: State,
}

enum State {
    /// Waiting for the client-first-message.
    Initial,
    /// server-first-message sent, waiting for the client-final-message.
    SentServerFirst {
        gs2_header: &'static [u8],
        client_first_bare: Vec<u8>,
        server_first: Vec<u8>,
        /// client nonce followed by server nonce
        nonce: Vec<u8>,
    },
    /// Authenticated.
    Done { client_key: [u8; 32] },
    /// A step failed; the exchange cannot continue.
    Failed,
}

impl fmt::Debug for ScramServer {
    /// Shows the state only, never key material.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Initial => "initial",
            State::SentServerFirst { .. } => "sent-server-first",
            State::Done { .. } => "done",
            State::Failed => "failed",
        };
        f.debug_struct("ScramServer")
            .field("state", &state)
            .finish()
    }
}

impl ScramServer {
    /// Starts an exchange that authenticates against `secret`.
    pub fn new(secret: ScramSecret) -> Self {
        Self {
            secret,
            state: State::Initial,
        }
    }

    /// Handles the client-first-message (the SASLInitialResponse data after
    /// the mechanism name and length) and returns the server-first-message
    /// to send in AuthenticationSASLContinue.
    pub fn client_first(&mut self, msg: &[u8]) -> Result<Vec<u8>, AuthError> {
        let mut server_nonce = [0u8; SERVER_NONCE_BYTES];
        rand::rng().fill_bytes(&mut server_nonce);
        self.client_first_with_nonce(msg, STANDARD.encode(server_nonce).as_bytes())
    }

    fn client_first_with_nonce(
        &mut self,
        msg: &[u8],
        server_nonce: &[u8],
    ) -> Result<Vec<u8>, AuthError> {
        if !matches!(
            std::mem::replace(&mut self.state, State::Failed),
            State::Initial
        ) {
            return Err(AuthError::Malformed(
                "unexpected SCRAM client-first-message",
            ));
        }
        let first = parse_client_first(msg)?;
        let mut nonce = first.client_nonce.to_vec();
        nonce.extend_from_slice(server_nonce);
        let server_first = format!(
            "r={},s={},i={}",
            String::from_utf8_lossy(&nonce),
            STANDARD.encode(&self.secret.salt),
            self.secret.iterations
        )
        .into_bytes();
        self.state = State::SentServerFirst {
            gs2_header: first.gs2_header,
            client_first_bare: first.bare.to_vec(),
            server_first: server_first.clone(),
            nonce,
        };
        Ok(server_first)
    }

    /// Handles the client-final-message (the SASLResponse data) and returns
    /// the server-final-message (`v=...`) to send in AuthenticationSASLFinal.
    /// A wrong proof yields [`AuthError::PasswordMismatch`].
    pub fn client_final(&mut self, msg: &[u8]) -> Result<Vec<u8>, AuthError> {
        let State::SentServerFirst {
            gs2_header,
            client_first_bare,
            server_first,
            nonce,
        } = std::mem::replace(&mut self.state, State::Failed)
        else {
            return Err(AuthError::Malformed(
                "unexpected SCRAM client-final-message",
            ));
        };
        let fin = parse_client_final(msg)?;

        let channel_binding = STANDARD
            .decode(fin.channel_binding)
            .map_err(|_| AuthError::Malformed("SCRAM channel binding is not valid base64"))?;
        if channel_binding != gs2_header {
            return Err(AuthError::Malformed("SCRAM channel binding check failed"));
        }
        if fin.nonce != nonce.as_slice() {
            return Err(AuthError::Malformed("SCRAM nonce mismatch"));
        }
        let proof: [u8; 32] = STANDARD
            .decode(fin.proof)
            .ok()
            .and_then(|p| p.try_into().ok())
            .ok_or(AuthError::Malformed("SCRAM client proof is invalid"))?;

        let auth_message: &[&[u8]] = &[
            &client_first_bare,
            b",",
            &server_first,
            b",",
            fin.without_proof,
        ];
        let client_signature = hmac_sha256(&self.secret.stored_key, auth_message);
        let mut client_key = proof;
        for (k, s) in client_key.iter_mut().zip(client_signature) {
            *k ^= s;
        }
        if !ct_eq(&sha256(&client_key), &self.secret.stored_key) {
            return Err(AuthError::PasswordMismatch);
        }
        let server_signature = hmac_sha256(&self.secret.server_key, auth_message);
        self.state = State::Done { client_key };
        Ok(format!("v={}", STANDARD.encode(server_signature)).into_bytes())
    }

    /// The client's ClientKey (ClientProof XOR ClientSignature), available
    /// once [`client_final`](Self::client_final) has succeeded.
    pub fn client_key(&self) -> Option<[u8; 32]> {
        match self.state {
            State::Done { client_key } => Some(client_key),
            _ => None,
        }
    }

    /// ClientKey and ServerKey (with the verifier's salt and iterations), available once
    /// [`client_final`](Self::client_final) has succeeded: what logging in to PostgreSQL as
    /// this user takes (SCRAM pass-through).
    pub fn keys(&self) -> Option<ScramKeys> {
        ScramKeys::new(&self.secret, self.client_key()?)
    }
}

struct ClientFirst<'a> {
    gs2_header: &'static [u8],
    bare: &'a [u8],
    client_nonce: &'a [u8],
}

fn parse_client_first(msg: &[u8]) -> Result<ClientFirst<'_>, AuthError> {
    if memchr::memchr(0, msg).is_some() {
        return Err(AuthError::Malformed("NUL byte in SCRAM message"));
    }
    let gs2_header: &'static [u8] = match msg.first() {
        Some(b'n') => b"n,,",
        Some(b'y') => b"y,,",
        Some(b'p') => return Err(AuthError::Unsupported("SCRAM channel binding")),
        _ => return Err(AuthError::Malformed("invalid SCRAM gs2 header")),
    };
    if msg.get(1) != Some(&b',') {
        return Err(AuthError::Malformed("invalid SCRAM gs2 header"));
    }
    if msg.get(2..4) == Some(b"a=") {
        return Err(AuthError::Unsupported("SCRAM authorization identity"));
    }
    if msg.get(2) != Some(&b',') {
        return Err(AuthError::Malformed("invalid SCRAM gs2 header"));
    }
    let bare = msg.get(3..).unwrap_or_default();
    let mut attrs = bare.split(|&b| b == b',');
    let user = attrs.next().unwrap_or_default();
    if user.starts_with(b"m=") {
        return Err(AuthError::Unsupported("SCRAM mandatory extension"));
    }
    if !user.starts_with(b"n=") {
        return Err(AuthError::Malformed("SCRAM username attribute expected"));
    }
    let client_nonce = attrs
        .next()
        .and_then(|a| a.strip_prefix(b"r="))
        .ok_or(AuthError::Malformed("SCRAM nonce attribute expected"))?;
    if client_nonce.is_empty() || !client_nonce.iter().all(|&b| (0x21..=0x7e).contains(&b)) {
        return Err(AuthError::Malformed("SCRAM nonce is not printable"));
    }
    // optional extensions are ignored, but must look like attributes
    if !attrs.all(is_attribute) {
        return Err(AuthError::Malformed("invalid SCRAM attribute"));
    }
    Ok(ClientFirst {
        gs2_header,
        bare,
        client_nonce,
    })
}

struct ClientFinal<'a> {
    channel_binding: &'a [u8],
    nonce: &'a [u8],
    without_proof: &'a [u8],
    proof: &'a [u8],
}

fn parse_client_final(msg: &[u8]) -> Result<ClientFinal<'_>, AuthError> {
    if memchr::memchr(0, msg).is_some() {
        return Err(AuthError::Malformed("NUL byte in SCRAM message"));
    }
    // The proof is the last attribute; what precedes its comma is the
    // client-final-message-without-proof.
    let last_comma =
        memchr::memrchr(b',', msg).ok_or(AuthError::Malformed("SCRAM client proof expected"))?;
    let without_proof = msg.get(..last_comma).unwrap_or_default();
    let proof = msg
        .get(last_comma + 1..)
        .and_then(|p| p.strip_prefix(b"p="))
        .ok_or(AuthError::Malformed("SCRAM client proof expected"))?;
    let mut attrs = without_proof.split(|&b| b == b',');
    let channel_binding =
        attrs
            .next()
            .and_then(|a| a.strip_prefix(b"c="))
            .ok_or(AuthError::Malformed(
                "SCRAM channel binding attribute expected",
            ))?;
    let nonce = attrs
        .next()
        .and_then(|a| a.strip_prefix(b"r="))
        .ok_or(AuthError::Malformed("SCRAM nonce attribute expected"))?;
    if !attrs.all(is_attribute) {
        return Err(AuthError::Malformed("invalid SCRAM attribute"));
    }
    Ok(ClientFinal {
        channel_binding,
        nonce,
        without_proof,
        proof,
    })
}

/// `<letter>=...`, the shape of any SCRAM attribute.
fn is_attribute(attr: &[u8]) -> bool {
    matches!(attr, [name, b'=', ..] if name.is_ascii_alphabetic())
}

#[cfg(test)]
impl ScramServer {
    /// Like [`ScramServer::client_first`] with a chosen server nonce.
    pub(super) fn client_first_fixed_nonce(
        &mut self,
        msg: &[u8],
        server_nonce: &str,
    ) -> Result<Vec<u8>, AuthError> {
        self.client_first_with_nonce(msg, server_nonce.as_bytes())
    }
}
