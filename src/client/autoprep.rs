//! `auto_prepare`: simple-protocol statements run as server-side prepared statements.
//!
//! [`Memo`] remembers, per statement shape (the text's hash with every digit read as `0`),
//! the [`Plan`] of the first text of that shape, or that the shape has no plan. A later text
//! uses the plan only if it [`fits`] it (same bytes except the digits of parameter numbers),
//! so a hash collision or a different kept number (`ORDER BY 2` instead of `1`) falls back to
//! the simple protocol. The session then sends Bind (those digits as text parameters),
//! Describe, Execute and Sync for the shared statement, which the server keeps prepared like
//! any client's (see [`super::statements`]).

use super::statements::Stmt;
use crate::protocol::views::{self, ParseView};
use crate::protocol::{build, tag};
use crate::sql::autoprep::{fits, plan, Plan};
use crate::sql::{digits_masked_hash, BuildPassThrough};
use bytes::{BufMut, BytesMut};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;

const SHARDS: usize = 16;
/// Shapes remembered per shard; a full shard is emptied (shapes are few in a real
/// application, and a shape is planned again at its next use).
const PER_SHARD: usize = 128;
/// Longer texts are left to the simple protocol.
const MAX_TEXT_LEN: usize = 4 * 1024;

/// A statement text's plan and the shared statement it runs as.
#[derive(Debug)]
pub struct AutoPrepared {
    /// The text the plan was made from.
    template: Box<str>,
    pub plan: Plan,
    pub stmt: Arc<Stmt>,
}

impl AutoPrepared {
    /// Appends Bind (the unnamed portal, `text`'s parameter numbers as text), Describe of the
    /// portal, Execute and Sync. `text` fits the plan ([`Memo::get`] checked it), so it has the
    /// template's length and every span is within it.
    pub fn put_execution(&self, out: &mut BytesMut, text: &[u8]) {
        let params = self.plan.numbers.iter().filter(|n| n.param);
        let values = params.map(|n| &text[n.start as usize..n.end as usize]);
        views::put_text_bind(out, self.stmt.server_name(), values);
        views::put_target(out, tag::DESCRIBE, b'P', b"");
        build::tagged(out, tag::EXECUTE, &[0; 5]); // the unnamed portal, every row
        build::sync(out);
    }
}

type Shard = HashMap<u64, Option<Arc<AutoPrepared>>, BuildPassThrough>;

/// Plans by statement shape, shared by all clients.
pub struct Memo {
    shards: Box<[Mutex<Shard>]>,
}

impl Default for Memo {
    fn default() -> Self {
        Memo {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }
}

impl Memo {
    /// The plan `text` runs with, if any.
    pub fn get(&self, text: &[u8]) -> Option<Arc<AutoPrepared>> {
        // Quotes and `$` mean string literals or parameters: never planned, so not hashed.
        if text.len() > MAX_TEXT_LEN || memchr::memchr2(b'\'', b'$', text).is_some() {
            return None;
        }
        let key = digits_masked_hash(text)?;
        let shard = &self.shards[(key >> 48) as usize % SHARDS];
        if let Some(entry) = shard.lock().get(&key) {
            let a = entry.as_ref()?;
            return fits(&a.template, &a.plan, text).then(|| Arc::clone(a));
        }
        let template = std::str::from_utf8(text).ok()?;
        let made = plan(template).map(|plan| {
            let parse = ParseView {
                name: b"",
                query: plan.statement.as_bytes(),
                param_types: &plan.param_types,
            };
            let stmt = Arc::new(Stmt::from_parse(&parse));
            Arc::new(AutoPrepared {
                template: template.into(),
                plan,
                stmt,
            })
        });
        let mut shard = shard.lock();
        if shard.len() >= PER_SHARD {
            shard.clear();
        }
        shard.insert(key, made.clone());
        made
    }
}

/// The ErrorResponse `body` with its position (`P`) moved from the prepared statement's text
/// to the client's; `None` when it has no position.
pub fn error_in_client_text(body: &[u8], plan: &Plan) -> Option<BytesMut> {
    let mut out = BytesMut::with_capacity(body.len() + 8);
    out.put_u8(b'E');
    out.put_i32(0);
    let mut moved = false;
    let mut read = 1; // the terminator
    for (code, value) in views::error_fields(body) {
        read += 2 + value.len();
        out.put_u8(code);
        match (
            code,
            std::str::from_utf8(value).ok().and_then(|v| v.parse().ok()),
        ) {
            (b'P', Some(pos)) => {
                out.put_slice(plan.original_position(pos).to_string().as_bytes());
                moved = true;
            }
            _ => out.put_slice(value),
        }
        out.put_u8(0);
    }
    if read != body.len() {
        return None; // malformed: forwarded as it came
    }
    out.put_u8(0);
    let len = (out.len() - 1) as i32;
    out[1..5].copy_from_slice(&len.to_be_bytes());
    moved.then_some(out)
}
