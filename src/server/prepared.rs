//! The set of pgferry-named prepared statements that exist on one server connection, bounded
//! by `max_prepared_statements` with least-recently-used eviction.

use std::collections::HashMap;

/// Statements prepared on one server, keyed by the statement id (hash of text + types). The
/// id is computed with fixed keys, so clients could choose texts whose ids crowd one part of
/// the table; the map hashes it again with a per-process random seed (foldhash: a few
/// instructions for a `u64`, against SipHash's hundred).
#[derive(Debug, Default)]
pub struct Registry {
    entries: HashMap<u64, u64, foldhash::fast::RandomState>,
    tick: u64,
    cap: usize,
    /// The server reported a statement whose result columns changed (DDL): every statement
    /// here must be deallocated before the connection serves another client.
    stale: bool,
    /// Statements last used at or before this tick, when `stale`, may be stale themselves:
    /// until the connection is released, one used again is closed and prepared anew.
    stale_mark: u64,
}

impl Registry {
    pub fn new(cap: usize) -> Self {
        Registry {
            entries: HashMap::default(),
            tick: 0,
            cap: cap.max(1),
            stale: false,
            stale_mark: 0,
        }
    }

    /// Whether the server has the statement ready for use; marks it as recently used. One
    /// that may be stale ([`Registry::mark_stale`]) is forgotten here: the caller closes it on
    /// the server and prepares it anew.
    pub fn touch(&mut self, id: u64) -> Held {
        self.tick += 1;
        match self.entries.get_mut(&id) {
            Some(t) if self.stale && *t <= self.stale_mark => {
                self.entries.remove(&id);
                Held::Stale
            }
            Some(t) => {
                *t = self.tick;
                Held::Ready
            }
            None => Held::Missing,
        }
    }

    /// Records a statement as prepared; returns the id to Close first if the cap is reached.
    pub fn insert(&mut self, id: u64) -> Option<u64> {
        self.tick += 1;
        let evict = if self.entries.len() >= self.cap && !self.entries.contains_key(&id) {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, t)| **t)
                .map(|(k, _)| *k);
            if let Some(k) = oldest {
                self.entries.remove(&k);
            }
            oldest
        } else {
            None
        };
        self.entries.insert(id, self.tick);
        evict
    }

    pub fn remove(&mut self, id: u64) {
        self.entries.remove(&id);
    }

    pub fn clear(&mut self) {
        self.entries.clear();
        self.stale = false;
        self.stale_mark = 0;
    }

    pub fn mark_stale(&mut self) {
        self.stale = true;
        self.stale_mark = self.tick;
    }

    pub fn is_stale(&self) -> bool {
        self.stale
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether any statement here has [`RESENT`] set.
    pub fn has_resent(&self) -> bool {
        self.entries.keys().any(|id| id & RESENT != 0)
    }

    /// Forgets the statements with [`RESENT`] set and returns their ids.
    pub fn remove_resent(&mut self) -> Vec<u64> {
        let mut ids = Vec::new();
        self.entries.retain(|&id, _| {
            let resent = id & RESENT != 0;
            if resent {
                ids.push(id);
            }
            !resent
        });
        ids
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// What [`Registry::touch`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    Ready,
    Missing,
    /// On the server, but a table may have changed under it: close it, prepare it again.
    Stale,
}

/// Set in the id of a statement whose client sends its text with every use (an unnamed
/// statement, `auto_prepare`): preparing it again from the current definition gives the
/// client what it would get without pgferry. Clear for a client's named statement.
pub const RESENT: u64 = 1 << 63;

/// The server-side name pgferry gives a statement id.
pub fn server_name(id: u64) -> [u8; 20] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = *b"pgf_0000000000000000";
    for i in 0..16 {
        out[4 + i] = HEX[((id >> (60 - 4 * i)) & 0xf) as usize];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_a_stale_plan_statements_used_before_are_prepared_again_once() {
        let mut r = Registry::new(8);
        r.insert(1);
        r.insert(2);
        r.mark_stale();
        r.insert(3); // prepared after the refusal: current
        assert_eq!(r.touch(3), Held::Ready);
        assert_eq!(r.touch(1), Held::Stale);
        assert_eq!(r.touch(1), Held::Missing);
        r.insert(1);
        assert_eq!(r.touch(1), Held::Ready);
        assert_eq!(r.touch(2), Held::Stale);
        r.clear();
        assert!(!r.is_stale());
    }

    #[test]
    fn evicts_least_recently_used() {
        let mut r = Registry::new(2);
        assert_eq!(r.insert(1), None);
        assert_eq!(r.insert(2), None);
        assert_eq!(r.touch(1), Held::Ready);
        assert_eq!(r.insert(3), Some(2));
        assert_eq!(
            [r.touch(1), r.touch(3), r.touch(2)],
            [Held::Ready, Held::Ready, Held::Missing]
        );
    }

    #[test]
    fn names_are_fixed_width_hex() {
        assert_eq!(&server_name(0xabc), b"pgf_0000000000000abc");
    }
}
