#!/usr/bin/env bash
# Builds the deployable Lambda artifact (provided.al2023, arm64) with cargo-lambda and zig, and
# prints its size. Installs the aarch64 target and cargo-lambda (PyPI) when missing.
# `scripts/build-lambda.sh sam` builds through `sam build` instead (aws-sam-cli from PyPI), the
# way `sam deploy` expects, without Docker.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# shellcheck source=lib/tools.sh
source scripts/lib/tools.sh
need_cargo
need_cargo_lambda
if ! rustup target list --installed | grep -qx aarch64-unknown-linux-gnu; then
  rustup target add aarch64-unknown-linux-gnu
fi
if [ "${1:-}" = sam ]; then
  need_pip_tool sam aws-sam-cli
  SAM_CLI_TELEMETRY=0 sam build --beta-features
  artifact=.aws-sam/build/Function/bootstrap
else
  cargo lambda build --release --arm64 --bin bootstrap
  artifact="${CARGO_TARGET_DIR:-$root/target}/lambda/bootstrap/bootstrap"
fi
file "$artifact" 2>/dev/null || true
echo "artifact: $artifact, $(du -h "$artifact" | cut -f1) ($(stat -c %s "$artifact") bytes)"
