//! Buffered, cancel-safe frame I/O over one socket. Reads fill a buffer that lives in the
//! connection, so a `read` future can be dropped inside `select!` without losing bytes; writes
//! are appended to an output buffer and sent in one syscall when the caller flushes.

use crate::protocol::startup::{check_startup_len, parse_startup, StartupPacket};
use crate::protocol::{measure_frame, split_frame, Frame, FrameError, FrameRef, Measured, Split};
use bytes::{Buf, BytesMut};
use std::io;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

mod bufpool;
mod cert_name;
mod stream;
mod tcp;
pub mod tls;
pub use cert_name::common_name;
pub use stream::Stream;
pub use tcp::TcpTuning;

/// Read buffer size for one read call; also the size up to which output is batched.
const CHUNK: usize = 16 * 1024;
/// Reads go into the buffer's free room until less than this is left.
const MIN_ROOM: usize = 4096;
/// Output is flushed once this much is queued, so a large result never piles up in memory.
pub const FLUSH_AT: usize = 64 * 1024;

/// Frames up to this size are copied out of the read buffer rather than split off it.
pub const COPY_UP_TO: usize = 256;

/// What [`Conn::take_frame`] took.
pub enum Taken {
    /// The frame is in the caller's buffer.
    Copied,
    /// A frame too large to copy.
    Split(Frame),
}

impl Taken {
    /// The frame taken: in `small` (the buffer given to `take_frame`) or split off.
    pub fn view<'a>(&'a self, small: &'a [u8]) -> FrameRef<'a> {
        match self {
            Taken::Copied => FrameRef::new(small),
            Taken::Split(f) => f.as_view(),
        }
    }
}

/// Why a connection stopped.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("connection closed by peer")]
    Closed,
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// One socket with its read and write buffers.
pub struct Conn<S> {
    stream: S,
    rbuf: BytesMut,
    wbuf: BytesMut,
    max_len: usize,
    /// Bytes still needed to complete the frame at the front of `rbuf` (from the last split).
    want: usize,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    pub fn new(stream: S, max_len: usize) -> Self {
        Conn {
            stream,
            rbuf: BytesMut::new(),
            wbuf: BytesMut::new(),
            max_len,
            want: 5,
        }
    }

    /// The transport, without the buffers (whatever they hold is dropped).
    pub fn into_stream(self) -> S {
        self.stream
    }

    pub fn stream(&self) -> &S {
        &self.stream
    }

    pub fn stream_mut(&mut self) -> &mut S {
        &mut self.stream
    }

    /// A whole frame already in the buffer, without waiting.
    pub fn try_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        match split_frame(&mut self.rbuf, self.max_len)? {
            Split::Frame(f) => {
                self.want = 5;
                Ok(Some(f))
            }
            Split::Incomplete { missing } => {
                self.want = missing;
                Ok(None)
            }
        }
    }

    /// Takes the whole frame at the front of the buffer, if there is one, like
    /// [`Conn::try_frame`]: one of up to [`COPY_UP_TO`] bytes is copied into `small` (cleared
    /// first) and `Taken::Copied` returned, so the buffer's storage is not shared with it (no
    /// reference counts, and the next read reuses the storage); a larger one is split off.
    pub fn take_frame(&mut self, small: &mut Vec<u8>) -> Result<Option<Taken>, FrameError> {
        match measure_frame(&self.rbuf, self.max_len)? {
            Measured::Whole(total) => {
                self.want = 5;
                if total > COPY_UP_TO {
                    let raw = self.rbuf.split_to(total).freeze();
                    return Ok(Some(Taken::Split(Frame::from_raw(raw))));
                }
                small.clear();
                small.extend_from_slice(&self.rbuf[..total]);
                self.rbuf.advance(total);
                Ok(Some(Taken::Copied))
            }
            Measured::Incomplete { missing } => {
                self.want = missing;
                Ok(None)
            }
        }
    }

    /// Moves the run of whole frames tagged `tag` at the front of the buffer to `out`
    /// untouched, in one copy; returns how many bytes moved (0: the front frame is another
    /// one, incomplete, or invalid, for [`Conn::try_frame`] to report).
    pub fn move_run(&mut self, tag: u8, out: &mut BytesMut) -> usize {
        let mut end = 0;
        while self.rbuf.get(end) == Some(&tag) {
            match measure_frame(&self.rbuf[end..], self.max_len) {
                Ok(Measured::Whole(total)) => end += total,
                _ => break,
            }
        }
        if end > 0 {
            out.extend_from_slice(&self.rbuf[..end]);
            self.rbuf.advance(end);
        }
        end
    }

    /// The tag of the (possibly incomplete) frame at the front of the buffer.
    pub fn front_tag(&self) -> Option<u8> {
        self.rbuf.first().copied()
    }

    /// Reads more bytes into the buffer. Cancel-safe: nothing is lost if the future is dropped.
    pub async fn fill(&mut self) -> Result<(), NetError> {
        // Room for the frame being assembled, bounded so a large declared length is not
        // allocated up front (it was already checked against max_packet_size). Reads go into
        // the room left after earlier frames until it runs low; reserving then moves what is
        // left to the front of the allocation (no new one) once earlier frames are dropped.
        let want = self.want.clamp(MIN_ROOM, 256 * 1024);
        if self.rbuf.capacity() - self.rbuf.len() < want {
            let first = if self.rbuf.capacity() == 0 { CHUNK } else { 0 };
            self.rbuf.reserve(want.max(first));
        }
        let n = self.stream.read_buf(&mut self.rbuf).await?;
        if n == 0 {
            return Err(NetError::Closed);
        }
        Ok(())
    }

    /// The next frame, reading as needed.
    pub async fn read_frame(&mut self) -> Result<Frame, NetError> {
        loop {
            if let Some(f) = self.try_frame()? {
                return Ok(f);
            }
            self.fill().await?;
        }
    }

    /// Reads one untagged startup-phase packet (SSLRequest, StartupMessage, CancelRequest, …).
    pub async fn read_startup(&mut self) -> Result<StartupPacket, NetError> {
        while self.rbuf.len() < 4 {
            self.want = 4 - self.rbuf.len();
            self.fill().await?;
        }
        let len = check_startup_len([self.rbuf[0], self.rbuf[1], self.rbuf[2], self.rbuf[3]])?;
        while self.rbuf.len() < len {
            self.want = len - self.rbuf.len();
            self.fill().await?;
        }
        let packet = self.rbuf.split_to(len);
        if self.rbuf.is_empty() {
            // Usually the whole packet: the buffer goes with it, not kept for a client that
            // may stay idle from login on.
            self.rbuf = BytesMut::new();
        }
        self.want = 5;
        Ok(parse_startup(&packet[4..])?)
    }

    /// Bytes received but not yet consumed (used when a connection is handed over).
    pub fn buffered(&self) -> usize {
        self.rbuf.len()
    }

    /// Appends bytes to the output buffer.
    pub fn queue(&mut self, bytes: &[u8]) {
        self.out().extend_from_slice(bytes);
    }

    /// The output buffer, for builders that append messages directly. A released buffer
    /// comes back at a size most replies fit in, rather than growing by doubling from nothing.
    pub fn out(&mut self) -> &mut BytesMut {
        if self.wbuf.capacity() == 0 {
            self.wbuf = bufpool::take();
        }
        &mut self.wbuf
    }

    pub fn pending_out(&self) -> usize {
        self.wbuf.len()
    }

    /// What is queued and not yet written.
    pub fn queued(&self) -> &[u8] {
        &self.wbuf
    }

    /// Writes everything queued.
    pub async fn flush(&mut self) -> io::Result<()> {
        while self.wbuf.has_remaining() {
            let n = self.stream.write(&self.wbuf).await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            if n == self.wbuf.len() {
                // All of it (the usual case): the view stays at the start of its allocation,
                // so the buffer need not be moved back before its next use.
                self.wbuf.clear();
            } else {
                self.wbuf.advance(n);
            }
        }
        self.stream.flush().await
    }

    /// Flushes only when enough output has piled up (keeps memory bounded while streaming).
    /// True when it wrote (and so may have waited for the peer).
    pub async fn flush_if_full(&mut self) -> io::Result<bool> {
        if self.wbuf.len() >= FLUSH_AT {
            self.flush().await?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Gives back buffer memory while the connection is idle; idle clients cost little.
    pub fn shrink(&mut self) {
        if self.rbuf.is_empty() && self.rbuf.capacity() > CHUNK {
            self.rbuf = BytesMut::new();
        }
        if self.wbuf.is_empty() && self.wbuf.capacity() > CHUNK {
            self.wbuf = BytesMut::new();
        }
    }

    /// Gives both buffers back if they hold nothing: an idle client then costs no buffer
    /// memory (they go to a small per-thread stock the next request takes them from).
    pub fn release_buffers(&mut self) {
        if self.rbuf.is_empty() {
            bufpool::give(std::mem::take(&mut self.rbuf));
        }
        if self.wbuf.is_empty() {
            bufpool::give(std::mem::take(&mut self.wbuf));
        }
    }

    /// Flushes and shuts the write side down.
    pub async fn close(&mut self) {
        let _ = self.flush().await;
        let _ = self.stream.shutdown().await;
    }
}

impl Conn<Stream> {
    /// Hands the transport to `upgrade` (a TLS handshake) and keeps the one it returns. The
    /// caller makes sure nothing is buffered: bytes read before the handshake were not
    /// protected by it. If the upgrade fails or is cancelled the connection has no transport.
    pub async fn upgrade<F, Fut>(&mut self, upgrade: F) -> io::Result<()>
    where
        F: FnOnce(Stream) -> Fut,
        Fut: std::future::Future<Output = io::Result<Stream>>,
    {
        debug_assert!(self.rbuf.is_empty() && self.wbuf.is_empty());
        let plain = std::mem::replace(&mut self.stream, Stream::Detached);
        self.stream = upgrade(plain).await?;
        Ok(())
    }

    /// Like [`Conn::fill`], but when nothing is buffered and little room is left (the buffer
    /// was released, or earlier requests used it up) it first waits for the socket to become
    /// readable, so nothing is allocated while the peer is silent. Cancel-safe.
    pub async fn fill_when_readable(&mut self) -> Result<(), NetError> {
        let room = self.rbuf.capacity() - self.rbuf.len();
        if self.rbuf.is_empty() && room < MIN_ROOM && self.stream.readable().await? {
            // Most requests are small: a spare buffer from the thread's stock; the frame
            // header then tells `fill` how much more to reserve.
            if self.rbuf.capacity() == 0 {
                self.rbuf = bufpool::take();
            } else if room < bufpool::BUF_SIZE / 4 {
                self.rbuf.reserve(bufpool::BUF_SIZE);
            }
            if self.stream.read_buf(&mut self.rbuf).await? == 0 {
                return Err(NetError::Closed);
            }
            return Ok(());
        }
        self.fill().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_survive_byte_by_byte_delivery() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut conn = Conn::new(a, 1 << 20);
        let writer = tokio::spawn(async move {
            let msg = [
                b'Q', 0, 0, 0, 13, b's', b'e', b'l', b'e', b'c', b't', b' ', b'1', 0,
            ];
            for byte in msg {
                b.write_all(&[byte]).await.unwrap();
                tokio::task::yield_now().await;
            }
            b
        });
        let f = conn.read_frame().await.unwrap();
        assert_eq!(f.tag(), b'Q');
        assert_eq!(f.body(), b"select 1\0");
        drop(writer.await.unwrap());
        assert!(matches!(conn.read_frame().await, Err(NetError::Closed)));
    }

    #[tokio::test]
    async fn absurd_length_is_an_error_not_an_allocation() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut conn = Conn::new(a, 1 << 20);
        b.write_all(&[b'Q', 0x7f, 0xff, 0xff, 0xff]).await.unwrap();
        assert!(matches!(
            conn.read_frame().await,
            Err(NetError::Frame(FrameError::TooLarge { .. }))
        ));
    }

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    /// A reply as the session reads it: a run of rows moved in one piece, then the small
    /// messages copied out and a large one split off, however the bytes arrive.
    #[tokio::test]
    async fn rows_move_in_runs_and_other_frames_are_taken_whole() {
        let big = vec![b'x'; COPY_UP_TO * 2];
        let mut reply = Vec::new();
        for r in [&b"row one"[..], b"row two", b"row three"] {
            reply.extend(msg(b'D', r));
        }
        reply.extend(msg(b'C', b"SELECT 3\0"));
        reply.extend(msg(b'N', &big));
        reply.extend(msg(b'Z', b"I"));
        let (a, mut b) = tokio::io::duplex(1 << 16);
        let mut conn = Conn::new(a, 1 << 20);
        // Two rows and part of the third first: only whole rows move.
        let cut = msg(b'D', b"row one").len() * 2 + 6;
        b.write_all(&reply[..cut]).await.unwrap();
        conn.fill().await.unwrap();
        let mut out = BytesMut::new();
        assert_eq!(conn.front_tag(), Some(b'D'));
        assert_eq!(conn.move_run(b'D', &mut out), cut - 6);
        assert_eq!(
            conn.move_run(b'D', &mut out),
            0,
            "the third row is incomplete"
        );
        b.write_all(&reply[cut..]).await.unwrap();
        while conn.buffered() < reply.len() - (cut - 6) {
            conn.fill().await.unwrap();
        }
        assert_eq!(conn.move_run(b'D', &mut out), msg(b'D', b"row three").len());
        assert_eq!(&out[..], &reply[..out.len()]);
        assert_eq!(conn.move_run(b'D', &mut out), 0, "CommandComplete is next");
        let mut small = Vec::new();
        assert!(matches!(
            conn.take_frame(&mut small),
            Ok(Some(Taken::Copied))
        ));
        assert_eq!(small, msg(b'C', b"SELECT 3\0"));
        match conn.take_frame(&mut small) {
            Ok(Some(Taken::Split(f))) => assert_eq!(f.body(), &big[..]),
            _ => panic!("a large frame is split off"),
        }
        assert!(matches!(
            conn.take_frame(&mut small),
            Ok(Some(Taken::Copied))
        ));
        assert_eq!(small, msg(b'Z', b"I"));
        assert!(matches!(conn.take_frame(&mut small), Ok(None)));
    }

    #[tokio::test]
    async fn a_bad_length_stops_a_run_and_is_reported_by_take_frame() {
        let (a, mut b) = tokio::io::duplex(1 << 10);
        let mut conn = Conn::new(a, 64);
        let mut bytes = msg(b'D', b"ok");
        bytes.extend(msg(b'D', &[0; 100])); // over the 64-byte limit
        b.write_all(&bytes).await.unwrap();
        conn.fill().await.unwrap();
        let mut out = BytesMut::new();
        assert_eq!(conn.move_run(b'D', &mut out), 7);
        assert_eq!(conn.move_run(b'D', &mut out), 0);
        assert!(matches!(
            conn.take_frame(&mut Vec::new()),
            Err(FrameError::TooLarge { len: 104, max: 64 })
        ));
    }
}
