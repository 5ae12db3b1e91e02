//! A tiny raw PostgreSQL wire-protocol client for tests that need exact control over the bytes
//! sent to pgferry: startup, arbitrary messages, and reading replies as `(tag, body)` pairs.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a single read waits before the test fails instead of hanging.
pub const READ_TIMEOUT: Duration = Duration::from_secs(15);

/// One backend message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Msg {
    pub tag: u8,
    pub body: Vec<u8>,
}

impl Msg {
    /// SQLSTATE (`C` field) of an ErrorResponse / NoticeResponse.
    pub fn sqlstate(&self) -> Option<String> {
        field(&self.body, b'C')
    }

    /// Message (`M` field) of an ErrorResponse / NoticeResponse.
    pub fn message(&self) -> Option<String> {
        field(&self.body, b'M')
    }

    /// Severity (`S` field) of an ErrorResponse / NoticeResponse.
    pub fn severity(&self) -> Option<String> {
        field(&self.body, b'S')
    }

    /// Text values of a DataRow (NULL as `None`).
    pub fn data_row(&self) -> Vec<Option<String>> {
        assert_eq!(self.tag, b'D', "not a DataRow: {self:?}");
        let b = &self.body;
        let n = i16::from_be_bytes([b[0], b[1]]) as usize;
        let mut at = 2;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let len = i32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
            at += 4;
            if len < 0 {
                out.push(None);
            } else {
                let l = len as usize;
                out.push(Some(String::from_utf8_lossy(&b[at..at + l]).into_owned()));
                at += l;
            }
        }
        out
    }

    /// Transaction status of a ReadyForQuery.
    pub fn ready_status(&self) -> u8 {
        assert_eq!(self.tag, b'Z', "not a ReadyForQuery: {self:?}");
        self.body[0]
    }
}

/// A field of an ErrorResponse/NoticeResponse body.
pub fn field(body: &[u8], code: u8) -> Option<String> {
    let mut rest = body;
    while let Some((&t, after)) = rest.split_first() {
        if t == 0 {
            return None;
        }
        let nul = after.iter().position(|&b| b == 0)?;
        if t == code {
            return Some(String::from_utf8_lossy(&after[..nul]).into_owned());
        }
        rest = &after[nul + 1..];
    }
    None
}

/// What a read produced.
#[derive(Debug)]
pub enum Read {
    Msg(Msg),
    /// The peer closed the connection (or reset it).
    Eof,
    /// Nothing arrived within the timeout.
    Timeout,
}

pub struct Raw {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

// ----- message builders ------------------------------------------------------------------

/// A tagged message with a correct length word.
pub fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(body.len() + 5);
    v.push(tag);
    v.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn cstr(v: &mut Vec<u8>, s: &str) {
    v.extend_from_slice(s.as_bytes());
    v.push(0);
}

/// Untagged startup packet for protocol `major.minor` with the given parameters.
pub fn startup_packet(major: u16, minor: u16, params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&((u32::from(major) << 16) | u32::from(minor)).to_be_bytes());
    for (k, v) in params {
        cstr(&mut body, k);
        cstr(&mut body, v);
    }
    body.push(0);
    let mut out = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

pub fn query(sql: &str) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, sql);
    msg(b'Q', &b)
}

/// Parse with no declared parameter types.
pub fn parse(name: &str, sql: &str) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, name);
    cstr(&mut b, sql);
    b.extend_from_slice(&0i16.to_be_bytes());
    msg(b'P', &b)
}

/// Bind with text-format parameters (`None` = NULL) and text results.
pub fn bind(portal: &str, stmt: &str, params: &[Option<&str>]) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, portal);
    cstr(&mut b, stmt);
    b.extend_from_slice(&0i16.to_be_bytes()); // all parameters text
    b.extend_from_slice(&(params.len() as i16).to_be_bytes());
    for p in params {
        match p {
            Some(s) => {
                b.extend_from_slice(&(s.len() as i32).to_be_bytes());
                b.extend_from_slice(s.as_bytes());
            }
            None => b.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }
    b.extend_from_slice(&0i16.to_be_bytes()); // all results text
    msg(b'B', &b)
}

/// Describe of a statement (`kind` b'S') or portal (b'P').
pub fn describe(kind: u8, name: &str) -> Vec<u8> {
    let mut b = vec![kind];
    cstr(&mut b, name);
    msg(b'D', &b)
}

pub fn execute(portal: &str, max_rows: i32) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, portal);
    b.extend_from_slice(&max_rows.to_be_bytes());
    msg(b'E', &b)
}

/// Close of a statement (`kind` b'S') or portal (b'P').
pub fn close(kind: u8, name: &str) -> Vec<u8> {
    let mut b = vec![kind];
    cstr(&mut b, name);
    msg(b'C', &b)
}

pub fn sync() -> Vec<u8> {
    msg(b'S', &[])
}

pub fn flush() -> Vec<u8> {
    msg(b'H', &[])
}

pub fn terminate() -> Vec<u8> {
    msg(b'X', &[])
}

/// Bind (unnamed portal) + Execute of a named statement, no Sync.
pub fn bind_execute(stmt: &str, params: &[Option<&str>]) -> Vec<u8> {
    let mut v = bind("", stmt, params);
    v.extend(execute("", 0));
    v
}

// ----- the client ------------------------------------------------------------------------

impl Raw {
    /// A TCP connection, nothing sent yet.
    pub async fn connect(addr: SocketAddr) -> Raw {
        let stream = tokio::time::timeout(READ_TIMEOUT, TcpStream::connect(addr))
            .await
            .expect("connect timed out")
            .expect("connect to pgferry");
        stream.set_nodelay(true).expect("test helper");
        Raw {
            stream,
            buf: Vec::new(),
        }
    }

    /// Connects and logs in as `app` to `shop` (pgferry must use trust auth), returning the
    /// messages of the login reply up to and including ReadyForQuery.
    pub async fn login(addr: SocketAddr) -> (Raw, Vec<Msg>) {
        Raw::login_as(addr, "app", "shop").await
    }

    /// Connects and logs in without a password exchange (trust) as `user` to `db`.
    pub async fn login_as(addr: SocketAddr, user: &str, db: &str) -> (Raw, Vec<Msg>) {
        let mut r = Raw::connect(addr).await;
        r.send(&startup_packet(3, 0, &[("user", user), ("database", db)]))
            .await;
        let msgs = r.until_ready().await;
        assert_eq!(msgs[0].tag, b'R', "login reply: {msgs:?}");
        (r, msgs)
    }

    /// Logs in and returns only the client.
    pub async fn ready(addr: SocketAddr) -> Raw {
        Raw::login(addr).await.0
    }

    /// Writes bytes; errors (the peer already closed) are ignored, reads will tell.
    pub async fn send(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
        let _ = self.stream.flush().await;
    }

    /// Writes bytes, reporting whether the write succeeded.
    pub async fn try_send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    /// Reads one raw byte (for the 'N' answer to SSLRequest/GSSENCRequest).
    pub async fn read_byte(&mut self) -> Option<u8> {
        if !self.buf.is_empty() {
            return Some(self.buf.remove(0));
        }
        let mut b = [0u8; 1];
        match tokio::time::timeout(READ_TIMEOUT, self.stream.read(&mut b)).await {
            Ok(Ok(1)) => Some(b[0]),
            Ok(_) => None,
            Err(_) => panic!("timed out waiting for one byte"),
        }
    }

    /// The next message, EOF, or a timeout after `wait`.
    pub async fn read_within(&mut self, wait: Duration) -> Read {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if self.buf.len() >= 5 {
                let len = i32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
                assert!(len >= 4, "pgferry sent a bad length {len}");
                let total = len as usize + 1;
                if self.buf.len() >= total {
                    let m = Msg {
                        tag: self.buf[0],
                        body: self.buf[5..total].to_vec(),
                    };
                    self.buf.drain(..total);
                    return Read::Msg(m);
                }
            }
            let mut chunk = [0u8; 8192];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return Read::Timeout,
                Ok(Ok(0)) | Ok(Err(_)) => return Read::Eof,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// The next message, or `None` at EOF. Panics after [`READ_TIMEOUT`].
    pub async fn read(&mut self) -> Option<Msg> {
        match self.read_within(READ_TIMEOUT).await {
            Read::Msg(m) => Some(m),
            Read::Eof => None,
            Read::Timeout => panic!("no message from pgferry within {READ_TIMEOUT:?}"),
        }
    }

    /// The next message; panics on EOF or timeout.
    pub async fn expect_msg(&mut self) -> Msg {
        self.read()
            .await
            .expect("pgferry closed the connection unexpectedly")
    }

    /// Messages up to and including the next ReadyForQuery. Panics on EOF or timeout.
    pub async fn until_ready(&mut self) -> Vec<Msg> {
        let mut out = Vec::new();
        loop {
            let Some(m) = self.read().await else {
                panic!("EOF before ReadyForQuery; got {out:?}");
            };
            let done = m.tag == b'Z';
            out.push(m);
            if done {
                return out;
            }
        }
    }

    /// Messages until EOF (panics if the connection stays open past the timeout).
    pub async fn until_eof(&mut self) -> Vec<Msg> {
        let mut out = Vec::new();
        loop {
            match self.read_within(READ_TIMEOUT).await {
                Read::Msg(m) => out.push(m),
                Read::Eof => return out,
                Read::Timeout => panic!("connection still open; got {out:?}"),
            }
        }
    }

    /// Sends `bytes` followed by nothing else and returns the replies up to ReadyForQuery.
    pub async fn roundtrip(&mut self, bytes: &[u8]) -> Vec<Msg> {
        self.send(bytes).await;
        self.until_ready().await
    }

    /// Runs a simple query and returns the first column of every row.
    pub async fn simple(&mut self, sql: &str) -> Vec<Option<String>> {
        let msgs = self.roundtrip(&query(sql)).await;
        if let Some(e) = msgs.iter().find(|m| m.tag == b'E') {
            panic!("query {sql:?} failed: {:?}", e.message());
        }
        msgs.iter()
            .filter(|m| m.tag == b'D')
            .map(|m| m.data_row().swap_remove(0))
            .collect()
    }
}

/// Tags of a list of messages as a string, e.g. "12DCZ".
pub fn tags(msgs: &[Msg]) -> String {
    msgs.iter().map(|m| m.tag as char).collect()
}

/// First column of every DataRow in `msgs`.
pub fn first_column(msgs: &[Msg]) -> Vec<String> {
    msgs.iter()
        .filter(|m| m.tag == b'D')
        .map(|m| m.data_row()[0].clone().unwrap_or_default())
        .collect()
}

/// The ErrorResponses in `msgs` as (SQLSTATE, message).
pub fn errors(msgs: &[Msg]) -> Vec<(String, String)> {
    msgs.iter()
        .filter(|m| m.tag == b'E')
        .map(|m| {
            (
                m.sqlstate().unwrap_or_default(),
                m.message().unwrap_or_default(),
            )
        })
        .collect()
}
