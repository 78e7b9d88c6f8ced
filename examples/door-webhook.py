#!/usr/bin/env python3
"""The shop's abandon / payment-failed webhook calling unreserver's door (boto3).

Usage: door-webhook.py FUNCTION_NAME release|revive ORDER_ID

FUNCTION_NAME is the stack's DoorFunctionName output; the caller's principal needs only the
stack's DoorInvokePolicyArn. Exit 0: done; 3: an answer that it was not done (its "reason":
paid, not_releasable, nothing_active, unknown_order, stock_short, ...), which no retry changes;
1: still failing after the retries, or an error no retry helps (InvalidPayload, ...).

Lambda answers HTTP 200 even when the function failed: "For synchronous invocation, details
about the function response, including errors, are included in the response body and headers"
(Lambda API Reference, Invoke). FunctionError is set then, and the payload holds errorType.
"""
import json
import random
import sys
import time

import boto3
from botocore.config import Config

# The errors a retry may cure: a row a shopper holds right now, a migration's table lock, the
# database briefly away, the role's CONNECTION LIMIT reached. Everything else is final.
RETRYABLE = {"LockBusy", "TableLocked", "DatabaseUnreachable", "TooManyConnections"}
ATTEMPTS = 5


def call(client, function, action, order_id):
    """One synchronous invocation: (errorType or None, the answer)."""
    response = client.invoke(
        FunctionName=function,
        InvocationType="RequestResponse",
        Payload=json.dumps({"action": action, "order_id": order_id, "source": "webhook"}),
    )
    body = json.loads(response["Payload"].read() or b"null")
    if response.get("FunctionError"):
        # Handled: the function's own typed error; Unhandled: a timeout, a crash.
        return body.get("errorType", "Unhandled") if isinstance(body, dict) else "Unhandled", body
    return None, body


def main():
    function, action, order_id = sys.argv[1], sys.argv[2], int(sys.argv[3])
    # The door answers within its 30 s timeout; botocore's own retries cover throttling
    # (TooManyRequestsException, the door's reserved concurrency reached) and network errors.
    client = boto3.client(
        "lambda",
        config=Config(read_timeout=40, retries={"mode": "standard", "max_attempts": 5}),
    )
    for attempt in range(1, ATTEMPTS + 1):
        error, body = call(client, function, action, order_id)
        if error is None:
            done = body.get("released", body.get("revived"))
            print(json.dumps(body))
            return 0 if done else 3  # not done is an answer: its "reason" says why
        if error not in RETRYABLE or attempt == ATTEMPTS:
            print(json.dumps(body), file=sys.stderr)
            return 1
        # Jittered exponential back-off: 1, 2, 4, 8 s on average.
        time.sleep(random.uniform(0.5, 1.5) * 2 ** (attempt - 1))
    return 1


if __name__ == "__main__":
    sys.exit(main())
