#!/usr/bin/env bash
# Runs every test: starts a throwaway PostgreSQL (TLS on, a CA made for it) and the other
# services the tests need, then `cargo test`. Installs PostgreSQL when missing and says what
# else is missing. Extra arguments go to `cargo test`.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# shellcheck source=lib/pg.sh
source scripts/lib/pg.sh
command -v cargo >/dev/null || { echo "test: cargo missing: install Rust (rustup)" >&2; exit 1; }

pg_start unreserver-test fast
trap pg_stop EXIT
pg_create_db unreserver_template >/dev/null
export UNRESERVER_TEST_ADMIN_URL=$PG_ADMIN_URL
export UNRESERVER_TEST_CA_CERT=$PG_CA_CERT
export UNRESERVER_TEST_WRONG_CA_CERT=$PG_WRONG_CA_CERT
export RUST_TEST_THREADS=${RUST_TEST_THREADS:-4}

cargo test --locked --all-targets "$@"
