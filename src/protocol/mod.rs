//! Wire-protocol framing for PostgreSQL v3 messages: splitting a byte stream into frames with
//! every length checked before anything is allocated, typed views of the few messages pgferry
//! must understand, and builders for the messages pgferry writes itself. No I/O lives here.

pub mod build;
pub mod startup;
pub mod views;

use bytes::{Bytes, BytesMut};

/// One complete tagged message exactly as it arrived: tag byte, 4-byte length, body.
///
/// Forwarding a frame means copying `raw` to the other side untouched; nothing is re-encoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    raw: Bytes,
}

impl Frame {
    /// Wraps bytes known to hold one whole message (tag + length + body).
    pub fn from_raw(raw: Bytes) -> Frame {
        debug_assert!(raw.len() >= 5);
        Frame { raw }
    }

    /// The message type byte.
    pub fn tag(&self) -> u8 {
        self.raw[0]
    }

    /// The body after the length word.
    pub fn body(&self) -> &[u8] {
        &self.raw[5..]
    }

    /// The body as shared `Bytes` (no copy).
    pub fn body_bytes(&self) -> Bytes {
        self.raw.slice(5..)
    }

    /// The whole message as it travels on the wire.
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }

    pub fn len(&self) -> usize {
        self.raw.len()
    }

    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }
}

/// Why a byte stream could not be framed. The connection that sent it is closed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("invalid message length {0}")]
    BadLength(i64),
    #[error("message of {len} bytes exceeds max_packet_size ({max})")]
    TooLarge { len: usize, max: usize },
    #[error("malformed {0} message")]
    Malformed(&'static str),
}

/// Outcome of looking for one frame at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Split {
    /// A whole frame was removed from the front of the buffer.
    Frame(Frame),
    /// More bytes are needed; `missing` is how many at least (already validated against the limit).
    Incomplete { missing: usize },
}

/// Removes one tagged message from the front of `buf` if it is complete.
///
/// The declared length is validated (≥ 4 and ≤ `max_len`) before the caller reserves anything
/// for it, so a hostile length never causes a large allocation.
pub fn split_frame(buf: &mut BytesMut, max_len: usize) -> Result<Split, FrameError> {
    Ok(match measure_frame(buf, max_len)? {
        Measured::Whole(total) => Split::Frame(Frame {
            raw: buf.split_to(total).freeze(),
        }),
        Measured::Incomplete { missing } => Split::Incomplete { missing },
    })
}

/// How much of the message at the start of a buffer is there.
#[derive(Debug, PartialEq, Eq)]
pub enum Measured {
    /// The whole message is there: this many bytes (tag, length word and body).
    Whole(usize),
    /// More bytes are needed; `missing` is how many at least (already validated against the limit).
    Incomplete { missing: usize },
}

/// The size of the tagged message at the start of `buf`, with the same checks as
/// [`split_frame`], without taking it.
pub fn measure_frame(buf: &[u8], max_len: usize) -> Result<Measured, FrameError> {
    let [_, a, b, c, d, ..] = *buf else {
        return Ok(Measured::Incomplete {
            missing: 5 - buf.len(),
        });
    };
    let declared = i32::from_be_bytes([a, b, c, d]);
    if declared < 4 {
        return Err(FrameError::BadLength(i64::from(declared)));
    }
    // `declared` is positive here, so the conversion cannot fail on any supported platform.
    let len = usize::try_from(declared).map_err(|_| FrameError::BadLength(i64::from(declared)))?;
    if len > max_len {
        return Err(FrameError::TooLarge { len, max: max_len });
    }
    let total = len + 1;
    Ok(match buf.len() < total {
        true => Measured::Incomplete {
            missing: total - buf.len(),
        },
        false => Measured::Whole(total),
    })
}

/// A borrowed message: the accessors of [`Frame`] over bytes someone else owns.
#[derive(Clone, Copy, Debug)]
pub struct FrameRef<'a> {
    raw: &'a [u8],
}

impl<'a> FrameRef<'a> {
    /// Wraps bytes known to hold one whole message (tag + length + body).
    pub fn new(raw: &'a [u8]) -> FrameRef<'a> {
        debug_assert!(raw.len() >= 5);
        FrameRef { raw }
    }

    pub fn tag(&self) -> u8 {
        self.raw[0]
    }

    pub fn body(&self) -> &'a [u8] {
        &self.raw[5..]
    }

    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }

    pub fn len(&self) -> usize {
        self.raw.len()
    }

    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }
}

impl Frame {
    /// This frame as a [`FrameRef`].
    pub fn as_view(&self) -> FrameRef<'_> {
        FrameRef { raw: &self.raw }
    }
}

/// Frontend message tags pgferry acts on.
pub mod tag {
    pub const QUERY: u8 = b'Q';
    pub const PARSE: u8 = b'P';
    pub const BIND: u8 = b'B';
    pub const DESCRIBE: u8 = b'D';
    pub const EXECUTE: u8 = b'E';
    pub const CLOSE: u8 = b'C';
    pub const SYNC: u8 = b'S';
    pub const FLUSH: u8 = b'H';
    pub const TERMINATE: u8 = b'X';
    pub const COPY_DATA: u8 = b'd';
    pub const COPY_DONE: u8 = b'c';
    pub const COPY_FAIL: u8 = b'f';
    pub const FUNCTION_CALL: u8 = b'F';
    pub const PASSWORD: u8 = b'p';

    // Backend tags.
    pub const AUTHENTICATION: u8 = b'R';
    pub const BACKEND_KEY_DATA: u8 = b'K';
    pub const PARAMETER_STATUS: u8 = b'S';
    pub const READY_FOR_QUERY: u8 = b'Z';
    pub const ERROR_RESPONSE: u8 = b'E';
    pub const NOTICE_RESPONSE: u8 = b'N';
    pub const NOTIFICATION_RESPONSE: u8 = b'A';
    pub const COMMAND_COMPLETE: u8 = b'C';
    pub const EMPTY_QUERY: u8 = b'I';
    pub const PORTAL_SUSPENDED: u8 = b's';
    pub const PARSE_COMPLETE: u8 = b'1';
    pub const BIND_COMPLETE: u8 = b'2';
    pub const CLOSE_COMPLETE: u8 = b'3';
    pub const NO_DATA: u8 = b'n';
    pub const PARAMETER_DESCRIPTION: u8 = b't';
    pub const ROW_DESCRIPTION: u8 = b'T';
    pub const DATA_ROW: u8 = b'D';
    pub const COPY_IN: u8 = b'G';
    pub const COPY_OUT: u8 = b'H';
    pub const COPY_BOTH: u8 = b'W';
    pub const NEGOTIATE_PROTOCOL: u8 = b'v';
}

#[cfg(test)]
mod tests;
