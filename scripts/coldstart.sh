#!/usr/bin/env bash
# Measures the function's cold start locally: process start to "ready for invocations" of the
# release `bootstrap` binary, 20 starts each, with DB_SECRET_ID (the production path) and the
# secret in moto's Secrets Manager: without the credentials prefetch (PREFETCH_CREDENTIALS=0:
# init's own work — settings, TLS connector with the built-in RDS CAs, AWS SDK config), and with
# it (the default: the secret is also fetched during init, its TLS handshake included, so the
# first invocation does not pay for it), and with EVENT_BUS_NAME too (the EventBridge client
# built during init). No database is contacted.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# shellcheck source=lib/tools.sh
source scripts/lib/tools.sh
need_pip_tool moto_server 'moto[server]'
cargo build --release --locked --bin bootstrap >&2
binary="${CARGO_TARGET_DIR:-$root/target}/release/bootstrap"
python3 - "$binary" <<'PY'
import json, os, socket, statistics, subprocess, sys, time, urllib.request

s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
moto = subprocess.Popen(["moto_server", "-H", "127.0.0.1", "-p", str(port)],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
endpoint = f"http://127.0.0.1:{port}"
try:
    for _ in range(100):
        try:
            urllib.request.urlopen(endpoint, timeout=0.5); break
        except Exception:
            time.sleep(0.1)
    body = json.dumps({"Name": "prod/shop-db", "SecretString": json.dumps(
        {"username": "app", "password": "pw", "host": "db.example", "port": 5432, "dbname": "shop"})})
    req = urllib.request.Request(endpoint, data=body.encode(), method="POST", headers={
        "Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": "secretsmanager.CreateSecret",
        "Authorization": "AWS4-HMAC-SHA256 Credential=x/20260101/eu-west-1/secretsmanager/aws4_request, SignedHeaders=host, Signature=x"})
    urllib.request.urlopen(req, timeout=5)

    def measure(prefetch, bus=""):
        env = dict(os.environ, AWS_LAMBDA_RUNTIME_API="127.0.0.1:1", AWS_LAMBDA_FUNCTION_NAME="unreserver",
                   AWS_LAMBDA_FUNCTION_MEMORY_SIZE="256", AWS_LAMBDA_FUNCTION_VERSION="1",
                   DB_SECRET_ID="prod/shop-db", AWS_REGION="eu-west-1", AWS_ACCESS_KEY_ID="x",
                   AWS_SECRET_ACCESS_KEY="y", AWS_ENDPOINT_URL=endpoint, LOG_FORMAT="json",
                   RUST_LOG="info", PREFETCH_CREDENTIALS=prefetch, EVENT_BUS_NAME=bus)
        outside, inside = [], []
        for _ in range(20):
            t0 = time.perf_counter()
            p = subprocess.Popen([sys.argv[1]], env=env, stderr=subprocess.PIPE,
                                 stdout=subprocess.DEVNULL, text=True)
            for line in p.stderr:
                if "ready for invocations" in line:
                    outside.append((time.perf_counter() - t0) * 1000)
                    inside.append(json.loads(line)["init_ms"])
                    break
            p.kill(); p.wait()
        return statistics.median(outside), max(outside), statistics.median(inside)

    for prefetch, bus, label in (("0", "", "without the prefetch (init's own work)"),
                                 ("1", "", "with the secret prefetched from moto"),
                                 ("1", "shop-events", "with the prefetch and EVENT_BUS_NAME (the EventBridge client built too)")):
        med, mx, inside = measure(prefetch, bus)
        print(f"{label}: process start to ready median {med:.1f} ms, max {mx:.1f} ms; "
              f"init inside main median {inside:.1f} ms (20 starts)")
finally:
    moto.kill(); moto.wait()
PY
