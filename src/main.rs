//! The `pgferry` command: parses the command line and wires the modules together.

use clap::{Parser, Subcommand};
use pgferry::config::{Config, PoolMode};
use pgferry::logging;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

/// jemalloc: size-segregated pages, returned to the OS by a background thread once unused, so
/// the memory of clients that left or were parked goes back (glibc's heap keeps it), and fast
/// small allocations on the hot path. Left out when built without the `jemalloc` feature.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// A PostgreSQL connection pooler and query proxy.
#[derive(Parser, Debug)]
#[command(name = "pgferry", version, about)]
struct Cli {
    /// Run from a TOML configuration file.
    #[arg(long, short = 'c', conflicts_with = "upstream")]
    config: Option<PathBuf>,
    /// Run without a file, in front of this server: postgres://user:pass@host:port/db
    #[arg(long)]
    upstream: Option<String>,
    /// Address to listen on (with --upstream).
    #[arg(long, default_value = "127.0.0.1:6432")]
    listen: SocketAddr,
    /// Pool mode (with --upstream): session, transaction or statement.
    #[arg(long, default_value = "transaction")]
    pool_mode: PoolMode,
    /// Server connections per (database, user) (with --upstream).
    #[arg(long, default_value_t = 20)]
    pool_size: u32,
    /// More log detail: -v = debug, -vv = trace (adds to `verbose`; PGFERRY_LOG wins over both).
    #[arg(short = 'v', long = "verbose", action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Validate a configuration file; exits non-zero with the key, line and reason.
    CheckConfig { file: PathBuf },
    /// Start a throwaway PostgreSQL, put pgferry in front, run a short concurrent workload.
    Demo(pgferry::demo::DemoArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::CheckConfig { file }) => match init_logging(u32::from(cli.verbose))
            .and_then(|_| Config::load(&file).map_err(|e| e.to_string()))
        {
            Ok(c) => {
                println!(
                    "{}: ok ({} database(s), pool_mode = {})",
                    file.display(),
                    c.databases.len(),
                    c.pgferry.pool_mode
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Some(Command::Demo(args)) => {
            if let Err(e) = init_logging(u32::from(cli.verbose)) {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
            demo(args)
        }
        None => run(&cli),
    }
}

fn demo(args: pgferry::demo::DemoArgs) -> ExitCode {
    runtime(0).map_or(ExitCode::FAILURE, |rt| {
        match rt.block_on(pgferry::demo::run(args)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("demo failed: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// Runs the pooler: configuration, logging, pid file, then the app until a signal.
fn run(cli: &Cli) -> ExitCode {
    let config = match (&cli.config, &cli.upstream) {
        (Some(path), _) => Config::load(path),
        (None, Some(url)) => Config::from_upstream(url, cli.listen, cli.pool_mode, cli.pool_size),
        (None, None) => {
            eprintln!("pgferry: give --config FILE or --upstream URL (see --help)");
            return ExitCode::from(64);
        }
    };
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(64);
        }
    };
    let g = &config.pgferry;
    let logfile = match logging::init(g.verbose + u32::from(cli.verbose), g.logfile.as_deref()) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("pgferry: cannot open logfile: {e}");
            return ExitCode::FAILURE;
        }
    };
    for (name, why) in config.ineffective_settings() {
        tracing::warn!("setting {name} has no effect in pgferry: {why}");
    }
    let _pidfile = match g.pidfile.as_deref().map(logging::PidFile::create) {
        Some(Err(e)) => {
            eprintln!("pgferry: {e}");
            return ExitCode::FAILURE;
        }
        Some(Ok(p)) => Some(p),
        None => None,
    };
    let Some(rt) = runtime(config.pgferry.workers) else {
        return ExitCode::FAILURE;
    };
    match rt.block_on(async move {
        if let Some(f) = logfile {
            reopen_on_hangup(f);
        }
        pgferry::app::run_until_signal(config).await
    }) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgferry: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Reopens the log file on SIGHUP (RELOAD's signal), so a rotated file is let go at once;
/// the file also follows a rotation by itself within a second.
fn reopen_on_hangup(file: std::sync::Arc<logging::LogFile>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return;
    };
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            if let Err(e) = file.reopen() {
                tracing::warn!(path = %file.path().display(), "cannot reopen logfile: {e}");
            }
        }
    });
}

/// `workers = 1` runs everything on one thread (no cross-thread wakeups: on a small machine
/// shared with PostgreSQL this is often fastest); 0 means one worker per core.
fn runtime(workers: u32) -> Option<tokio::runtime::Runtime> {
    let mut b = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    if workers > 1 {
        b.worker_threads(workers as usize);
    }
    match b.enable_all().build() {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("pgferry: cannot start the runtime: {e}");
            None
        }
    }
}

/// Logging for the subcommands: stderr only.
fn init_logging(verbose: u32) -> Result<(), String> {
    logging::init(verbose, None)
        .map(|_| ())
        .map_err(|e| format!("pgferry: cannot set up logging: {e}"))
}
