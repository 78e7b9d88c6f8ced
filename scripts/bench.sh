#!/usr/bin/env bash
# The benchmark: starts a throwaway PostgreSQL (durable commits, as in production), builds the
# release binaries, and measures this project against the lower bound and the per-row baseline
# (examples/bench/). Writes BENCHMARKS.md. `scripts/bench.sh --million` adds N = 1,000,000.
# Partial runs print their section instead (--events-only, --index-sets-only, --shoppers-only);
# --batch-size N measures with another batch size in place of the shipped default;
# --profile (each statement's database time in one drain and in the lower bound), --hot-rows
# (the hottest rows with queues of checkouts, orders across one, two and three of them; carts
# of several items in both lock orders
# against a drain), --shoppers (the shoppers' side alone), --follow (follow mode's release
# delays and idle cost) and --adaptive (adaptive batches and workers: the quiet shop by index
# set, the busy shop by cart, the controller over time; with --million also N = 1,000,000)
# update their own sections of BENCHMARKS.md, as does --purge (checkouts while `unreserver purge`
# deletes old rows of their tables, and the purge's rows/s; then --purge-rows N old rows, default
# 5,000,000, on a quiet database three ways; then beside a standby it starts and makes lag);
# --hot-queues prints the queues subsection alone, --carts-only the carts subsection alone.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# shellcheck source=lib/pg.sh
source scripts/lib/pg.sh
# shellcheck source=lib/tools.sh
source scripts/lib/tools.sh
need_cargo
need_gnu_time

echo "== building (release)" >&2
cargo build --release --locked --bin unreserver --example bench
target="${CARGO_TARGET_DIR:-$root/target}/release"

# --profile reads pg_stat_statements, which must be loaded at server start.
case " $* " in *" --profile "*) export PG_PRELOAD=pg_stat_statements ;; esac
pg_start unreserver-bench bench
moto_pid=
cleanup() {
  [ -n "$moto_pid" ] && kill "$moto_pid" 2>/dev/null
  pg_stop
}
trap cleanup EXIT
export BENCH_ADMIN_URL=$PG_ADMIN_URL

# moto's EventBridge, for the expiry-events figures (skipped, and said so, without it).
if need_pip_tool moto_server 'moto[server]'; then
  moto_port=$(pg_free_port)
  moto_server -H 127.0.0.1 -p "$moto_port" >"$PG_DIR/moto.log" 2>&1 &
  moto_pid=$!
  wait_for_port "$moto_port" "moto_server" "$PG_DIR/moto.log"
  export BENCH_AWS_ENDPOINT="http://127.0.0.1:$moto_port"
fi

started=$(date -u +%Y-%m-%dT%H:%MZ)
export BENCH_STARTED=$started
# The sections other runs measure are carried over as they are: the end-to-end one
# (scripts/bench-e2e.sh), the profile's, the cold start's (scripts/coldstart.sh),
# reconcile's (scripts/bench-reconcile.sh) and --hot-rows'.
# The end-to-end sections lead the file (the headline); the others follow this run's.
sections() {
  for part in "$@"; do python3 scripts/lib/md-section.py get BENCHMARKS.md "$part"; echo; done
}
lead=$(sections "End to end: a new process per run" "The fixed cost of a run")
kept=$(sections "Adaptive batches and workers" "Where the database time goes" "Hot rows and carts" "Follow mode" "Purge during checkouts" "Cold start" "Reconcile" "Tenants")
case " $* " in
  *" --profile "*)
    "$target/examples/bench" --binary "$target/unreserver" "$@" \
      | tee /dev/stderr | python3 scripts/lib/md-section.py put BENCHMARKS.md "Where the database time goes"
    echo "wrote the profile section of BENCHMARKS.md" >&2
    exit 0 ;;
  *" --shoppers "*)
    # The shoppers' side alone (one-item carts, the batch sizes), its own run named in it.
    section=$("$target/examples/bench" --binary "$target/unreserver" --shoppers-only \
      | python3 -c 'import sys; t = sys.stdin.read().lstrip("\n").split("\n", 1); print(t[0] + "\n\nMeasured by `scripts/bench.sh --shoppers` on '"$started"' (this section only).\n" + t[1])')
    echo "$section" | tee /dev/stderr | python3 scripts/lib/md-section.py put BENCHMARKS.md "The shoppers' side"
    echo "wrote the shoppers' section of BENCHMARKS.md" >&2
    exit 0 ;;
  *" --follow "*)
    section=$("$target/examples/bench" --binary "$target/unreserver" "$@")
    echo "$section" | tee /dev/stderr | python3 scripts/lib/md-section.py put BENCHMARKS.md "Follow mode"
    echo "wrote the follow-mode section of BENCHMARKS.md" >&2
    exit 0 ;;
  *" --purge "*)
    section=$("$target/examples/bench" --binary "$target/unreserver" "$@")
    echo "$section" >&2
    # Then beside a streaming replica: a hot standby of the bench's server, made to lag.
    standby_port=$(PG_STANDBY_CONF="wal_receiver_status_interval = 1s" pg_start_standby)
    export BENCH_STANDBY_URL=${PG_ADMIN_URL/:$PG_PORT\//:$standby_port/}
    replica=$("$target/examples/bench" --binary "$target/unreserver" --purge-replica) \
      || replica=$'\n### Beside a lagging streaming replica\n\nNot measured: the run failed (its stderr).'
    section="$section"$'\n'"$replica"
    echo "$section" | tee /dev/stderr | python3 scripts/lib/md-section.py put BENCHMARKS.md "Purge during checkouts"
    echo "wrote the purge section of BENCHMARKS.md" >&2
    exit 0 ;;
  *" --adaptive "*" --busy-only "*)
    # The busy shop and the controller over time alone: printed, BENCHMARKS.md left as it is.
    "$target/examples/bench" --binary "$target/unreserver" "$@"
    exit 0 ;;
  *" --adaptive "*)
    section=$("$target/examples/bench" --binary "$target/unreserver" "$@")
    echo "$section" | tee /dev/stderr | python3 scripts/lib/md-section.py put BENCHMARKS.md "Adaptive batches and workers"
    echo "wrote the adaptive section of BENCHMARKS.md" >&2
    exit 0 ;;
  *" --hot-queues "*)
    # The hot rows' queues alone (orders across one, two and three hot rows): printed,
    # BENCHMARKS.md left as it is.
    "$target/examples/bench" --binary "$target/unreserver" "$@"
    exit 0 ;;
  *" --hot-rows "*)
    section=$("$target/examples/bench" --binary "$target/unreserver" "$@")
    echo "$section" | tee /dev/stderr | python3 scripts/lib/md-section.py put BENCHMARKS.md "Hot rows and carts"
    echo "wrote the hot-rows section of BENCHMARKS.md" >&2
    exit 0 ;;
  *-only\ *)
    # One part only: printed, BENCHMARKS.md left as it is.
    "$target/examples/bench" --binary "$target/unreserver" "$@"
    exit 0 ;;
esac
results=$("$target/examples/bench" --binary "$target/unreserver" "$@")
{
  echo "# Benchmarks"
  echo
  echo "The headline is \"End to end\" just below: the release as an operator's schedule runs it, a"
  echo "new process per run (\`scripts/bench-e2e.sh\`, its own date and load). The sections from"
  echo "\"Drain time\" to \"Idle run\" time the release inside the bench's process on an open"
  echo "connection (\"in process\": connection, preflight and process start left out), measured by"
  echo "\`scripts/bench.sh${*:+ $*}\` on $started, all from that one run; the sections after them name"
  echo "their own command and date. These machines are shared and noisy: compare the ratios, not the"
  echo "absolute times."
  echo
  echo "- machine: $(nproc) cores, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo), $(free -g | awk '/Mem:/ {print $2}') GiB"
  echo "- PostgreSQL: $("$PG_BIN/postgres" --version | awk '{print $3}'), fsync and synchronous_commit on, shared_buffers 1GB, on this machine's disk, client over loopback TCP"
  echo "- unreserver: release build, defaults (adaptive batches of BATCH_SIZE_MIN to BATCH_SIZE_MAX rows, WORKERS 2, LOCK_TIMEOUT_MS 100)"
  echo
  if [ -n "${lead//[$'\n ']/}" ]; then echo "$lead"; echo; fi
  echo "$results"
  if [ -n "${kept//[$'\n ']/}" ]; then echo; echo "$kept"; fi
} > BENCHMARKS.md
echo "wrote BENCHMARKS.md" >&2
