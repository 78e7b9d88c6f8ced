#!/usr/bin/env bash
# Measures the function's cold start locally, 20 starts per case, on the release `bootstrap`
# built with the artifact's OpenSSL (`vendored-openssl`: OpenSSL 3.x from source, as the arm64
# artifact always is; Debian's OpenSSL 3.0 decodes certificates about twice as slowly):
#   - init: process start until the function asks a stand-in Lambda Runtime API for its first
#     event (what Lambda bills as Init), and inside it the TLS connector (`tls_ms`) and the AWS
#     part (`aws_ms`: SDK configuration, clients, and with the prefetch the secret fetched from
#     moto), which run side by side;
#   - the first invocation: `{"source":"schedule"}` from the event's delivery to its response —
#     the secret (unless prefetched), a verified TLS connection to a local PostgreSQL with the
#     sample data, the preflight, an idle run (nothing due: a first run released it) and the
#     metrics; then a second, warm invocation for comparison.
# Cases: without the prefetch (PREFETCH_CREDENTIALS=0: init's own work); the same trusting all
# the built-in RDS CAs instead of the region's three; with the prefetch (the default); with it
# and EVENT_BUS_NAME (the EventBridge client built during init too).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# shellcheck source=lib/tools.sh
source scripts/lib/tools.sh
# shellcheck source=lib/pg.sh
source scripts/lib/pg.sh
need_cargo
need_pip_tool moto_server 'moto[server]'
cargo build --release --locked --bin bootstrap --features vendored-openssl >&2
binary="${CARGO_TARGET_DIR:-$root/target}/release/bootstrap"
pg_start unreserver-coldstart fast
trap pg_stop EXIT
[ "$PG_TLS" = 1 ] || tools_die "this PostgreSQL build has no TLS: the first invocation would not be measured over TLS"

db_url=$(pg_create_db shop)
psql "$db_url" -qX -v ON_ERROR_STOP=1 -f infra/sample-data.sql >/dev/null
DB_URL="$db_url" python3 scripts/lib/coldstart.py "$binary"
