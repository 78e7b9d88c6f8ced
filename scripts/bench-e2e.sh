#!/usr/bin/env bash
# The end-to-end benchmark: the release as a schedule or cron runs it, a new `unreserver run`
# process per run, repeated until a run finds nothing, on copies of one seeded database per
# contender (`CREATE DATABASE ... TEMPLATE`): a run with nothing due (wall and database time),
# 5,000 due against the seed's per-row loop, 100,000 due against the one set-based statement
# on three index sets (examples/bench/e2e.rs). Starts a throwaway PostgreSQL (durable commits),
# builds the release binaries, and writes the "End to end" section of BENCHMARKS.md with the
# machine's load before the run. `--reps N` repeats each pair N times (default 3);
# BENCH_BEFORE_BINARY (and BENCH_BEFORE_LABEL) adds another build's empty runs, interleaved.
# `--million` adds 1,000,000 due against the one statement (one repetition per index set).
# BENCH_E2E_PARTS=empty,5000,100000,1000000 (any of them) measures those parts and prints
# them without writing BENCHMARKS.md.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# shellcheck source=lib/pg.sh
source scripts/lib/pg.sh
# shellcheck source=lib/tools.sh
source scripts/lib/tools.sh
need_cargo

echo "== building (release)" >&2
cargo build --release --locked --bin unreserver --example bench
target="${CARGO_TARGET_DIR:-$root/target}/release"

pg_start unreserver-bench-e2e bench
trap pg_stop EXIT
export BENCH_ADMIN_URL=$PG_ADMIN_URL
BENCH_STARTED=$(date -u +%Y-%m-%dT%H:%MZ)
export BENCH_STARTED
load=$(cut -d' ' -f1-3 /proc/loadavg)
partial=${BENCH_E2E_PARTS:+yes}
case " $* " in
  *" --million "*) export BENCH_E2E_PARTS=${BENCH_E2E_PARTS:-empty,5000,100000,1000000} ;;
esac
section=$("$target/examples/bench" --binary "$target/unreserver" --e2e "$@")
section=$(printf '%s\n' "$section" | python3 -c '
import sys
text = sys.stdin.read()
head, rest = text.split("\n\n", 1)
print(head + "\n\nThe machine: " + sys.argv[1] + "; load average (1, 5, 15 min) just before the run: " + sys.argv[2] + ".\n\n" + rest)
' "$(nproc) cores ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)), PostgreSQL $PG_VERSION" "$load")
if [ -n "$partial" ]; then
  echo "$section"
  echo "a partial run (BENCH_E2E_PARTS): BENCHMARKS.md left as it was" >&2
  exit 0
fi
echo "$section" | tee /dev/stderr | python3 scripts/lib/md-section.py put BENCHMARKS.md "End to end: a new process per run"
echo "wrote the end-to-end section of BENCHMARKS.md" >&2
