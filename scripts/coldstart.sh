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
# the built-in RDS CAs instead of the region's three; the same with SSL_CERT_FILE pointing
# nowhere, to show what OpenSSL's loading of the system CA store costs (a diagnosis, not a
# setting: the AWS SDK's HTTPS needs that store too); with the prefetch (the default); with it
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
started=$(date -u +%Y-%m-%dT%H:%MZ)
table=$(DB_URL="$db_url" python3 scripts/lib/coldstart.py "$binary")
echo "$table"
# Its own section of BENCHMARKS.md (scripts/bench.sh carries it over).
{
  echo "## Cold start (\`scripts/coldstart.sh\`, $started)"
  echo
  echo "The release \`bootstrap\` built with the artifact's OpenSSL (\`--features vendored-openssl\`),"
  echo "x86_64 on this machine (no arm64 runtime here), against moto's Secrets Manager and a local"
  echo "PostgreSQL over verified TLS; a stand-in Lambda Runtime API times init (process start to the"
  echo "first request for an event) and each invocation (\`{\"source\":\"schedule\"}\`, an idle run: event"
  echo "delivered to response received). \`tls_ms\` and \`aws_ms\` are the two halves of init, which run"
  echo "side by side (\`ready for invocations\` log line)."
  echo
  echo "$table"
} | python3 scripts/lib/md-section.py put BENCHMARKS.md "Cold start"
echo "wrote the cold start section of BENCHMARKS.md" >&2
