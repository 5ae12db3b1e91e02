//! Process-level logging and the pid file: the tracing subscriber (stderr always, plus the
//! `logfile` when set, level from `verbose` / `-v` unless `PGFERRY_LOG` says otherwise) and
//! `pidfile` (written at start, refused when it names a live process, removed at exit).

use parking_lot::Mutex;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// How often a write checks whether the log file was rotated away (renamed or deleted).
const ROTATION_CHECK: Duration = Duration::from_secs(1);

/// The level `verbose` asks for: 0 = info, 1 = debug, 2 or more = trace.
pub fn level_for(verbose: u32) -> &'static str {
    match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    }
}

/// Installs the global subscriber: lines on stderr, and appended to `logfile` if given.
/// `PGFERRY_LOG` (an `EnvFilter` spec) wins over `verbose`. Returns the log file handle so
/// the caller can reopen it (SIGHUP / RELOAD).
pub fn init(verbose: u32, logfile: Option<&Path>) -> io::Result<Option<Arc<LogFile>>> {
    let filter = EnvFilter::try_from_env("PGFERRY_LOG")
        .unwrap_or_else(|_| EnvFilter::new(level_for(verbose)));
    // sqlparser and tokio-postgres log SQL text at debug level: statements may carry
    // passwords, so they are held at warn whatever PGFERRY_LOG asks for.
    let mut filter = filter;
    for quiet in ["sqlparser=warn", "tokio_postgres=warn"] {
        if let Ok(d) = quiet.parse() {
            filter = filter.add_directive(d);
        }
    }
    let file = logfile.map(LogFile::open).transpose()?.map(Arc::new);
    let file_layer = file.clone().map(|f| {
        tracing_subscriber::fmt::layer()
            .with_target(false)
            .with_ansi(false)
            .with_writer(f)
    });
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_target(false)
                .with_writer(io::stderr),
        )
        .with(file_layer)
        .try_init();
    Ok(file)
}

/// An append-only log file that is reopened when asked (`reopen`) and, by itself, when the
/// file at its path is no longer the one it writes to (rotated by logrotate or deleted).
pub struct LogFile {
    path: PathBuf,
    state: Mutex<FileState>,
}

struct FileState {
    file: File,
    /// (device, inode) of the open file.
    id: (u64, u64),
    checked: Instant,
}

impl LogFile {
    pub fn open(path: &Path) -> io::Result<LogFile> {
        let state = FileState::open(path)?;
        Ok(LogFile {
            path: path.to_path_buf(),
            state: Mutex::new(state),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the path again (after rotation); on failure the old file stays in use.
    pub fn reopen(&self) -> io::Result<()> {
        let fresh = FileState::open(&self.path)?;
        *self.state.lock() = fresh;
        Ok(())
    }
}

impl FileState {
    fn open(path: &Path) -> io::Result<FileState> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let meta = file.metadata()?;
        Ok(FileState {
            file,
            id: (meta.dev(), meta.ino()),
            checked: Instant::now(),
        })
    }
}

impl Write for &LogFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut st = self.state.lock();
        if st.checked.elapsed() >= ROTATION_CHECK {
            st.checked = Instant::now();
            let moved = std::fs::metadata(&self.path).map_or(true, |m| (m.dev(), m.ino()) != st.id);
            if moved {
                if let Ok(fresh) = FileState::open(&self.path) {
                    *st = fresh;
                }
            }
        }
        st.file.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.state.lock().file.flush()
    }
}

/// Why a pid file stops the start.
#[derive(Debug, thiserror::Error)]
pub enum PidFileError {
    #[error("pidfile {path}: process {pid} is still running (is another pgferry using it?)")]
    Running { path: String, pid: u32 },
    #[error("pidfile {path}: {source}")]
    Io { path: String, source: io::Error },
}

/// A written pid file; removed when dropped (at a clean exit).
#[derive(Debug)]
pub struct PidFile {
    path: PathBuf,
}

impl PidFile {
    /// Writes this process's id to `path`, unless the file names a process that is alive.
    /// A stale file (its process gone, or unreadable content) is replaced.
    pub fn create(path: &Path) -> Result<PidFile, PidFileError> {
        let shown = path.display().to_string();
        if let Ok(text) = std::fs::read_to_string(path) {
            if let Ok(pid) = text.trim().parse::<u32>() {
                if pid != std::process::id() && process_alive(pid) {
                    return Err(PidFileError::Running { path: shown, pid });
                }
            }
        }
        std::fs::write(path, format!("{}\n", std::process::id())).map_err(|source| {
            PidFileError::Io {
                path: shown,
                source,
            }
        })?;
        Ok(PidFile {
            path: path.to_path_buf(),
        })
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        // Only remove the file if it still names this process.
        let ours = std::fs::read_to_string(&self.path)
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok())
            == Some(std::process::id());
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// True if a process with this id exists and is not a zombie (Linux `/proc`).
fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state letter follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn verbose_levels() {
        assert_eq!(level_for(0), "info");
        assert_eq!(level_for(1), "debug");
        assert_eq!(level_for(2), "trace");
        assert_eq!(level_for(7), "trace");
    }

    #[test]
    fn pid_file_refuses_a_live_process_and_replaces_a_stale_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.pid");
        // pid 1 is always alive.
        std::fs::write(&path, "1\n").unwrap();
        let err = PidFile::create(&path).unwrap_err();
        assert!(
            err.to_string().contains("process 1 is still running"),
            "{err}"
        );
        // A pid far above pid_max is not running: replaced.
        std::fs::write(&path, "4194399\n").unwrap();
        let pf = PidFile::create(&path).unwrap();
        let written = std::fs::read_to_string(&path).unwrap();
        assert_eq!(written.trim(), std::process::id().to_string());
        drop(pf);
        assert!(!path.exists(), "removed when dropped");
    }

    #[test]
    fn log_file_follows_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pgferry.log");
        let lf = LogFile::open(&path).unwrap();
        (&lf).write_all(b"one\n").unwrap();
        std::fs::rename(&path, dir.path().join("pgferry.log.1")).unwrap();
        lf.reopen().unwrap();
        (&lf).write_all(b"two\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "two\n");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("pgferry.log.1")).unwrap(),
            "one\n"
        );
    }
}
