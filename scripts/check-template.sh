#!/usr/bin/env bash
# Validates template.yaml offline: cfn-lint, and `sam validate --lint` (both from PyPI, installed
# when missing). The metric names it uses are checked against the code by `tests/it/template.rs`.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# shellcheck source=lib/tools.sh
source scripts/lib/tools.sh
need_pip_tool cfn-lint cfn-lint
need_pip_tool sam aws-sam-cli
echo "== cfn-lint template.yaml"
cfn-lint template.yaml
echo "== sam validate --lint"
# sam needs a region, not credentials, to validate offline.
SAM_CLI_TELEMETRY=0 AWS_DEFAULT_REGION=${AWS_DEFAULT_REGION:-eu-west-1} sam validate --lint --template-file template.yaml
