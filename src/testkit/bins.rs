//! Locating PostgreSQL programs (server and client) and a few OS helpers.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Environment variable that, when set, names the directory holding
/// `initdb` and `pg_ctl`; it is searched before anything else.
pub const BIN_DIR_ENV: &str = "PGFERRY_PG_BIN_DIR";

/// Returns true if `path` is a regular file with an execute bit set.
pub(crate) fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The directories listed in `PATH`, in order.
fn path_dirs() -> Vec<PathBuf> {
    std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .filter(|d| !d.as_os_str().is_empty())
                .collect()
        })
        .unwrap_or_default()
}

/// Parses a Debian version directory name such as `15` or `9.6`.
fn parse_version(name: &str) -> Option<(u32, u32)> {
    let mut parts = name.splitn(2, '.');
    let major = parts.next()?.parse().ok()?;
    let minor = match parts.next() {
        Some(m) => m.parse().ok()?,
        None => 0,
    };
    Some((major, minor))
}

/// `/usr/lib/postgresql/<version>/bin`, newest version first.
fn versioned_bin_dirs() -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") else {
        return Vec::new();
    };
    let mut found: Vec<((u32, u32), PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let version = parse_version(e.file_name().to_str()?)?;
            Some((version, e.path().join("bin")))
        })
        .collect();
    found.sort_by_key(|entry| std::cmp::Reverse(entry.0));
    found.into_iter().map(|(_, dir)| dir).collect()
}

/// Candidate directories for the server binaries, in search order.
fn server_candidates() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(dir) = std::env::var_os(BIN_DIR_ENV) {
        if !dir.is_empty() {
            dirs.push(PathBuf::from(dir));
        }
    }
    dirs.push(PathBuf::from("/usr/local/bin"));
    dirs.extend(path_dirs());
    dirs.extend(versioned_bin_dirs());
    dirs.push(PathBuf::from("/usr/local/pgsql/bin"));
    dirs
}

/// Finds the directory that contains both `initdb` and `pg_ctl`.
///
/// Searches `$PGFERRY_PG_BIN_DIR`, `/usr/local/bin`, `PATH`, then
/// `/usr/lib/postgresql/*/bin` (newest version first).
pub fn find_pg_bin_dir() -> Option<PathBuf> {
    server_candidates()
        .into_iter()
        .find(|d| is_executable(&d.join("initdb")) && is_executable(&d.join("pg_ctl")))
}

/// Finds a client program. The real binaries next to the server (or under
/// `/usr/lib/postgresql/<newest>/bin`) are preferred over `PATH`, where
/// Debian only has the `pg_wrapper` Perl script, which is much slower to
/// start and fails when the client package is missing.
fn find_client(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = find_pg_bin_dir().into_iter().collect();
    dirs.extend(versioned_bin_dirs());
    dirs.extend(path_dirs());
    dirs.push(PathBuf::from("/usr/bin"));
    dirs.push(PathBuf::from("/usr/local/bin"));
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

/// Path of `pgbench`, if installed.
pub fn pgbench_path() -> Option<PathBuf> {
    find_client("pgbench")
}

/// Path of `psql`, if installed.
pub fn psql_path() -> Option<PathBuf> {
    find_client("psql")
}

/// Path of `runuser` (util-linux); falls back to the bare name.
pub(crate) fn runuser_path() -> PathBuf {
    let mut dirs = path_dirs();
    dirs.extend(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from));
    dirs.into_iter()
        .map(|d| d.join("runuser"))
        .find(|p| is_executable(p))
        .unwrap_or_else(|| PathBuf::from("runuser"))
}

/// Whether the current process runs with effective uid 0.
///
/// `/proc/self` is owned by the effective uid of the process; without procfs
/// this falls back to `id -u`.
pub(crate) fn is_root() -> bool {
    if let Ok(meta) = std::fs::metadata("/proc/self") {
        return meta.uid() == 0;
    }
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Whether the OS user `name` exists.
pub(crate) fn os_user_exists(name: &str) -> bool {
    Command::new("id")
        .arg("-u")
        .arg(name)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Whether every directory from `/` down to `dir` can be traversed by
/// users other than its owner (needed so the `postgres` user can reach a
/// cluster directory created by root).
pub(crate) fn traversable_by_others(dir: &Path) -> bool {
    dir.ancestors().all(|d| {
        std::fs::metadata(d)
            .map(|m| m.permissions().mode() & 0o001 != 0)
            .unwrap_or(false)
    })
}
