//! Builders for the messages pgferry writes itself (errors, notices, authentication requests,
//! parameter status, ready-for-query, …). They append to the caller's buffer so replies are
//! batched into one write. Encoding reuses `pgwire`'s message types.

use bytes::{BufMut, BytesMut};
use pgwire::messages::extendedquery::CloseComplete;
use pgwire::messages::response::{ErrorResponse, NoticeResponse, ReadyForQuery, TransactionStatus};
use pgwire::messages::startup::{Authentication, NegotiateProtocolVersion, ParameterStatus};
use pgwire::messages::Message;

/// Appends one pgwire message. Encoding into a `BytesMut` only fails for messages beyond
/// pgwire's size limits, which pgferry's short, bounded messages never reach.
fn put<M: Message>(buf: &mut BytesMut, m: &M) {
    let before = buf.len();
    if m.encode(buf).is_err() {
        buf.truncate(before);
        tracing::error!("pgwire refused to encode an internal message");
    }
}

/// Severity of a message pgferry reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    Error,
    Fatal,
    Warning,
    Notice,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
            Severity::Warning => "WARNING",
            Severity::Notice => "NOTICE",
        }
    }
}

fn fields(severity: Severity, code: &str, message: &str) -> Vec<(u8, String)> {
    vec![
        (b'S', severity.as_str().to_owned()),
        (b'V', severity.as_str().to_owned()),
        (b'C', code.to_owned()),
        (b'M', message.to_owned()),
    ]
}

/// ErrorResponse with severity, SQLSTATE and message.
pub fn error(buf: &mut BytesMut, severity: Severity, code: &str, message: &str) {
    put(buf, &ErrorResponse::new(fields(severity, code, message)));
}

/// NoticeResponse with optional detail and hint fields.
pub fn notice_full(
    buf: &mut BytesMut,
    severity: Severity,
    code: &str,
    message: &str,
    detail: Option<&str>,
    hint: Option<&str>,
) {
    let mut f = fields(severity, code, message);
    if let Some(d) = detail {
        f.push((b'D', d.to_owned()));
    }
    if let Some(h) = hint {
        f.push((b'H', h.to_owned()));
    }
    put(buf, &NoticeResponse::new(f));
}

/// NoticeResponse with severity, SQLSTATE and message.
pub fn notice(buf: &mut BytesMut, severity: Severity, code: &str, message: &str) {
    put(buf, &NoticeResponse::new(fields(severity, code, message)));
}

pub fn auth_ok(buf: &mut BytesMut) {
    put(buf, &Authentication::Ok);
}

pub fn auth_cleartext(buf: &mut BytesMut) {
    put(buf, &Authentication::CleartextPassword);
}

pub fn auth_md5(buf: &mut BytesMut, salt: [u8; 4]) {
    put(buf, &Authentication::MD5Password(salt.to_vec()));
}

pub fn auth_sasl(buf: &mut BytesMut) {
    put(buf, &Authentication::SASL(vec!["SCRAM-SHA-256".to_owned()]));
}

pub fn auth_sasl_continue(buf: &mut BytesMut, data: Vec<u8>) {
    put(buf, &Authentication::SASLContinue(data.into()));
}

pub fn auth_sasl_final(buf: &mut BytesMut, data: Vec<u8>) {
    put(buf, &Authentication::SASLFinal(data.into()));
}

pub fn parameter_status(buf: &mut BytesMut, name: &str, value: &str) {
    put(
        buf,
        &ParameterStatus::new(name.to_owned(), value.to_owned()),
    );
}

/// BackendKeyData with a protocol 3.0 (4-byte) secret.
pub fn backend_key_data(buf: &mut BytesMut, pid: i32, secret: i32) {
    buf.put_u8(b'K');
    buf.put_i32(12);
    buf.put_i32(pid);
    buf.put_i32(secret);
}

pub fn ready_for_query(buf: &mut BytesMut, status: u8) {
    let status = match status {
        b'T' => TransactionStatus::Transaction,
        b'E' => TransactionStatus::Error,
        _ => TransactionStatus::Idle,
    };
    put(buf, &ReadyForQuery::new(status));
}

/// ParseComplete, whole.
pub const PARSE_COMPLETE: &[u8] = b"1\0\0\0\x04";

pub fn close_complete(buf: &mut BytesMut) {
    put(buf, &CloseComplete::new());
}

/// NegotiateProtocolVersion: the newest 3.x minor version pgferry speaks, plus the `_pq_.`
/// options it does not understand.
pub fn negotiate_protocol_version(buf: &mut BytesMut, minor: i32, unsupported: Vec<String>) {
    put(buf, &NegotiateProtocolVersion::new(minor, unsupported));
}

/// A StartupMessage (protocol 3.0) as sent to a server.
pub fn startup_message(buf: &mut BytesMut, params: &[(&str, &str)]) {
    let at = buf.len();
    buf.put_i32(0);
    buf.put_i32(196_608);
    for (k, v) in params {
        buf.put_slice(k.as_bytes());
        buf.put_u8(0);
        buf.put_slice(v.as_bytes());
        buf.put_u8(0);
    }
    buf.put_u8(0);
    let len = (buf.len() - at) as i32;
    buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

/// A CancelRequest for a server's backend key.
pub fn cancel_request(buf: &mut BytesMut, pid: i32, secret: i32) {
    buf.put_i32(16);
    buf.put_i32(80_877_102);
    buf.put_i32(pid);
    buf.put_i32(secret);
}

/// A frontend message with one body already laid out (PasswordMessage, SASL responses, …).
pub fn tagged(buf: &mut BytesMut, tag: u8, body: &[u8]) {
    buf.put_u8(tag);
    buf.put_i32((body.len() + 4) as i32);
    buf.put_slice(body);
}

pub fn terminate(buf: &mut BytesMut) {
    tagged(buf, b'X', b"");
}

pub fn sync(buf: &mut BytesMut) {
    tagged(buf, b'S', b"");
}
