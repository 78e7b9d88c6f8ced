#!/usr/bin/env bash
# The shop's webhook calling unreserver's door with the AWS CLI.
# Usage: door-webhook.sh FUNCTION_NAME release|revive ORDER_ID
# Exit 0: done; 3: an answer that it was not done (see "reason"); 1: failed after the retries,
# or an error no retry helps. FUNCTION_NAME is the stack's DoorFunctionName output.
set -euo pipefail
fn=$1 action=$2 order_id=$3
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for attempt in 1 2 3 4 5; do
  # --cli-read-timeout above the door's 30 s timeout: the CLI would otherwise give up after its
  # default 60 s read timeout and retry, invoking the function again.
  function_error=$(aws lambda invoke --function-name "$fn" --cli-binary-format raw-in-base64-out \
    --cli-read-timeout 40 \
    --payload "{\"action\": \"$action\", \"order_id\": $order_id, \"source\": \"webhook\"}" \
    --query FunctionError --output text "$out")
  if [ "$function_error" = "None" ]; then
    cat "$out"; echo
    # Not done is an answer (paid, not_releasable, unknown_order, stock_short, ...).
    python3 -c 'import json,sys; a=json.load(open(sys.argv[1])); sys.exit(0 if a.get("released", a.get("revived")) else 3)' "$out"
    exit $?
  fi
  error_type=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("errorType", "Unhandled"))' "$out")
  case $error_type in
    LockBusy|TableLocked|DatabaseUnreachable|TooManyConnections)
      [ "$attempt" = 5 ] && break
      sleep $((1 << (attempt - 1)))  # 1, 2, 4, 8 s
      ;;
    *) break ;;
  esac
done
cat "$out" >&2; echo >&2
exit 1
