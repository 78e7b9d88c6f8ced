#!/usr/bin/env bash
# Measures the function's cold start locally: process start to "ready for invocations" of the
# release `bootstrap` binary (state built: settings, TLS connector, AWS SDK config), 20 starts,
# with DB_SECRET_ID (the production path). No database or AWS call is made before that line.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cargo build --release --locked --bin bootstrap >&2
binary="${CARGO_TARGET_DIR:-$root/target}/release/bootstrap"
python3 - "$binary" <<'PY'
import json, os, statistics, subprocess, sys, time
env = dict(os.environ, AWS_LAMBDA_RUNTIME_API="127.0.0.1:1", AWS_LAMBDA_FUNCTION_NAME="unreserver",
           AWS_LAMBDA_FUNCTION_MEMORY_SIZE="256", AWS_LAMBDA_FUNCTION_VERSION="1",
           DB_SECRET_ID="prod/shop-db", AWS_REGION="eu-west-1", AWS_ACCESS_KEY_ID="x",
           AWS_SECRET_ACCESS_KEY="y", LOG_FORMAT="json", RUST_LOG="info")
outside, inside = [], []
for _ in range(20):
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.argv[1]], env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    for line in p.stderr:
        if "ready for invocations" in line:
            outside.append((time.perf_counter() - t0) * 1000)
            inside.append(json.loads(line)["init_ms"])
            break
    p.kill()
    p.wait()
print(f"process start to ready: median {statistics.median(outside):.1f} ms, max {max(outside):.1f} ms; "
      f"init inside main: median {statistics.median(inside):.1f} ms (20 starts)")
PY
