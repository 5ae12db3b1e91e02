#!/usr/bin/env python3
"""Side-by-side load benchmark: direct PostgreSQL vs PgBouncer vs pgferry.

One command (run as root, from anywhere):

    python3 benches/load/run.py            # full run, rewrites docs/benchmarks.{md,svg}
    python3 benches/load/run.py --quick --only 'S-simple@20,tpcb'   # smoke run

It builds pgferry (cargo build --profile dist), installs PgBouncer if missing
(apt-get), starts a throw-away PostgreSQL in a temporary directory, starts
PgBouncer and pgferry in transaction mode with the same pool size in front of
it, runs pgbench against all three interleaved, measures RSS per idle client
with thousands of idle connections, prints a table and writes
docs/benchmarks.md and docs/benchmarks.svg.  Everything it starts is stopped
and every temporary file removed on exit, Ctrl-C or error.

Python 3.11 standard library only.  See docs/benchmarks.md for the options.
"""

from __future__ import annotations

import argparse
import atexit
import ctypes
import datetime as _dt
import fnmatch
import glob
import html
import json
import math
import os
import platform
import pwd
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TARGETS = ("direct", "pgbouncer", "pgferry")
LABEL = {"direct": "PostgreSQL (direct)", "pgbouncer": "PgBouncer", "pgferry": "pgferry"}
SHORT = {"direct": "direct", "pgbouncer": "PgBouncer", "pgferry": "pgferry"}
DB = "bench"
USER = "postgres"
OS_USER = "postgres"

# The measured baseline, quoted in the report for context.
BASELINE = (
    "PgBouncer 1.18 reached 0.68× direct on `-S -M simple` at 20 clients, 0.67× "
    "on extended, failed `-M prepared` in transaction mode, 18.8k tps at 1,000 "
    "clients and 1.1 KiB RSS per idle client."
)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class BenchError(Exception):
    pass


# --------------------------------------------------------------------------
# Cleanup: every process and directory is registered here and torn down in
# reverse order on normal exit, exception, Ctrl-C, SIGTERM/SIGHUP (atexit as a
# second line of defence).  Children also get PR_SET_PDEATHSIG so they die if
# this script is SIGKILLed.
# --------------------------------------------------------------------------

class Cleanup:
    def __init__(self) -> None:
        self._items: list[tuple[str, callable]] = []
        self._done = False

    def add(self, name: str, fn) -> None:
        self._items.append((name, fn))

    def run(self) -> None:
        if self._done:
            return
        self._done = True
        try:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        except ValueError:
            pass
        while self._items:
            name, fn = self._items.pop()
            try:
                fn()
            except Exception as e:  # keep going: the rest must still be cleaned
                log(f"cleanup of {name} failed: {e}")


CLEANUP = Cleanup()
atexit.register(CLEANUP.run)


def _on_signal(signum, _frame):
    log(f"got signal {signum}; cleaning up")
    raise SystemExit(128 + signum)


_libc = None


def _child_setup(deathsig: int):
    """preexec_fn: die with the parent (runs after the uid switch)."""
    def fn():
        try:
            global _libc
            if _libc is None:
                _libc = ctypes.CDLL(None, use_errno=True)
            _libc.prctl(1, deathsig, 0, 0, 0)  # PR_SET_PDEATHSIG
        except Exception:
            pass
    return fn


class Proc:
    """A long-running child (postgres, pgbouncer, pgferry)."""

    def __init__(self, name: str, argv: list[str], logpath: Path, *, as_postgres: bool,
                 stop_signal: int = signal.SIGTERM, deathsig: int = signal.SIGKILL,
                 cwd: Path | None = None) -> None:
        self.name = name
        self.argv = argv
        self.logpath = logpath
        self.stop_signal = stop_signal
        kw = {}
        if as_postgres and os.geteuid() == 0:
            kw = dict(user=OS_USER, group=pwd.getpwnam(OS_USER).pw_gid, extra_groups=[])
        env = dict(os.environ)
        if as_postgres:
            env["HOME"] = pwd.getpwnam(OS_USER).pw_dir
        self._logf = open(logpath, "ab")
        self.popen = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=self._logf, stderr=subprocess.STDOUT,
            cwd=str(cwd) if cwd else None, env=env, start_new_session=True,
            preexec_fn=_child_setup(deathsig), **kw)
        self.pid = self.popen.pid
        CLEANUP.add(name, self.stop)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, n: int = 15) -> str:
        try:
            lines = self.logpath.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def stop(self, timeout: float = 20.0) -> None:
        if self.popen.poll() is None:
            try:
                self.popen.send_signal(self.stop_signal)
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                log(f"{self.name} did not stop after {timeout:.0f}s; killing")
                try:
                    os.killpg(self.pid, signal.SIGKILL)
                except OSError:
                    self.popen.kill()
                self.popen.wait(10)
        # the process group (postgres backends) must not outlive it
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except OSError:
            pass
        self._logf.close()


# --------------------------------------------------------------------------
# A tiny PostgreSQL v3 client: startup with trust auth up to ReadyForQuery,
# optional simple query.  Used for readiness checks and idle connections.
# --------------------------------------------------------------------------

def startup_packet(user: str, database: str) -> bytes:
    body = struct.pack("!I", 196608)
    for k, v in (("user", user), ("database", database)):
        body += k.encode() + b"\0" + v.encode() + b"\0"
    body += b"\0"
    return struct.pack("!I", len(body) + 4) + body


def query_packet(sql: str) -> bytes:
    b = sql.encode() + b"\0"
    return b"Q" + struct.pack("!I", len(b) + 4) + b


TERMINATE = b"X" + struct.pack("!I", 4)


class PgConn:
    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def send_startup(self, db: str = DB) -> None:
        self.sock.sendall(startup_packet(USER, db))

    def _msg(self) -> tuple[bytes, bytes]:
        while True:
            if len(self.buf) >= 5:
                ln = struct.unpack("!I", self.buf[1:5])[0]
                if len(self.buf) >= 1 + ln:
                    t, body = self.buf[:1], self.buf[5:1 + ln]
                    self.buf = self.buf[1 + ln:]
                    return t, body
            chunk = self.sock.recv(65536)
            if not chunk:
                raise BenchError("connection closed by server")
            self.buf += chunk

    def until_ready(self) -> None:
        while True:
            t, body = self._msg()
            if t == b"R":
                code = struct.unpack("!I", body[:4])[0]
                if code != 0:
                    raise BenchError(f"server asked for authentication (code {code}); expected trust")
            elif t == b"E":
                fields = dict((f[:1].decode(), f[1:].decode(errors="replace"))
                              for f in body.split(b"\0") if f)
                raise BenchError(f"server error: {fields.get('M', body)}")
            elif t == b"Z":
                return

    def query(self, sql: str) -> None:
        self.sock.sendall(query_packet(sql))
        self.until_ready()

    def close(self) -> None:
        try:
            self.sock.sendall(TERMINATE)
        except OSError:
            pass
        self.sock.close()


def pg_ping(port: int, sql: str | None = "SELECT 1", db: str = DB) -> None:
    c = PgConn(port)
    try:
        c.send_startup(db)
        c.until_ready()
        if sql:
            c.query(sql)
    finally:
        c.close()


def wait_ready(proc: Proc, port: int, timeout: float = 60.0, db: str = DB) -> None:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if not proc.alive():
            raise BenchError(f"{proc.name} exited with code {proc.popen.returncode}:\n{proc.log_tail()}")
        try:
            pg_ping(port, db=db)
            return
        except (OSError, BenchError) as e:
            last = e
            time.sleep(0.2)
    raise BenchError(f"{proc.name} not ready on port {port} after {timeout:.0f}s: {last}\n{proc.log_tail()}")


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sh(argv: list[str], *, check: bool = True, env=None, timeout=None, as_postgres=False,
       cwd=None) -> subprocess.CompletedProcess:
    kw = {}
    if as_postgres and os.geteuid() == 0:
        kw = dict(user=OS_USER, group=pwd.getpwnam(OS_USER).pw_gid, extra_groups=[])
    r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       env=env, timeout=timeout, cwd=cwd, **kw)
    if check and r.returncode != 0:
        raise BenchError(f"{' '.join(map(shlex.quote, argv))} failed ({r.returncode}):\n"
                         f"{r.stdout[-2000:]}{r.stderr[-2000:]}")
    return r


def first_line(argv: list[str]) -> str:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=20)
        return (r.stdout or r.stderr).strip().splitlines()[0]
    except Exception:
        return "unknown"


def pg_env() -> dict:
    env = dict(os.environ)
    for k in list(env):
        if k.startswith("PG"):
            del env[k]
    env.update(PGSSLMODE="disable", PGGSSENCMODE="disable", PGCONNECT_TIMEOUT="30")
    return env


def find_pg_bindir(explicit: str | None) -> Path:
    cands = []
    if explicit:
        cands.append(Path(explicit))
    cands += sorted((Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin")),
                    key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
                    reverse=True)
    cands.append(Path("/usr/local/bin"))
    for d in cands:
        if (d / "initdb").exists() and (d / "postgres").exists() and (d / "pg_ctl").exists():
            return d
    raise BenchError("PostgreSQL server binaries (initdb, postgres) not found; use --pg-bin")


def find_pgbench(bindir: Path) -> str:
    for p in (bindir / "pgbench", shutil.which("pgbench")):
        if p and Path(p).exists():
            return str(p)
    raise BenchError("pgbench not found")


def vmrss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise BenchError(f"no VmRSS for pid {pid}")


def stat_fields(pid: int | str) -> list[str] | None:
    """/proc/PID/stat after the command name: [0] state, [1] ppid, … [11] utime, [12] stime,
    [13] cutime, [14] cstime (fields 3, 4, 14-17 of the line). None if the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat[stat.rindex(")") + 2:].split()
    except (OSError, ValueError):
        return None


def cpu_ticks(pid: int) -> int | None:
    """User + system CPU of a process (all its threads) in clock ticks, from /proc/PID/stat."""
    fields = stat_fields(pid)
    return int(fields[11]) + int(fields[12]) if fields else None


def tree_cpu_ticks(pid: int) -> tuple[int, int] | None:
    """CPU of a process and of its children, in clock ticks, and how many children it has: its
    own user + system time, that of the children it has reaped (cutime, cstime) and that of its
    live children. The difference over a run counts PostgreSQL's backends, also those that
    ended meanwhile (direct runs; see `settled_tree_cpu_ticks`)."""
    own = stat_fields(pid)
    if own is None:
        return None
    total = sum(int(x) for x in own[11:15])  # utime, stime, cutime, cstime
    children = 0
    for d in Path("/proc").iterdir():
        f = stat_fields(d.name) if d.name.isdigit() else None
        if f and f[1] == str(pid):
            children += 1  # a zombie too: its CPU reaches cutime once reaped
            if f[0] != "Z":
                total += int(f[11]) + int(f[12])
    return total, children


def settled_tree_cpu_ticks(pid: int, children_before: int | None) -> int | None:
    """`tree_cpu_ticks` once the backends of a finished run have exited and their CPU has
    reached cutime: the children are back to `children_before` and the total held still for
    0.1 s (for a moment an exiting backend is neither listed nor counted); at most 3 s."""
    deadline = time.monotonic() + 3
    last = None
    while True:
        r = tree_cpu_ticks(pid)
        if r is None or children_before is None:
            return r[0] if r else None
        settled = r[1] <= children_before and last is not None and r[0] == last
        if settled or time.monotonic() > deadline:
            return r[0]
        last = r[0]
        time.sleep(0.1)


def children_cpu_s() -> float:
    """User + system CPU of the children this script has waited for (pgbench runs), seconds."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def nofile_soft(pid: int) -> str:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return line.split()[3]
    return "?"


def raise_nofile(want: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            # root may raise the hard limit too
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(want, hard)))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# --------------------------------------------------------------------------
# Setup: build, PgBouncer install, PostgreSQL, poolers
# --------------------------------------------------------------------------

def build_pgferry() -> None:
    log("building pgferry: cargo build --profile dist --bin pgferry")
    r = subprocess.run(["cargo", "build", "--profile", "dist", "--bin", "pgferry"], cwd=REPO)
    if r.returncode != 0:
        raise BenchError("cargo build --profile dist failed (use --no-build to benchmark an existing binary)")


def debian_pgbouncer_pids() -> list[int]:
    """PgBouncer processes that are not ours (the Debian service)."""
    pids = []
    for d in glob.glob("/proc/[0-9]*"):
        try:
            if Path(d, "comm").read_text().strip() != "pgbouncer":
                continue
            cmd = Path(d, "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "/etc/pgbouncer" in cmd:
            pids.append(int(Path(d).name))
    return pids


def ensure_pgbouncer(explicit: str | None) -> str:
    path = explicit or shutil.which("pgbouncer") or (
        "/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None)
    if not path:
        log("PgBouncer not installed: apt-get install -y pgbouncer")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        cmd = ["apt-get", "install", "-y", "--no-install-recommends", "pgbouncer"]
        r = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL)
        if r.returncode != 0:
            subprocess.run(["apt-get", "update"], env=env, stdin=subprocess.DEVNULL)
            r = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL)
        if r.returncode != 0:
            raise BenchError("apt-get install pgbouncer failed")
        path = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
        subprocess.run(["service", "pgbouncer", "stop"], capture_output=True)
    # The Debian package's own service must not be running (it holds 6432).
    pids = debian_pgbouncer_pids()
    if pids:
        log(f"stopping the Debian pgbouncer service (pids {pids})")
        subprocess.run(["service", "pgbouncer", "stop"], capture_output=True)
        time.sleep(0.5)
        for pid in debian_pgbouncer_pids():
            try:
                os.kill(pid, signal.SIGTERM)
            except OSError:
                pass
    return path


@dataclass
class Env:
    tmp: Path
    pg_bin: Path
    pgbench: str
    pg_port: int
    ports: dict = field(default_factory=dict)
    procs: dict = field(default_factory=dict)
    starters: dict = field(default_factory=dict)
    restarts: dict = field(default_factory=dict)
    conn_est: dict = field(default_factory=dict)


def start_postgres(env: Env, args) -> None:
    data = env.tmp / "pgdata"
    sock = env.tmp / "sock"
    sock.mkdir()
    pw = pwd.getpwnam(OS_USER)
    for p in (env.tmp, sock):
        os.chown(p, pw.pw_uid, pw.pw_gid)
    log(f"initdb in {data}")
    sh([str(env.pg_bin / "initdb"), "-D", str(data), "-U", USER, "-A", "trust", "-E", "UTF8",
        "--no-sync", "--no-instructions"], as_postgres=True, cwd=env.tmp)
    conf = f"""
# pgferry load benchmark: throw-away instance, durability off
listen_addresses = '127.0.0.1'
port = {env.pg_port}
unix_socket_directories = '{sock}'
max_connections = {args.max_connections}
shared_buffers = '{args.shared_buffers}'
fsync = off
synchronous_commit = off
full_page_writes = off
autovacuum = off
log_min_messages = warning
log_checkpoints = off
"""
    with open(data / "postgresql.conf", "a") as f:
        f.write(conf)
    (data / "pg_hba.conf").write_text(
        "# benchmark only: trust on loopback\n"
        "local all all trust\n"
        "host all all 127.0.0.1/32 trust\n")
    os.chown(data / "pg_hba.conf", pw.pw_uid, pw.pw_gid)

    def start():
        return Proc("postgres", [str(env.pg_bin / "postgres"), "-D", str(data)],
                    env.tmp / "postgres.log", as_postgres=True, stop_signal=signal.SIGINT,
                    deathsig=signal.SIGQUIT, cwd=env.tmp)
    p = start()
    env.procs["direct"] = p
    wait_ready(p, env.pg_port, db="postgres")
    log(f"PostgreSQL up on 127.0.0.1:{env.pg_port}; pgbench -i -s {args.scale}")
    penv = pg_env()
    psql = str(env.pg_bin / "psql") if (env.pg_bin / "psql").exists() else "psql"
    common = ["-h", "127.0.0.1", "-p", str(env.pg_port), "-U", USER]
    sh([psql, *common, "-d", "postgres", "-qAt", "-c", f"CREATE DATABASE {DB}"], env=penv)
    sh([env.pgbench, *common, "-i", "-q", "-s", str(args.scale), DB], env=penv, timeout=1800)
    sh([psql, *common, "-d", DB, "-qAt", "-c", "VACUUM ANALYZE", "-c", "CHECKPOINT"], env=penv)


def write_userlist(path: Path) -> None:
    path.write_text(f'"{USER}" ""\n')
    os.chmod(path, 0o644)


def server_host(env: Env, args) -> str:
    """Where the poolers reach PostgreSQL: loopback TCP, or with `--server-socket` the
    directory of its Unix socket (a pooler on the database's own host)."""
    return str(env.tmp / "sock") if args.server_socket else "127.0.0.1"


def server_link(args) -> str:
    return "to PostgreSQL over its Unix socket" if args.server_socket else "to PostgreSQL over loopback TCP"


def setup_pgbouncer(env: Env, args, binary: str) -> None:
    port = env.ports["pgbouncer"] = free_port()
    d = env.tmp / "pgbouncer"
    d.mkdir()
    write_userlist(d / "userlist.txt")
    ini = d / "pgbouncer.ini"
    ini.write_text(f"""[databases]
{DB} = host={server_host(env, args)} port={env.pg_port} dbname={DB}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {d / 'userlist.txt'}
pool_mode = transaction
default_pool_size = {args.pool_size}
max_client_conn = {args.max_client_conn}
log_connections = 0
log_disconnections = 0
log_pooler_errors = 1
""")
    os.chmod(ini, 0o644)
    os.chmod(d, 0o755)

    def start():
        return Proc("pgbouncer", [binary, str(ini)], d / "pgbouncer.log", as_postgres=True,
                    stop_signal=signal.SIGINT, cwd=d)
    env.starters["pgbouncer"] = start


def pgferry_settings(args) -> list[str]:
    """The extra `[pgferry]` lines: `--pgferry-set`, and `workers = 1` unless it sets workers.

    PgBouncer runs on one thread, and so does pgferry here unless told otherwise: on a
    2-core machine that also runs PostgreSQL and pgbench, a second worker thread measured
    22-25 % more pooler CPU per transaction at 1,000 clients (cross-thread wakeups) and no
    gain at 20.
    """
    own = [s for s in args.pgferry_set if s.split("=")[0].strip() == "workers"]
    return ([] if own else ["workers = 1"]) + list(args.pgferry_set)


def setup_pgferry(env: Env, args, binary: Path) -> None:
    port = env.ports["pgferry"] = free_port()
    d = env.tmp / "pgferry"
    d.mkdir()
    write_userlist(d / "userlist.txt")
    extra = "\n".join(pgferry_settings(args))
    cfg = d / "pgferry.toml"
    cfg.write_text(f"""[pgferry]
listen_addr = "127.0.0.1"
listen_port = {port}
pool_mode = "transaction"
default_pool_size = {args.pool_size}
max_client_conn = {args.max_client_conn}
auth_type = "trust"
auth_file = "userlist.txt"
metrics_addr = ""
log_connections = false
log_disconnections = false
{extra}

[databases.{DB}]
host = "{server_host(env, args)}"
port = {env.pg_port}
dbname = "{DB}"
""")
    os.chmod(cfg, 0o644)
    os.chmod(d, 0o755)
    r = sh([str(binary), "check-config", str(cfg)], check=False)
    if r.returncode != 0:
        raise BenchError(f"pgferry check-config rejected the benchmark config:\n{r.stdout}{r.stderr}")

    def start():
        # pgferry runs as the invoking user (root is fine for it), same fd limit as PgBouncer.
        return Proc("pgferry", [str(binary), "--config", str(cfg)], d / "pgferry.log",
                    as_postgres=False, stop_signal=signal.SIGTERM, cwd=d)
    env.starters["pgferry"] = start


def start_pooler(env: Env, name: str) -> None:
    p = env.starters[name]()
    env.procs[name] = p
    wait_ready(p, env.ports[name])


def ensure_running(env: Env, name: str) -> str | None:
    """Restart a pooler that died; returns a note for the report if it had."""
    p = env.procs.get(name)
    if name == "direct" or (p and p.alive()):
        return None
    code = p.popen.returncode if p else None
    tail = p.log_tail(5) if p else ""
    log(f"{name} is not running (exit code {code}); restarting it. Log tail:\n{tail}")
    env.restarts[name] = env.restarts.get(name, 0) + 1
    start_pooler(env, name)
    return f"{name} had exited (code {code}) and was restarted"


# --------------------------------------------------------------------------
# Workloads and pgbench
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class Workload:
    script: str  # select-only | tpcb-like
    mode: str  # simple | extended | prepared
    clients: int

    @property
    def id(self) -> str:
        return f"{'S' if self.script == 'select-only' else 'tpcb'}-{self.mode}@{self.clients}"

    @property
    def title(self) -> str:
        return f"{'-S' if self.script == 'select-only' else 'tpcb-like'} {self.mode}"


def all_workloads(args) -> list[Workload]:
    ws = [Workload("select-only", m, c) for m in ("simple", "extended", "prepared")
          for c in args.clients]
    ws += [Workload("tpcb-like", "simple", c) for c in args.tpcb_clients]
    if args.only:
        pats = [p.strip() for p in args.only.split(",") if p.strip()]

        def keep(w: Workload) -> bool:
            names = (w.id, w.id.split("@")[0], w.id.split("-")[0])
            return any(fnmatch.fnmatchcase(n, p) for n in names for p in pats)
        ws = [w for w in ws if keep(w)]
    return ws


AB_RE = re.compile(r"client \d+ (?:script \d+ )?aborted")


def parse_latencies(prefix: str) -> list[int]:
    lat = []
    for fn in glob.glob(prefix + ".*"):
        with open(fn) as f:
            for line in f:
                parts = line.split(None, 3)
                if len(parts) >= 3:
                    try:
                        lat.append(int(parts[2]))
                    except ValueError:
                        pass  # "failed" / "skipped"
        os.unlink(fn)
    return lat


def percentile(sorted_vals: list[int], q: float) -> float:
    if not sorted_vals:
        return float("nan")
    k = max(0, min(len(sorted_vals) - 1, math.ceil(q / 100.0 * len(sorted_vals)) - 1))
    return float(sorted_vals[k])


def connect_allowance(env: Env, target: str, clients: int) -> int:
    """Seconds added to -T for connection set-up.

    pgbench's -T clock starts before its clients connect; 1,000 direct
    connections (1,000 forked backends) can take many seconds on a small
    machine, which would eat the measured interval. The allowance starts
    from a guess and follows the connection time pgbench reports.
    """
    est = env.conn_est.get((target, clients))
    if est is None:
        if clients < 100:
            return 0
        est = clients * (0.010 if target == "direct" else 0.002)
    return 0 if est < 0.5 else math.ceil(est)


def run_pgbench_adaptive(env: Env, target: str, w: Workload, duration: int, tag: str) -> dict:
    extra = connect_allowance(env, target, w.clients)
    rec = run_pgbench(env, target, w, duration, tag, extra)
    measured = rec.get("measured_s")
    short = rec["rc"] == 0 and rec["aborted_clients"] == 0 and (
        not rec["processed"] or (measured is not None and measured < 0.6 * duration))
    if short:
        extra2 = connect_allowance(env, target, w.clients)
        extra2 = max(extra2, extra + 5)
        log(f"  {w.id} {target}: only {measured or 0:.1f} s of {duration} s measured "
            f"(connecting took {rec['conn_s'] or 0:.1f} s); rerunning with -T {duration + extra2}")
        rec = run_pgbench(env, target, w, duration, tag + "-retry", extra2)
        rec["retried"] = True
    return rec


def run_pgbench(env: Env, target: str, w: Workload, duration: int, tag: str, extra: int = 0) -> dict:
    port = env.pg_port if target == "direct" else env.ports[target]
    logdir = env.tmp / "pgbench-logs"
    logdir.mkdir(exist_ok=True)
    prefix = str(logdir / f"{tag}")
    cmd = [env.pgbench, "-h", "127.0.0.1", "-p", str(port), "-U", USER, "-n",
           "-b", w.script, "-M", w.mode, "-c", str(w.clients), "-j", str(min(2, w.clients)),
           "-T", str(duration + extra), "--log", f"--log-prefix={prefix}", DB]
    rec = dict(workload=w.id, target=target, clients=w.clients, mode=w.mode, script=w.script,
               duration=duration, cmd=" ".join(cmd[:-1] + [DB]))
    proc = env.procs.get(target) if target != "direct" else None
    cpu0 = cpu_ticks(proc.pid) if proc else None
    pg = env.procs["direct"].pid
    pg0, client0 = tree_cpu_ticks(pg), children_cpu_s()
    t0 = time.monotonic()
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, env=pg_env(), cwd=logdir,
                           timeout=duration + 240, preexec_fn=_child_setup(signal.SIGKILL))
        out, err, rc = r.stdout, r.stderr, r.returncode
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = "pgbench timed out"
        rc = -1
    rec["wall_s"] = round(time.monotonic() - t0, 2)
    cpu1 = cpu_ticks(proc.pid) if proc else None
    pg1 = settled_tree_cpu_ticks(pg, pg0[1] if pg0 else None)
    client1 = children_cpu_s()

    def grab(pat, conv=float):
        m = re.search(pat, out)
        return conv(m.group(1)) if m else None
    rec["tps"] = grab(r"tps = ([\d.]+)")
    rec["processed"] = grab(r"number of transactions actually processed: (\d+)", int)
    rec["failed_tx"] = grab(r"number of failed transactions: (\d+)", int) or 0
    rec["conn_ms"] = grab(r"initial connection time = ([\d.]+) ms")
    rec["pgbench_lat_ms"] = grab(r"latency average = ([\d.]+) ms")
    rec["aborted_clients"] = len(AB_RE.findall(err))
    rec["T"] = duration + extra
    rec["measured_s"] = (round(rec["processed"] / rec["tps"], 2)
                         if rec["processed"] and rec["tps"] else None)
    # The pooler's own CPU per transaction (logins included), user + system.
    def per_tx(t0, t1, per_second=os.sysconf("SC_CLK_TCK")):
        if t0 is None or t1 is None or not rec["processed"]:
            return None
        return round((t1 - t0) * 1e6 / per_second / rec["processed"], 1)
    rec["cpu_us"] = per_tx(cpu0, cpu1)
    # The rest of the machine's CPU per transaction: PostgreSQL (postmaster and backends, also
    # those that ended during the run) and pgbench itself (rusage, in seconds).
    rec["pg_cpu_us"] = per_tx(pg0[0] if pg0 else None, pg1)
    rec["client_cpu_us"] = per_tx(client0, client1, per_second=1)
    # pgbench 15 prints the mean per-thread connection time; without it use the wall-clock excess
    conn_s = rec["conn_ms"] / 1000.0 if rec["conn_ms"] is not None else None
    if conn_s is None and rc == 0:
        conn_s = max(0.0, rec["wall_s"] - (duration + extra))
    rec["conn_s"] = conn_s
    if conn_s is not None:
        env.conn_est[(target, w.clients)] = conn_s * 1.25 + 0.5
    lat = parse_latencies(prefix)
    lat.sort()
    rec["samples"] = len(lat)
    rec["mean_ms"] = round(statistics.fmean(lat) / 1000.0, 4) if lat else None
    rec["p99_ms"] = round(percentile(lat, 99) / 1000.0, 4) if lat else None
    rec["rc"] = rc
    rec["stdout_tail"] = out.strip().splitlines()[-12:]
    rec["stderr_tail"] = err.strip().splitlines()[-5:]
    errs = [l.strip() for l in err.splitlines()
            if ("error" in l.lower() or "FATAL" in l) and "Run was aborted" not in l]
    msg = errs[0] if errs else (err.strip().splitlines()[-1] if err.strip() else "")
    msg = re.sub(r"^pgbench: error: ", "", msg)
    msg = re.sub(r"^client \d+ (script \d+ )?aborted in command \d+ query \d+: ", "", msg)
    ok = rc == 0 and rec["aborted_clients"] == 0 and bool(rec["tps"]) and bool(rec["processed"])
    if rc == 0 and not rec["processed"] and not msg:
        msg = "no transactions within -T (connecting took the whole run)"
    rec["error"] = msg[:200]
    rec["ok"] = ok
    if not ok and not rec["error"]:
        rec["error"] = f"pgbench exited with code {rc}"
    return rec


# --------------------------------------------------------------------------
# Idle-client RSS
# --------------------------------------------------------------------------

def measure_idle_rss(env: Env, name: str, n: int, hold: float, batch: int = 200) -> dict:
    p = env.procs[name]
    port = env.ports[name]
    pg_ping(port)  # the pool has a server connection, caches warmed
    time.sleep(1.0)
    before = vmrss_kib(p.pid)
    conns: list[PgConn] = []
    t0 = time.monotonic()
    error = None
    try:
        while len(conns) < n:
            chunk = []
            for _ in range(min(batch, n - len(conns))):
                c = PgConn(port, timeout=30)
                c.send_startup()
                chunk.append(c)
            for c in chunk:
                c.until_ready()
            conns.extend(chunk)
        # Idle clients, not clients just logged in: pgferry parks a client idle for
        # client_park_delay (1 s) and its allocator returns the freed pages over the next second.
        time.sleep(hold)
        after = vmrss_kib(p.pid)
    except (OSError, BenchError) as e:
        error = f"after {len(conns)} connections: {e}"
        after = vmrss_kib(p.pid) if p.alive() else None
    finally:
        for c in conns:
            c.close()
    opened = len(conns)
    res = dict(target=name, clients=opened, requested=n, rss_before_kib=before, rss_after_kib=after,
               nofile=nofile_soft(p.pid) if p.alive() else "?",
               seconds=round(time.monotonic() - t0, 2), error=error)
    if after is not None and opened:
        res["per_client_bytes"] = round((after - before) * 1024 / opened, 1)
    time.sleep(1.0)
    return res


# --------------------------------------------------------------------------
# Aggregation, targets, report
# --------------------------------------------------------------------------

def aggregate(runs: list[dict], workloads: list[Workload], targets: list[str]) -> list[dict]:
    rows = []
    for w in workloads:
        row = dict(workload=w, cells={})
        for t in targets:
            rs = [r for r in runs if r["workload"] == w.id and r["target"] == t]
            if not rs:
                continue
            good = [r for r in rs if r["ok"]]
            cell = dict(runs=len(rs), ok=len(good) == len(rs),
                        failed_tx=sum(r["failed_tx"] for r in rs),
                        aborted=sum(r["aborted_clients"] for r in rs),
                        errors=sorted({r["error"] for r in rs if r["error"]}))
            src = good if good else []
            for k in ("tps", "mean_ms", "p99_ms", "cpu_us", "pg_cpu_us", "client_cpu_us"):
                vals = [r[k] for r in src if r.get(k) is not None]
                cell[k] = statistics.median(vals) if vals else None
            if not cell["ok"]:
                cell["tps"] = None
            row["cells"][t] = cell
        rows.append(row)
    return rows


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def fmt_tps(c: dict | None) -> str:
    if c is None:
        return "–"
    if not c["ok"]:
        return "failed"
    return f"{c['tps']:,.0f}"


def fmt_ratio(x) -> str:
    return "n/a" if x is None else f"{x:.2f}×"


def fmt_ms(v) -> str:
    return "–" if v is None else f"{v:.3f}"


def cell(row, t):
    return row["cells"].get(t)


def tps_of(row, t):
    c = cell(row, t)
    return c["tps"] if c and c["ok"] else None


def failures_text(row, targets) -> str:
    parts = []
    for t in targets:
        c = cell(row, t)
        if not c:
            continue
        if c["failed_tx"] or c["aborted"] or not c["ok"]:
            s = f"{SHORT[t]}: "
            bits = []
            if c["failed_tx"]:
                bits.append(f"{c['failed_tx']} failed tx")
            if c["aborted"]:
                bits.append(f"{c['aborted']} clients aborted")
            if c["errors"]:
                bits.append(c["errors"][0])
            parts.append(s + ", ".join(bits))
    return "; ".join(parts) if parts else "0"


def find_row(rows, script, mode, clients):
    for r in rows:
        w = r["workload"]
        if w.script == script and w.mode == mode and w.clients == clients:
            return r
    return None


def evaluate_targets(rows, rss: dict) -> list[tuple[str, str, str]]:
    out = []

    def verdict(conds):
        if any(c is False for c in conds):
            return "not met"
        if all(c is None for c in conds):
            return "not measured"
        if any(c is None for c in conds):
            return "partly measured"
        return "met"

    # 1. -S simple and extended at 20 clients >= 0.85x direct
    conds, ev = [], []
    for mode in ("simple", "extended"):
        r = find_row(rows, "select-only", mode, 20)
        x = ratio(tps_of(r, "pgferry"), tps_of(r, "direct")) if r else None
        conds.append(None if x is None else x >= 0.85)
        ev.append(f"{mode} {fmt_ratio(x)}" if r else f"{mode} not run")
    out.append(("`-S` simple and extended, 20 clients: ≥ 0.85× direct", verdict(conds), ", ".join(ev)))

    # 2. prepared at 20 clients >= 0.80x direct, zero errors
    r = find_row(rows, "select-only", "prepared", 20)
    if r and cell(r, "pgferry") and cell(r, "direct"):
        c = cell(r, "pgferry")
        x = ratio(tps_of(r, "pgferry"), tps_of(r, "direct"))
        errs = c["failed_tx"] + c["aborted"] + (0 if c["ok"] else 1)
        conds = [x is not None and x >= 0.80, errs == 0]
        out.append(("`-S -M prepared`, 20 clients: ≥ 0.80× direct, zero errors",
                    "met" if all(conds) else "not met",
                    f"{fmt_ratio(x)}, {c['failed_tx']} failed tx, {c['aborted']} aborted clients"))
    else:
        out.append(("`-S -M prepared`, 20 clients: ≥ 0.80× direct, zero errors", "not measured", ""))

    # 3. 1 client >= 0.92x direct, added latency < 15 us
    conds, ev = [], []
    for mode in ("simple", "extended", "prepared"):
        r = find_row(rows, "select-only", mode, 1)
        if not r:
            conds.append(None)
            ev.append(f"{mode} not run")
            continue
        x = ratio(tps_of(r, "pgferry"), tps_of(r, "direct"))
        cf, cd = cell(r, "pgferry"), cell(r, "direct")
        add = None
        if cf and cd and cf["ok"] and cd["ok"] and cf["mean_ms"] is not None and cd["mean_ms"] is not None:
            add = (cf["mean_ms"] - cd["mean_ms"]) * 1000.0
        conds.append(None if x is None else x >= 0.92)
        conds.append(None if add is None else add < 15.0)
        ev.append(f"{mode} {fmt_ratio(x)}, {add:+.1f} µs" if add is not None else f"{mode} {fmt_ratio(x)}")
    out.append(("1 client: ≥ 0.92× direct, added latency per query < 15 µs",
                verdict(conds), "; ".join(ev)))

    # 4. 1000 clients >= 1.3x PgBouncer tps and p99 no worse
    conds, ev = [], []
    for mode in ("simple", "extended", "prepared"):
        r = find_row(rows, "select-only", mode, 1000)
        if not r or not cell(r, "pgferry") or not cell(r, "pgbouncer"):
            conds.append(None)
            ev.append(f"{mode}: not run")
            continue
        cf, cb = cell(r, "pgferry"), cell(r, "pgbouncer")
        if not cb["ok"]:
            conds.append(cf["ok"])
            ev.append(f"{mode}: PgBouncer failed, pgferry {'ok' if cf['ok'] else 'failed'}")
            continue
        x = ratio(tps_of(r, "pgferry"), tps_of(r, "pgbouncer"))
        p99ok = (cf["ok"] and cf["p99_ms"] is not None and cb["p99_ms"] is not None
                 and cf["p99_ms"] <= cb["p99_ms"])
        conds.append(x is not None and x >= 1.3 and p99ok)
        ev.append(f"{mode}: {fmt_ratio(x)} tps, p99 {fmt_ms(cf['p99_ms'])} vs {fmt_ms(cb['p99_ms'])} ms")
    out.append(("1,000 clients, pool 20: ≥ 1.3× PgBouncer tps, p99 no worse than PgBouncer's",
                verdict(conds), "; ".join(ev)))

    # 5. RSS per idle client <= 1 KiB
    f = rss.get("pgferry")
    if f and f.get("per_client_bytes") is not None and not f.get("error"):
        v = f["per_client_bytes"]
        out.append(("RSS per idle client ≤ 1 KiB", "met" if v <= 1024 else "not met",
                    f"{v:,.0f} B per client ({f['clients']:,} idle clients)"))
    else:
        out.append(("RSS per idle client ≤ 1 KiB", "not measured",
                    (f or {}).get("error") or ""))

    # 6. every workload ahead of PgBouncer
    conds, behind = [], []
    for r in rows:
        cf, cb = cell(r, "pgferry"), cell(r, "pgbouncer")
        if not cf or not cb:
            continue
        if not cb["ok"]:
            ahead = cf["ok"]
        elif not cf["ok"]:
            ahead = False
        else:
            ahead = cf["tps"] > cb["tps"]
        conds.append(ahead)
        if not ahead:
            behind.append(r["workload"].id)
    out.append(("every workload ahead of PgBouncer",
                verdict(conds) if conds else "not measured",
                ("behind on: " + ", ".join(behind)) if behind else
                (f"ahead on all {len(conds)}" if conds else "")))
    return out


def text_table(rows, targets) -> str:
    hdr = ["workload", "clients"] + [f"{SHORT[t]} tps" for t in targets]
    if "pgferry" in targets and "direct" in targets:
        hdr.append("ferry/direct")
    if "pgferry" in targets and "pgbouncer" in targets:
        hdr.append("ferry/bouncer")
    hdr += [f"{SHORT[t]} mean/p99 ms" for t in targets]
    poolers = [t for t in ("pgbouncer", "pgferry") if t in targets]
    hdr += [f"{SHORT[t]} cpu µs/tx" for t in poolers]
    lines = [hdr]
    for r in rows:
        w = r["workload"]
        l = [w.title, str(w.clients)] + [fmt_tps(cell(r, t)) for t in targets]
        if "pgferry" in targets and "direct" in targets:
            l.append(fmt_ratio(ratio(tps_of(r, "pgferry"), tps_of(r, "direct"))))
        if "pgferry" in targets and "pgbouncer" in targets:
            l.append(fmt_ratio(ratio(tps_of(r, "pgferry"), tps_of(r, "pgbouncer"))))
        for t in targets:
            c = cell(r, t)
            l.append("–" if not c or not c["ok"] else f"{fmt_ms(c['mean_ms'])}/{fmt_ms(c['p99_ms'])}")
        for t in poolers:
            c = cell(r, t)
            v = c.get("cpu_us") if c and c["ok"] else None
            l.append("–" if v is None else f"{v:.1f}")
        lines.append(l)
    widths = [max(len(x[i]) for x in lines) for i in range(len(hdr))]
    out = []
    for i, l in enumerate(lines):
        out.append("  ".join(s.ljust(widths[j]) if j == 0 else s.rjust(widths[j])
                             for j, s in enumerate(l)))
        if i == 0:
            out.append("  ".join("-" * wd for wd in widths))
    for r in rows:
        ft = failures_text(r, targets)
        if ft != "0":
            out.append(f"  failures {r['workload'].id}: {ft}")
    return "\n".join(out)


def md_escape(s: str) -> str:
    return s.replace("|", "\\|")


def md_head(hdr: list[str], aligns: list[str] | None = None) -> list[str]:
    """A markdown table's header and alignment lines (default: first column left, the rest
    right)."""
    aligns = aligns or ["---"] + ["--:"] * (len(hdr) - 1)
    return ["| " + " | ".join(hdr) + " |", "|" + "|".join(aligns) + "|"]


def markdown_table(rows, targets) -> str:
    hdr = ["workload", "clients"] + [f"{SHORT[t]} tps" for t in targets]
    hdr += ["pgferry / direct", "pgferry / PgBouncer", "PgBouncer / direct"]
    tl = " / ".join(SHORT[t] for t in targets)
    hdr += [f"mean latency ms ({tl})", f"p99 latency ms ({tl})", "failures"]
    out = md_head(hdr, ["---", "--:"] + ["--:"] * (len(hdr) - 3) + ["---"])
    for r in rows:
        w = r["workload"]
        cells = [f"`{w.title}`", str(w.clients)] + [fmt_tps(cell(r, t)) for t in targets]
        cells += [fmt_ratio(ratio(tps_of(r, "pgferry"), tps_of(r, "direct"))),
                  fmt_ratio(ratio(tps_of(r, "pgferry"), tps_of(r, "pgbouncer"))),
                  fmt_ratio(ratio(tps_of(r, "pgbouncer"), tps_of(r, "direct")))]
        for k in ("mean_ms", "p99_ms"):
            vals = []
            for t in targets:
                c = cell(r, t)
                vals.append("–" if not c or not c["ok"] else fmt_ms(c[k]))
            cells.append(" / ".join(vals))
        cells.append(md_escape(failures_text(r, targets)))
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def cpu_markdown(rows, targets) -> str:
    poolers = [t for t in ("pgbouncer", "pgferry") if t in targets]
    hdr = ["workload", "clients"] + [f"{SHORT[t]} µs/tx" for t in poolers]
    if len(poolers) == 2:
        hdr.append("pgferry / PgBouncer")
    out = md_head(hdr)
    for r in rows:
        w = r["workload"]
        vals = []
        for t in poolers:
            c = cell(r, t)
            vals.append(c.get("cpu_us") if c and c["ok"] else None)
        cells = [f"`{w.title}`", str(w.clients)] + ["–" if v is None else f"{v:.1f}" for v in vals]
        if len(poolers) == 2:
            cells.append(fmt_ratio(ratio(vals[1], vals[0])))
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def machine_cpu_markdown(rows, targets) -> str:
    """Per target: pgbench + PostgreSQL (+ pooler) = total CPU µs per transaction."""
    hdr = ["workload", "clients"] + [SHORT[t] for t in targets]
    both = "pgferry" in targets and "pgbouncer" in targets
    if both:
        hdr.append("total pgferry / PgBouncer")
    out = md_head(hdr)
    for r in rows:
        w = r["workload"]
        cells = [f"`{w.title}`", str(w.clients)]
        totals = {}
        for t in targets:
            c = cell(r, t)
            keys = ["client_cpu_us", "pg_cpu_us"] + ([] if t == "direct" else ["cpu_us"])
            parts = [c.get(k) if c and c["ok"] else None for k in keys]
            if any(v is None for v in parts):
                cells.append("–")
                continue
            totals[t] = sum(parts)
            cells.append(" + ".join(f"{v:.0f}" for v in parts) + f" = {totals[t]:.0f}")
        if both:
            cells.append(fmt_ratio(ratio(totals.get("pgferry"), totals.get("pgbouncer"))))
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def rss_markdown(rss: dict, n: int) -> str:
    out = ["| pooler | idle clients | RSS before | RSS after | RSS per idle client | fd limit (soft) | note |",
           "|---|--:|--:|--:|--:|--:|---|"]
    for t in ("pgbouncer", "pgferry"):
        r = rss.get(t)
        if not r:
            continue
        per = r.get("per_client_bytes")
        out.append(f"| {SHORT[t]} | {r['clients']:,} | {r['rss_before_kib']:,} KiB | "
                   f"{'–' if r['rss_after_kib'] is None else format(r['rss_after_kib'], ',') + ' KiB'} | "
                   f"{'–' if per is None else f'{per:,.0f} B ({per / 1024:.2f} KiB)'} | {r['nofile']} | "
                   f"{md_escape(r.get('error') or '')} |")
    return "\n".join(out)


# --------------------------------------------------------------------------
# SVG chart (hand-written)
# --------------------------------------------------------------------------

COLORS = {"direct": "#8c8c8c", "pgbouncer": "#e15759", "pgferry": "#4e79a7"}


def nice_step(vmax: float, nticks: int = 5) -> float:
    raw = vmax / nticks
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


def kfmt(v: float, tick: bool = False) -> str:
    if tick:
        return f"{v / 1000:g}k" if v >= 1000 else f"{v:g}"
    if v >= 10000:
        return f"{v / 1000:.0f}k"
    if v >= 1000:
        return f"{v / 1000:.1f}k"
    return f"{v:.0f}"


def make_svg(rows, targets, title: str) -> str:
    bar_w, gap_in, gap_grp = 18, 3, 26
    left, right, top, bottom = 70, 20, 60, 80
    grp_w = len(targets) * bar_w + (len(targets) - 1) * gap_in
    plot_w = max(480, len(rows) * (grp_w + gap_grp) + gap_grp)
    plot_h = 320
    W, H = left + plot_w + right, top + plot_h + bottom
    vmax = max([tps_of(r, t) or 0 for r in rows for t in targets] + [1])
    step = nice_step(vmax)
    ymax = step * math.ceil(vmax / step)
    y = lambda v: top + plot_h - plot_h * v / ymax  # noqa: E731
    e = html.escape
    s = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
         f'font-family="Helvetica, Arial, sans-serif" font-size="11">',
         f'<rect width="{W}" height="{H}" fill="#ffffff"/>',
         f'<text x="{W / 2:.0f}" y="20" text-anchor="middle" font-size="14" font-weight="bold">{e(title)}</text>']
    # legend
    lx = left
    for t in targets:
        s.append(f'<rect x="{lx}" y="32" width="12" height="12" fill="{COLORS[t]}"/>')
        s.append(f'<text x="{lx + 16}" y="42">{e(LABEL[t])}</text>')
        lx += 30 + 7 * len(LABEL[t])
    # grid + y axis
    v = 0.0
    while v <= ymax + 1e-9:
        yy = y(v)
        s.append(f'<line x1="{left}" y1="{yy:.1f}" x2="{left + plot_w}" y2="{yy:.1f}" stroke="#e5e5e5"/>')
        s.append(f'<text x="{left - 6}" y="{yy + 4:.1f}" text-anchor="end">{kfmt(v, tick=True)}</text>')
        v += step
    s.append(f'<text transform="translate(16,{top + plot_h / 2:.0f}) rotate(-90)" text-anchor="middle">'
             f'transactions per second</text>')
    s.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#333"/>')
    s.append(f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#333"/>')
    x = left + gap_grp
    for r in rows:
        w = r["workload"]
        for i, t in enumerate(targets):
            bx = x + i * (bar_w + gap_in)
            c = cell(r, t)
            if c is None:
                continue
            if c["ok"] and c["tps"] is not None:
                by = y(c["tps"])
                s.append(f'<rect x="{bx}" y="{by:.1f}" width="{bar_w}" height="{top + plot_h - by:.1f}" '
                         f'fill="{COLORS[t]}"><title>{e(LABEL[t])} {e(w.title)} {w.clients} clients: '
                         f'{c["tps"]:,.0f} tps</title></rect>')
                s.append(f'<text transform="translate({bx + bar_w / 2 + 3:.1f},{by - 3:.1f}) rotate(-90)" '
                         f'font-size="9">{kfmt(c["tps"])}</text>')
            else:
                s.append(f'<text transform="translate({bx + bar_w / 2 + 3:.1f},{top + plot_h - 3}) rotate(-90)" '
                         f'font-size="9" fill="{COLORS[t]}" font-weight="bold">✗ failed</text>')
        cx = x + grp_w / 2
        s.append(f'<text x="{cx:.1f}" y="{top + plot_h + 16}" text-anchor="middle">{e(w.title)}</text>')
        s.append(f'<text x="{cx:.1f}" y="{top + plot_h + 30}" text-anchor="middle">{w.clients} '
                 f'client{"s" if w.clients != 1 else ""}</text>')
        x += grp_w + gap_grp
    s.append(f'<text x="{left}" y="{H - 12}" fill="#666">pgbench, loopback, pool size 20, transaction mode; '
             f'generated by benches/load/run.py</text>')
    s.append("</svg>")
    return "\n".join(s) + "\n"


# --------------------------------------------------------------------------
# Machine info and report
# --------------------------------------------------------------------------

def machine_info(env: Env, pgbouncer_bin: str | None, pgferry_bin: Path | None) -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1048576:.1f} GiB"
    except OSError:
        pass
    git = first_line(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    try:
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        if dirty:
            git += " + uncommitted changes"
    except OSError:
        pass
    return dict(
        nproc=first_line(["nproc"]), cpu=cpu, mem=mem, kernel=platform.release(),
        postgres=first_line([str(env.pg_bin / "postgres"), "--version"]),
        pgbench=first_line([env.pgbench, "--version"]),
        pgbouncer=first_line([pgbouncer_bin, "--version"]) if pgbouncer_bin else "not used",
        pgferry=(first_line([str(pgferry_bin), "--version"]) + f" (git {git})") if pgferry_bin else "not used",
        rustc=first_line(["rustc", "--version"]),
        python=platform.python_version(),
        date=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        loadavg=" ".join(f"{x:.2f}" for x in os.getloadavg()),
    )


USAGE_MD = """\
## Running it

Run as root (it starts PostgreSQL and PgBouncer as the `postgres` OS user) on
the machine to measure; everything listens on 127.0.0.1 only:

```sh
python3 benches/load/run.py                 # full run: ~8 minutes, rewrites this file and benchmarks.svg
python3 benches/load/run.py --rounds 3      # each run 3 times, medians reported
python3 benches/load/run.py --quick --only 'S-simple@20,tpcb'   # smoke run (3 s per run)
```

What it does, in order:

1. `cargo build --profile dist --bin pgferry` (the deployment build: fat LTO, one
   codegen unit; skip with `--no-build`); installs
   PgBouncer with `apt-get install -y pgbouncer` if it is missing and makes
   sure the Debian package's own `pgbouncer` service is not running.
2. `initdb` + `postgres` in a temporary directory on a free port, with
   `fsync`, `synchronous_commit` and `full_page_writes` off,
   `max_connections = 1100` (so 1,000 direct clients fit), trust on loopback;
   `pgbench -i -s 10`.
3. PgBouncer (transaction mode, `default_pool_size = 20`,
   `max_client_conn = 5000`, `auth_type = trust`) and pgferry (the same
   settings, `metrics_addr = ""`, connection logging off, and `workers = 1`:
   one thread like PgBouncer — on a 2-core machine shared with PostgreSQL and
   pgbench a second thread cost more CPU than it gave), each on a free port,
   each a foreground child process with the same open-file limit.
4. Idle memory: opens 4,000 idle client connections (startup + trust login up
   to ReadyForQuery, from a small Python v3-protocol client) to each pooler,
   holds them idle for 5 s (`--idle-hold`: longer than pgferry's
   `client_park_delay`, so the clients are measured idle, not just logged in) and
   reports (VmRSS after − VmRSS before) / 4,000. This runs first, on freshly
   started poolers.
5. pgbench (`-n -j 2 --log`) against direct PostgreSQL, PgBouncer and pgferry:
   `-S` (select-only) with `-M simple`, `-M extended`, `-M prepared` at 1, 20
   and 1,000 clients, and tpcb-like at 20 clients. Runs are interleaved: for
   each workload the three targets run back to back, with the starting target
   rotated from one workload (and round) to the next, so machine drift hits all
   three alike. Mean and p99 latency come from pgbench's per-transaction log;
   each pooler's CPU per transaction from its `/proc/PID/stat` before and after,
   PostgreSQL's from the postmaster's (its own, its reaped backends' and its
   live backends') and pgbench's from its rusage.
   pgbench's `-T` clock includes connecting, and 1,000 direct connections
   (1,000 forked backends) take seconds here, so runs with ≥ 100 clients get
   `-T` extended by the connection time pgbench reported for that target (a
   run that measured under 60 % of `-T` is repeated once with more slack).
   A failing run (for example PgBouncer 1.18 on `-M prepared` in transaction
   mode) is recorded with its error, never fatal.
6. Prints the table and writes `docs/benchmarks.md` and `docs/benchmarks.svg`.
   Every process and temporary directory is removed on exit, error or Ctrl-C.

Options (`--help` for all):

| Option | Default | Meaning |
|---|---|---|
| `-T`, `--duration S` | 10 | Seconds per pgbench run. |
| `--quick` | | 3 s runs, 1 s warm-up. |
| `--rounds N` | 1 | Repeat the whole interleaved sequence N times; medians are reported. |
| `--only PATTERNS` | all | Comma-separated workload ids (shell wildcards): `S-simple@20`, `S-*@1000`, `S-prepared`, `tpcb`. |
| `--targets LIST` | `direct,pgbouncer,pgferry` | Which of the three to run. |
| `--clients LIST` | `1,20,1000` | Client counts for the `-S` workloads. |
| `--idle-clients N` | 4000 | Idle connections for the RSS measurement; 0 skips it. |
| `--idle-hold S` | 5 | Seconds the idle connections are held before RSS is read (longer than pgferry's `client_park_delay`). |
| `--pgferry-set 'KEY = VALUE'` | `workers = 1` | Extra line for pgferry's `[pgferry]` table (repeatable). Without a `workers` line the benchmark adds `workers = 1` (one thread, like PgBouncer); `--pgferry-set 'workers = 0'` runs pgferry's default (a thread per core). The latest run with `--pgferry-set 'auto_prepare = true'` (simple queries and unnamed statements run prepared, [auto-prepare.md](auto-prepare.md)) is in [benchmarks-auto-prepare.md](benchmarks-auto-prepare.md). |
| `--server-socket` | | Both poolers reach PostgreSQL over its Unix socket (`host` = the socket directory), as a pooler on the database's own host would; clients and direct pgbench still use TCP. The latest such run is in [benchmarks-socket.md](benchmarks-socket.md) (`--md docs/benchmarks-socket.md --svg docs/benchmarks-socket.svg`). |
| `--md FILE`, `--svg FILE` | `docs/benchmarks.md`, `.svg` | Where the report and plot go. |
| `--no-build` | | Use the existing `target/dist/pgferry` (or `--pgferry-bin`). |
| `--no-docs` | | Print only; do not rewrite `docs/benchmarks.md` / `.svg`. |
| `--json FILE` | | Also write every run's raw numbers to FILE. |
| `--report-only FILE` | | Re-render the table, `docs/benchmarks.md` and `.svg` from a `--json` file without running anything. |
| `--keep-tmp` | | Keep the temporary directory (logs, configs) for inspection. |
"""


def write_report(args, argv, info, rows, targets, rss, target_eval, notes, md_path: Path, svg_path: Path,
                 partial: bool) -> None:
    svg_rel = os.path.relpath(svg_path, md_path.parent)
    cmd = " ".join(["python3 benches/load/run.py"] + [shlex.quote(a) for a in argv])
    L = []
    L.append("# Benchmarks\n")
    L.append("Side-by-side load benchmark of direct PostgreSQL, PgBouncer and pgferry "
             "on one machine, generated by [`benches/load/run.py`](../benches/load/run.py). "
             "Do not edit the results by hand: rerun the command.\n")
    if partial:
        L.append("> **Partial run** (a subset of workloads and/or short runs). Regenerate the full "
                 "report with `python3 benches/load/run.py`.\n")
    L.append("## Latest results\n")
    L.append(f"Command: `{cmd}` — {info['date']}.\n")
    L.append("| | |\n|---|---|")
    L.append(f"| CPU | {info['cpu']}, `nproc` = {info['nproc']} |")
    L.append(f"| memory | {info['mem']} |")
    L.append(f"| kernel | {info['kernel']} |")
    L.append(f"| load average at start | {info['loadavg']} |")
    L.append(f"| PostgreSQL | {info['postgres']} (fsync, synchronous_commit, full_page_writes off; "
             f"max_connections {args.max_connections}; shared_buffers {args.shared_buffers}) |")
    L.append(f"| pgbench | {info['pgbench']}, scale {args.scale}, `-j 2`, {args.duration} s per run, "
             f"{args.rounds} round(s), interleaved |")
    L.append(f"| PgBouncer | {info['pgbouncer']}, transaction mode, pool size {args.pool_size}, "
             f"{server_link(args)} |")
    L.append(f"| pgferry | {info['pgferry']}, transaction mode, pool size {args.pool_size}, "
             f"{server_link(args)}; `{'; '.join(pgferry_settings(args))}`" + " |")
    L.append(f"| rustc | {info['rustc']} |")
    L.append("")
    L.append(f"![tps per workload]({svg_rel})\n")
    L.append("### Throughput and latency\n")
    L.append("tps excludes connection time (pgbench's figure); latencies are per transaction from "
             "pgbench's `--log` (mean and 99th percentile), in milliseconds. "
             "Ratios above 1 mean the first is faster. "
             + ("With several rounds, each figure is the median over rounds. " if args.rounds > 1 else "")
             + "\n")
    L.append(markdown_table(rows, targets))
    L.append("")
    if "pgferry" in targets or "pgbouncer" in targets:
        L.append("### Pooler CPU per transaction\n")
        L.append("User plus system CPU of the pooler process (all threads, from `/proc/PID/stat`) "
                 "over the pgbench run, divided by the transactions processed; logins included. "
                 "On a machine this small the poolers share two cores with pgbench and PostgreSQL, "
                 "so every µs a pooler spends per transaction is taken from them. "
                 "Ratios above 1 mean pgferry uses more.\n")
        L.append(cpu_markdown(rows, targets))
        L.append("")
    measured = any(c.get("pg_cpu_us") is not None for r in rows for c in r["cells"].values())
    if measured:
        L.append("### Where the machine's CPU went, per transaction\n")
        L.append("µs of CPU per transaction: pgbench + PostgreSQL (postmaster and every backend, also "
                 "those that ended during the run) + the pooler, each from `/proc` (pgbench from its "
                 "rusage) over the same pgbench run; logins included. With the cores saturated, tps "
                 "follows the total, so a pooler that makes pgbench or PostgreSQL work harder per "
                 "transaction (e.g. by delivering replies in smaller batches, so that pgbench polls "
                 "its 500 sockets per thread more often) costs throughput even if its own column is "
                 "small. Ratios above 1 mean the machine spent more per transaction behind pgferry.\n")
        L.append(machine_cpu_markdown(rows, targets))
        L.append("")
    if rss:
        L.append("### Memory per idle client\n")
        L.append(f"{args.idle_clients:,} idle client connections (logged in, ReadyForQuery, no query) to "
                 "each freshly started pooler; VmRSS from `/proc/PID/status`.\n")
        L.append(rss_markdown(rss, args.idle_clients))
        L.append("")
    L.append("### Targets (issue 6)\n")
    L.append(f"Baseline measured when the issue was filed: {BASELINE}\n")
    L.append("| target | result | numbers |\n|---|---|---|")
    for name, verdict, ev in target_eval:
        mark = {"met": "✅ met", "not met": "❌ not met"}.get(verdict, verdict)
        L.append(f"| {name} | {mark} | {md_escape(ev)} |")
    L.append("")
    if notes:
        L.append("### Notes from this run\n")
        for n in notes:
            L.append(f"- {n}")
        L.append("")
    L.append(USAGE_MD)
    md_path.write_text("\n".join(L))
    svg_title = "pgbench tps: direct PostgreSQL vs PgBouncer vs pgferry"
    svg_path.write_text(make_svg(rows, targets, svg_title))


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------

def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-T", "--duration", type=int, default=None, help="seconds per pgbench run (default 10)")
    ap.add_argument("--quick", action="store_true", help="3 s runs, 1 s warm-up")
    ap.add_argument("--warmup", type=int, default=None, help="seconds of warm-up per target (default 3; quick 1)")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--only", default="", help="comma-separated workload ids/wildcards, e.g. 'S-simple@20,tpcb'")
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--clients", default="1,20,1000")
    ap.add_argument("--tpcb-clients", default="20")
    ap.add_argument("--idle-clients", type=int, default=4000)
    ap.add_argument("--idle-hold", type=float, default=5.0)
    ap.add_argument("--pool-size", type=int, default=20)
    ap.add_argument("--max-client-conn", type=int, default=5000)
    ap.add_argument("--max-connections", type=int, default=1100,
                    help="PostgreSQL max_connections (1,000 direct clients need > 1,000)")
    ap.add_argument("--shared-buffers", default="256MB")
    ap.add_argument("--scale", type=int, default=10)
    ap.add_argument("--pgferry-set", action="append", default=[], metavar="'KEY = VALUE'")
    ap.add_argument("--server-socket", action="store_true",
                    help="poolers reach PostgreSQL over its Unix socket instead of loopback TCP "
                         "(clients, and direct pgbench, still use TCP)")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--pgferry-bin", default=None)
    ap.add_argument("--pgbouncer-bin", default=None)
    ap.add_argument("--pg-bin", default=None, help="directory with initdb/postgres")
    ap.add_argument("--no-docs", action="store_true")
    ap.add_argument("--md", default=str(REPO / "docs" / "benchmarks.md"))
    ap.add_argument("--svg", default=str(REPO / "docs" / "benchmarks.svg"))
    ap.add_argument("--json", default=None)
    ap.add_argument("--keep-tmp", action="store_true")
    ap.add_argument("--report-only", metavar="JSON", default=None,
                    help="rerender the table and docs from a --json file, without running anything")
    a = ap.parse_args(argv)
    if a.duration is None:
        a.duration = 3 if a.quick else 10
    if a.warmup is None:
        a.warmup = 1 if a.quick else 3
    a.clients = [int(x) for x in a.clients.split(",") if x.strip()]
    a.tpcb_clients = [int(x) for x in a.tpcb_clients.split(",") if x.strip()]
    a.targets = [t.strip() for t in a.targets.split(",") if t.strip()]
    for t in a.targets:
        if t not in TARGETS:
            ap.error(f"unknown target {t!r}; choose from {', '.join(TARGETS)}")
    a.targets = [t for t in TARGETS if t in a.targets]
    return a


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.report_only:
        return report(args, json.loads(Path(args.report_only).read_text()))
    # Ctrl-C raises KeyboardInterrupt even when started from a non-interactive
    # shell in the background (which would otherwise leave SIGINT ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, _on_signal)
    if os.geteuid() != 0:
        raise BenchError("run as root: PostgreSQL and PgBouncer are started as the 'postgres' OS user")
    try:
        pwd.getpwnam(OS_USER)
    except KeyError:
        raise BenchError("no 'postgres' OS user (install postgresql)")
    workloads = all_workloads(args)
    if not workloads:
        raise BenchError(f"--only {args.only!r} matches no workload")
    targets = args.targets
    nofile = raise_nofile(max(20000, args.idle_clients + 2000, args.max_client_conn + 1000))
    if nofile < args.idle_clients + 100:
        log(f"warning: open-file limit {nofile} is below --idle-clients {args.idle_clients}")

    pgferry_bin = None
    if "pgferry" in targets:
        if not args.no_build and not args.pgferry_bin:
            build_pgferry()
        tdir = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
        pgferry_bin = (Path(args.pgferry_bin).resolve() if args.pgferry_bin
                       else tdir / "dist" / "pgferry")
        if not pgferry_bin.exists():
            raise BenchError(f"{pgferry_bin} not found (build it or pass --pgferry-bin)")
    pgbouncer_bin = ensure_pgbouncer(args.pgbouncer_bin) if "pgbouncer" in targets else None

    pg_bin = find_pg_bindir(args.pg_bin)
    tmp = Path(tempfile.mkdtemp(prefix="pgferry-load-"))
    os.chmod(tmp, 0o755)
    if not args.keep_tmp:
        CLEANUP.add("temp dir", lambda: shutil.rmtree(tmp, ignore_errors=True))
    else:
        log(f"keeping {tmp}")
    env = Env(tmp=tmp, pg_bin=pg_bin, pgbench=find_pgbench(pg_bin), pg_port=free_port())
    log(f"workdir {tmp}")
    start_postgres(env, args)
    if pgbouncer_bin:
        setup_pgbouncer(env, args, pgbouncer_bin)
        start_pooler(env, "pgbouncer")
        log(f"PgBouncer up on 127.0.0.1:{env.ports['pgbouncer']} (pid {env.procs['pgbouncer'].pid})")
    if pgferry_bin:
        setup_pgferry(env, args, pgferry_bin)
        start_pooler(env, "pgferry")
        log(f"pgferry up on 127.0.0.1:{env.ports['pgferry']} (pid {env.procs['pgferry'].pid})")
    info = machine_info(env, pgbouncer_bin, pgferry_bin)
    notes: list[str] = []
    load1 = os.getloadavg()[0]
    if load1 > 0.5 * (os.cpu_count() or 1):
        notes.append(f"the machine was busy when the run started (load average {load1:.2f} on "
                     f"{os.cpu_count()} CPUs): other processes competed for the cores, so absolute "
                     "numbers are low and noisy; the interleaving keeps the ratios comparable")

    # Idle memory, on fresh poolers.
    rss: dict = {}
    if args.idle_clients > 0:
        for t in ("pgbouncer", "pgferry"):
            if t in targets:
                log(f"idle RSS: {args.idle_clients} idle connections to {t}")
                r = measure_idle_rss(env, t, args.idle_clients, args.idle_hold)
                rss[t] = r
                log(f"  {t}: {r['rss_before_kib']} KiB -> {r['rss_after_kib']} KiB, "
                    f"{r.get('per_client_bytes')} B/client, fd limit {r['nofile']}"
                    + (f", ERROR {r['error']}" if r["error"] else ""))
                note = ensure_running(env, t)
                if note:
                    notes.append(f"during the idle-RSS measurement {note}")

    # Warm-up (not recorded): caches, server connections.
    if args.warmup > 0:
        for t in targets:
            log(f"warm-up {t} ({args.warmup} s)")
            ensure_running(env, t)
            run_pgbench(env, t, Workload("select-only", "simple", 20), args.warmup, f"warmup-{t}")

    runs: list[dict] = []
    total = len(workloads) * len(targets) * args.rounds
    k = 0
    for rnd in range(args.rounds):
        for wi, w in enumerate(workloads):
            shift = (wi + rnd) % len(targets)
            order = targets[shift:] + targets[:shift]
            for t in order:
                k += 1
                note = ensure_running(env, t)
                if note:
                    notes.append(f"before {w.id} round {rnd + 1}: {note}")
                rec = run_pgbench_adaptive(env, t, w, args.duration, f"r{rnd}-{w.id}-{t}".replace("@", "_"))
                rec["round"] = rnd + 1
                runs.append(rec)
                cpu = f", {rec['cpu_us']:.1f} µs CPU/tx" if rec.get("cpu_us") is not None else ""
                status = (f"{rec['tps']:,.0f} tps, mean {fmt_ms(rec['mean_ms'])} ms, "
                          f"p99 {fmt_ms(rec['p99_ms'])} ms{cpu}" if rec["ok"] else f"FAILED: {rec['error']}")
                log(f"[{k}/{total}] {w.id:<18} {t:<9} {status}")
                p = env.procs.get(t)
                if p and not p.alive():
                    notes.append(f"{t} exited (code {p.popen.returncode}) during {w.id} round {rnd + 1}")
                time.sleep(0.5 if w.clients < 100 else 2.0)

    for t in ("pgbouncer", "pgferry"):
        if env.restarts.get(t):
            notes.append(f"{t} was restarted {env.restarts[t]} time(s) after exiting")
    saved_args = {k: v for k, v in vars(args).items()}
    data = dict(argv=sys.argv[1:], args=saved_args, info=info, workloads=[w.id for w in workloads],
                runs=runs, rss=rss, notes=notes)
    if args.json:
        Path(args.json).write_text(json.dumps(data, indent=1))
    return report(args, data)


def workload_from_id(wid: str) -> Workload:
    name, clients = wid.split("@")
    kind, mode = name.split("-", 1)
    return Workload("select-only" if kind == "S" else "tpcb-like", mode, int(clients))


def report(args, data: dict) -> int:
    """Prints the table and writes the docs from collected results (also used by --report-only)."""
    info, runs, rss, notes = data["info"], data["runs"], data["rss"], data["notes"]
    workloads = [workload_from_id(w) for w in data["workloads"]]
    targets = [t for t in TARGETS if t in data["args"]["targets"]]
    rows = aggregate(runs, workloads, targets)
    target_eval = evaluate_targets(rows, rss)

    print()
    print(text_table(rows, targets))
    if rss:
        print()
        for t, r in rss.items():
            per = r.get("per_client_bytes")
            print(f"idle RSS {SHORT[t]:<9}: {r['clients']:,} clients, {r['rss_before_kib']:,} -> "
                  f"{r['rss_after_kib']} KiB = {per if per is not None else '?'} B per client"
                  + (f" ({r['error']})" if r["error"] else ""))
    print()
    print("targets:")
    for name, verdict, ev in target_eval:
        print(f"  [{verdict:^15}] {name.replace('`', '')}: {ev}")
    for n in notes:
        print(f"note: {n}")

    a = argparse.Namespace(**data["args"])
    partial = (bool(a.only) or a.duration < 10 or list(a.targets) != list(TARGETS)
               or a.idle_clients != 4000)
    if not args.no_docs:
        md, svg = Path(args.md), Path(args.svg)
        md.parent.mkdir(parents=True, exist_ok=True)
        write_report(a, data["argv"], info, rows, targets, rss, target_eval, notes, md, svg, partial)
        print(f"\nwrote {md} and {svg}")
    return 0


if __name__ == "__main__":
    code = 1
    try:
        code = main()
    except KeyboardInterrupt:
        log("interrupted; cleaning up")
        code = 130
    except BenchError as e:
        log(f"error: {e}")
        code = 1
    finally:
        CLEANUP.run()
    sys.exit(code)
