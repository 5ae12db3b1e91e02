//! A small per-thread stock of spare I/O buffers. A client between transactions gives its
//! buffers back (an idle client should cost no buffer memory) and takes them again with its
//! next request; without a stock that is a malloc and a free of a few KiB per transaction.
//! The stock is bounded per worker thread, so thousands of idle clients still hold nothing.

use bytes::BytesMut;
use std::cell::RefCell;

/// Size of a buffer handed out (most requests and replies fit; they grow when they do not).
pub const BUF_SIZE: usize = 4096;
/// Spare buffers kept per thread.
const KEEP: usize = 64;
/// Larger buffers (after a big result) are freed rather than kept.
const KEEP_UP_TO: usize = 64 * 1024;

thread_local! {
    static STOCK: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// An empty buffer with room for at least [`BUF_SIZE`] bytes.
pub fn take() -> BytesMut {
    let spare = STOCK.with(|s| s.try_borrow_mut().ok().and_then(|mut s| s.pop()));
    match spare {
        Some(mut b) => {
            // Moves the (empty) view back to the start of its allocation when it is the only
            // user of it, so this does not allocate in the usual case.
            b.reserve(BUF_SIZE);
            b
        }
        None => BytesMut::with_capacity(BUF_SIZE),
    }
}

/// Gives an empty buffer back to the stock (or frees it when the stock is full, the buffer
/// is large or still holds bytes).
pub fn give(b: BytesMut) {
    if !b.is_empty() || b.capacity() > KEEP_UP_TO || b.capacity() == 0 {
        return;
    }
    STOCK.with(|s| {
        if let Ok(mut s) = s.try_borrow_mut() {
            if s.len() < KEEP {
                s.push(b);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_empty_with_room() {
        let mut b = take();
        assert!(b.capacity() >= BUF_SIZE);
        b.extend_from_slice(b"hello");
        let _ = b.split_to(5);
        give(b);
        let b = take();
        assert!(b.is_empty());
        assert!(b.capacity() >= BUF_SIZE);
    }

    #[test]
    fn non_empty_or_huge_buffers_are_not_kept() {
        let mut b = BytesMut::with_capacity(16);
        b.extend_from_slice(b"x");
        give(b); // dropped, not kept
        give(BytesMut::with_capacity(KEEP_UP_TO * 2));
        let b = take();
        assert!(b.is_empty());
        assert!(b.capacity() <= KEEP_UP_TO.max(BUF_SIZE * 2));
    }
}
