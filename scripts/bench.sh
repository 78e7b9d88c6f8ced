#!/usr/bin/env bash
# The benchmark: starts a throwaway PostgreSQL (durable commits, as in production), builds the
# release binaries, and measures this project against the lower bound and the per-row baseline
# (examples/bench.rs). Writes BENCHMARKS.md. `scripts/bench.sh --million` adds N = 1,000,000.
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

pg_start unreserver-bench bench
trap pg_stop EXIT
export BENCH_ADMIN_URL=$PG_ADMIN_URL

started=$(date -u +%Y-%m-%dT%H:%MZ)
results=$("$target/examples/bench" --binary "$target/unreserver" "$@")
{
  echo "# Benchmarks"
  echo
  echo "Measured by \`scripts/bench.sh $*\` on $started, all figures from that one run (these"
  echo "machines are shared and noisy: compare the ratios, not the absolute times)."
  echo
  echo "- machine: $(nproc) cores, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo), $(free -g | awk '/Mem:/ {print $2}') GiB"
  echo "- PostgreSQL: $("$PG_BIN/postgres" --version | awk '{print $3}'), fsync and synchronous_commit on, shared_buffers 1GB, on this machine's disk, client over loopback TCP"
  echo "- unreserver: release build, defaults (BATCH_SIZE $(grep -o 'DEFAULT_BATCH_SIZE: u32 = [0-9]*' src/config.rs | grep -o '[0-9]*$'), LOCK_TIMEOUT_MS 100)"
  echo
  echo "$results"
} > BENCHMARKS.md
echo "wrote BENCHMARKS.md" >&2
