//! `ConfigError`: one precise complaint about a configuration, rendered as
//! `FILE:LINE: KEY: MESSAGE` because `pgferry check-config` prints it verbatim
//! for operators and editors to jump to.

use std::fmt;
use std::path::{Path, PathBuf};

use super::locate;

/// What is wrong with a configuration, and where.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", Rendered(self))]
pub struct ConfigError {
    /// The file the configuration came from, if any.
    pub path: Option<PathBuf>,
    /// 1-based line of the offending key (or of its table header).
    pub line: Option<usize>,
    /// Dotted TOML key, e.g. `databases.shop.pool_size`.
    pub key: Option<String>,
    pub message: String,
}

impl ConfigError {
    /// An error with a message only; location is attached later.
    pub fn new(message: impl Into<String>) -> Self {
        ConfigError {
            path: None,
            line: None,
            key: None,
            message: message.into(),
        }
    }

    /// An error about one key, given as path segments so that names with dots
    /// or spaces (`[databases."a.b"]`) are quoted correctly in the dotted form.
    pub(crate) fn at_key(segments: &[&str], message: impl Into<String>) -> Self {
        ConfigError {
            key: Some(locate::join_key(segments)),
            ..ConfigError::new(message)
        }
    }

    pub(crate) fn with_path(mut self, path: Option<&Path>) -> Self {
        if self.path.is_none() {
            self.path = path.map(Path::to_path_buf);
        }
        self
    }

    /// Finds the line of `self.key` in the source, falling back to the
    /// nearest enclosing table header when the key itself is absent (its
    /// default was the problem).
    pub(crate) fn with_line_from(mut self, source: &str) -> Self {
        if self.line.is_none() {
            if let Some(key) = &self.key {
                self.line = locate::line_of_key(source, key);
            }
        }
        self
    }

    /// Converts a toml error, whose byte span gives the line and whose message
    /// already names an unknown key.
    pub(crate) fn from_toml(err: &toml::de::Error, source: &str, path: Option<&Path>) -> Self {
        let mut out = ConfigError::new(err.message().trim().to_string()).with_path(path);
        if let Some(span) = err.span() {
            let line = locate::line_of_offset(source, span.start);
            out.line = Some(line);
            out.key = locate::key_at_line(source, line);
        }
        out
    }
}

struct Rendered<'a>(&'a ConfigError);

impl fmt::Display for Rendered<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = self.0;
        match (&e.path, e.line) {
            (Some(p), Some(l)) => write!(f, "{}:{l}: ", p.display())?,
            (Some(p), None) => write!(f, "{}: ", p.display())?,
            (None, Some(l)) => write!(f, "line {l}: ")?,
            (None, None) => {}
        }
        if let Some(k) = &e.key {
            write!(f, "{k}: ")?;
        }
        f.write_str(&e.message)
    }
}
