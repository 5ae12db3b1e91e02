//! Running the pgferry binary as a child process: config files, start, signals, exit, RSS.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_pgferry");

/// A TCP port that was free a moment ago (bound to 127.0.0.1:0, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Writes `pgferry.toml` and `userlist.txt` (`"app" "app-secret"`) into `dir`: pgferry on
/// `listen_port` in front of database `shop` at 127.0.0.1:`pg_port`. `general` and `db` are
/// extra TOML lines for the `[pgferry]` and `[databases.shop]` tables.
pub fn write_config(
    dir: &Path,
    pg_port: u16,
    listen_port: u16,
    general: &str,
    db: &str,
) -> PathBuf {
    let userlist = dir.join("userlist.txt");
    std::fs::write(&userlist, "\"app\" \"app-secret\"\n").unwrap();
    let path = dir.join("pgferry.toml");
    let text = format!(
        "[pgferry]\n\
         listen_addr = \"127.0.0.1\"\n\
         listen_port = {listen_port}\n\
         auth_file = \"{}\"\n\
         metrics_addr = \"\"\n\
         {general}\n\
         \n\
         [databases.shop]\n\
         host = \"127.0.0.1\"\n\
         port = {pg_port}\n\
         {db}\n",
        userlist.display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// A pgferry child process; killed (by its own pid) when dropped if still running.
pub struct Ferry {
    pub child: Child,
    pub port: u16,
    pub log: PathBuf,
}

impl Ferry {
    /// Starts `pgferry ARGS` with its output in `dir/pgferry.log` (log level info), and waits
    /// (up to 20 s) until it accepts TCP connections on `port`.
    pub async fn spawn(args: &[&str], port: u16, dir: &Path) -> Ferry {
        Ferry::spawn_env(args, port, dir, &[("PGFERRY_LOG", "info")]).await
    }

    /// Like [`Ferry::spawn`] with extra environment variables (e.g. `PGFERRY_LOG`).
    pub async fn spawn_env(args: &[&str], port: u16, dir: &Path, env: &[(&str, &str)]) -> Ferry {
        let log = dir.join("pgferry.log");
        // pgferry logs to stderr; its stdout (the demo's report) goes to the same file.
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(BIN)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("spawn pgferry");
        let mut f = Ferry { child, port, log };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return f;
            }
            if let Some(st) = f.child.try_wait().unwrap() {
                panic!("pgferry exited early ({st}): {}", f.log_text());
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "pgferry did not start listening on {port}: {}",
                f.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `pgferry --config FILE`.
    pub async fn with_config(config: &Path, port: u16, dir: &Path) -> Ferry {
        Ferry::spawn(&["--config", config.to_str().unwrap()], port, dir).await
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (`"TERM"`, `"INT"`) with kill(1).
    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(st.success(), "kill -{sig} failed");
    }

    /// Waits up to `timeout` for the process to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return Some(st);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Resident set size in kB (VmRSS from /proc/PID/status).
    pub fn rss_kb(&self) -> u64 {
        rss_kb(self.pid())
    }

    /// A tokio-postgres connection string for `app` through this pgferry.
    pub fn url(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=app password=app-secret dbname=shop connect_timeout=10",
            self.port
        )
    }
}

impl Drop for Ferry {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// Runs `pgferry ARGS` to completion (for subcommands) and returns status, stdout, stderr.
pub fn run_bin(args: &[&str]) -> (ExitStatus, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env("PGFERRY_LOG", "warn")
        .output()
        .unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
