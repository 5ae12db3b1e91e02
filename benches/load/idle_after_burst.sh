#!/usr/bin/env bash
# Memory a pooler keeps for clients that ran an N+1-style burst and then went idle.
#
#   benches/load/idle_after_burst.sh PORT [CLIENTS] [LOOKUPS] [SLEEP_S]
#
# PORT is a running pooler (pgferry or PgBouncer) in front of a database `postgres`
# initialised with `pgbench -i` (user postgres, no password). Each of CLIENTS (1000)
# connections runs LOOKUPS (300) `pgbench_accounts` lookups with random ids, then sleeps
# SLEEP_S (8) seconds connected and idle. The pooler's VmRSS is printed every second; the
# plateau while every client sleeps, minus the VmRSS once all have left, divided by CLIENTS,
# is what an idle client that ran a burst costs (docs/architecture.md quotes it).
set -euo pipefail
port=$1; clients=${2:-1000}; lookups=${3:-300}; sleep_s=${4:-8}
ulimit -n $((clients + 1000))
pid=$(ss -ltnp "sport = :$port" | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2)
[ -n "$pid" ] || { echo "nothing listens on port $port" >&2; exit 1; }
script=$(mktemp)
trap 'rm -f "$script"' EXIT
for _ in $(seq "$lookups"); do
    printf '\\set a random(1, 1000000)\nSELECT abalance FROM pgbench_accounts WHERE aid = :a;\n'
done > "$script"
printf '\\sleep %s s\n' "$sleep_s" >> "$script"
rss() { awk '/VmRSS/{print $2}' "/proc/$pid/status"; }
echo "pid $pid, VmRSS before: $(rss) KiB"
pgbench -h 127.0.0.1 -p "$port" -U postgres -n -f "$script" -c "$clients" -j 2 -t 1 postgres \
    > /dev/null 2>&1 &
bench=$!
echo -n "VmRSS each second (KiB):"
while kill -0 "$bench" 2>/dev/null; do sleep 1; echo -n " $(rss)"; done
echo
wait "$bench" || { echo "pgbench failed" >&2; exit 1; }
sleep 2
echo "VmRSS after all left: $(rss) KiB"
