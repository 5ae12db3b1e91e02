//! What a server connection keeps of the request it was last sent, to send it again if the
//! server refuses a statement because a table changed under it (`0A000` "cached plan must not
//! change result type"): the refused attempt did nothing, so running it again is what the
//! client would have got without pgferry.

use crate::protocol::tag;
use bytes::Bytes;

/// The most of a client's Bind … Sync kept (larger batches are not run again).
const MAX_BATCH: usize = 8 * 1024;

#[derive(Debug, Default)]
pub struct Replay {
    /// The Query body (text and NUL) of an auto-prepared simple query, or the Bind … Sync
    /// that followed a client's unnamed Parse that pgferry answered.
    bytes: Vec<u8>,
    /// While `bytes` holds such a batch: the statement's id and Parse message (prepared
    /// again before the batch is sent again).
    batch: Option<(u64, Bytes)>,
    /// The batch's Sync is kept: it is complete.
    done: bool,
}

impl Replay {
    /// Keeps the text of an auto-prepared simple query (the Query body: text and NUL).
    pub fn keep_text(&mut self, text: &[u8]) {
        self.batch = None;
        self.bytes.clear();
        self.bytes.extend_from_slice(text);
        self.bytes.push(0);
    }

    /// A client's unnamed Parse of statement `id` was answered by pgferry at the start of a
    /// batch: what the client sends up to its Sync is kept from now on.
    pub fn start_batch(&mut self, id: u64, parse: Bytes) {
        self.bytes.clear();
        self.batch = Some((id, parse));
        self.done = false;
    }

    /// Before message `t` is handled, with `queued` bytes in the server's output: where to
    /// keep from, if a batch is being kept and `t` is one of its Bind, Describe, Execute and
    /// Sync. Any other message ends the keeping: the batch is then not the plain Parse, Bind,
    /// Execute, Sync that can safely run again.
    pub fn mark(&mut self, t: u8, queued: usize) -> Option<usize> {
        self.batch.as_ref()?;
        if !self.done && matches!(t, tag::BIND | tag::DESCRIBE | tag::EXECUTE | tag::SYNC) {
            return Some(queued);
        }
        self.batch = None;
        None
    }

    /// Keeps what handling message `t` added to the server's output `queued` since `from`.
    pub fn keep(&mut self, queued: &[u8], from: usize, t: u8) {
        match queued.get(from..) {
            Some(b) if self.batch.is_some() && self.bytes.len() + b.len() <= MAX_BATCH => {
                self.bytes.extend_from_slice(b);
                self.done = t == tag::SYNC;
            }
            _ => self.batch = None,
        }
    }

    /// A whole batch (up to its Sync) is kept.
    pub fn batch_complete(&self) -> bool {
        self.done && self.batch.is_some()
    }

    /// The kept batch's statement id and Parse message; the batch is kept no longer.
    pub fn take_batch(&mut self) -> Option<(u64, Bytes)> {
        self.batch.take()
    }

    /// What is kept: the text, or the batch's Bind … Sync.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_kept_message_by_message_up_to_its_sync() {
        let mut r = Replay::default();
        assert_eq!(r.mark(tag::BIND, 0), None, "nothing started");
        r.start_batch(7, Bytes::from_static(b"P"));
        let mut out = Vec::new();
        for (t, msg) in [
            (tag::BIND, &b"B1"[..]),
            (tag::EXECUTE, b"E2"),
            (tag::SYNC, b"S3"),
        ] {
            let from = r.mark(t, out.len()).unwrap();
            out.extend_from_slice(msg);
            r.keep(&out, from, t);
        }
        assert!(r.batch_complete());
        assert_eq!(r.bytes(), b"B1E2S3");
        // Anything after the Sync ends it.
        assert_eq!(r.mark(tag::FLUSH, out.len()), None);
        assert!(!r.batch_complete());
        assert_eq!(r.take_batch(), None);
    }

    #[test]
    fn other_messages_and_large_batches_are_not_kept() {
        let mut r = Replay::default();
        r.start_batch(7, Bytes::from_static(b"P"));
        assert_eq!(r.mark(tag::PARSE, 0), None);
        assert!(!r.batch_complete());
        r.start_batch(7, Bytes::from_static(b"P"));
        let big = vec![0; MAX_BATCH + 1];
        let from = r.mark(tag::BIND, 0).unwrap();
        r.keep(&big, from, tag::BIND);
        assert_eq!(r.mark(tag::SYNC, big.len()), None);
        r.keep_text(b"select 1");
        assert_eq!(r.bytes(), b"select 1\0");
    }
}
