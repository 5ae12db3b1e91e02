//! The `pgferry` command: parses the command line and wires the modules together.

use clap::{Parser, Subcommand};
use pgferry::config::{Config, PoolMode};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

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
    init_logging();
    match cli.command {
        Some(Command::CheckConfig { file }) => match Config::load(&file) {
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
        Some(Command::Demo(args)) => runtime(0).map_or(ExitCode::FAILURE, |rt| {
            match rt.block_on(pgferry::demo::run(args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("demo failed: {e}");
                    ExitCode::FAILURE
                }
            }
        }),
        None => {
            let config = match (&cli.config, &cli.upstream) {
                (Some(path), _) => Config::load(path),
                (None, Some(url)) => {
                    Config::from_upstream(url, cli.listen, cli.pool_mode, cli.pool_size)
                }
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
            let Some(rt) = runtime(config.pgferry.workers) else {
                return ExitCode::FAILURE;
            };
            match rt.block_on(pgferry::app::run_until_signal(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("pgferry: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
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

/// Logs go to stderr. Libraries that echo SQL text at debug level (which may carry a password
/// literal) are held at `info` whatever `PGFERRY_LOG` asks for.
fn init_logging() {
    let mut filter = tracing_subscriber::EnvFilter::try_from_env("PGFERRY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    for quiet in ["sqlparser=info", "tokio_postgres=info"] {
        if let Ok(d) = quiet.parse() {
            filter = filter.add_directive(d);
        }
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .with_target(false)
        .init();
}
