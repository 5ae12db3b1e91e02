//! A client's protocol-level named prepared statements in transaction and statement mode:
//! client name → statement (its id and the Parse message under pgferry's server-side name).
//! Statements are prepared lazily on whichever server connection the client gets.

use crate::protocol::views::{rewrite_parse, ParseView};
use crate::server::prepared::{server_name, RESENT};
use bytes::Bytes;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// A map keyed by a client's statement (or portal) names. Names come from the client, so the
/// hasher is seeded at random per process, but it is foldhash, not SipHash: looked up on every
/// Parse and Bind, these maps are on the hot path.
pub type ByName<V> = HashMap<Box<[u8]>, V, foldhash::fast::RandomState>;

/// One distinct statement (text + parameter types).
#[derive(Debug)]
pub struct Stmt {
    /// Hash of the text and parameter types; names the statement on servers.
    pub id: u64,
    /// The name on servers, `server_name(id)`, made once rather than at every Bind.
    name: [u8; 20],
    /// The Parse message to send to a server that lacks the statement.
    pub parse: Bytes,
}

impl Stmt {
    /// The statement of a Parse. An unnamed one (a client's, or `auto_prepare`'s for a simple
    /// query) gets an id with [`RESENT`] set: its client sends the text with every use, so
    /// after a schema change it may be prepared again from the new definition, which a
    /// client's own named statement may not (see [`crate::server::ServerConn::statements_stale`]).
    pub fn from_parse(p: &ParseView<'_>) -> Stmt {
        let id = match p.name {
            b"" => statement_id(p.query, p.param_types) | RESENT,
            _ => statement_id(p.query, p.param_types) & !RESENT,
        };
        let name = server_name(id);
        Stmt {
            id,
            name,
            parse: rewrite_parse(p, &name),
        }
    }

    pub fn server_name(&self) -> &[u8; 20] {
        &self.name
    }

    /// Whether `p` has this statement's text and parameter types.
    pub fn is(&self, p: &ParseView<'_>) -> bool {
        // The Parse message: tag, length, the server name and its NUL, then text, NUL, types.
        let Some(rest) = self.parse.get(5 + self.name.len() + 1..) else {
            return false;
        };
        let n = p.query.len();
        rest.len() == n + 1 + p.param_types.len()
            && rest.starts_with(p.query)
            && rest.get(n) == Some(&0)
            && rest.ends_with(p.param_types)
    }
}

/// Stable id of a statement: the same text and types give the same id in every client.
pub fn statement_id(query: &[u8], param_types: &[u8]) -> u64 {
    // SipHash with fixed keys: stable for the life of the process, which is all that is
    // needed since server-side names never outlive it.
    #[allow(deprecated)]
    let mut h = std::hash::SipHasher::new_with_keys(0x7067_6665_7272_7931, 0x5354_4d54_4944_0001);
    query.hash(&mut h);
    param_types.hash(&mut h);
    h.finish()
}

/// The client's statement names.
#[derive(Debug, Default)]
pub struct Statements {
    by_name: ByName<Arc<Stmt>>,
}

impl Statements {
    pub fn get(&self, name: &[u8]) -> Option<&Arc<Stmt>> {
        self.by_name.get(name)
    }

    pub fn contains(&self, name: &[u8]) -> bool {
        self.by_name.contains_key(name)
    }

    pub fn insert(&mut self, name: &[u8], stmt: Arc<Stmt>) {
        self.by_name.insert(name.into(), stmt);
    }

    pub fn remove(&mut self, name: &[u8]) -> Option<Arc<Stmt>> {
        self.by_name.remove(name)
    }

    pub fn clear(&mut self) {
        self.by_name.clear();
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unnamed_and_named_statements_of_one_text_differ_on_servers() {
        let p = |name: &'static [u8]| ParseView {
            name,
            query: b"select $1",
            param_types: b"",
        };
        let (unnamed, named) = (Stmt::from_parse(&p(b"")), Stmt::from_parse(&p(b"s1")));
        assert_ne!(unnamed.id & RESENT, 0);
        assert_eq!(named.id & RESENT, 0);
        assert_eq!(unnamed.id & !RESENT, named.id);
        assert_eq!(named.id, Stmt::from_parse(&p(b"s2")).id);
    }

    #[test]
    fn same_text_same_id_and_types_matter() {
        assert_eq!(
            statement_id(b"select $1", b"\0\0"),
            statement_id(b"select $1", b"\0\0")
        );
        assert_ne!(
            statement_id(b"select $1", b"\0\x01\0\0\0\x17"),
            statement_id(b"select $1", b"\0\x01\0\0\0\x19")
        );
    }
}
