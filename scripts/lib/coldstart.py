"""The measuring half of scripts/coldstart.sh (read it for what is measured): moto's Secrets Manager holding the local database's
credentials, a stand-in Lambda Runtime API serving two scheduled events per start, and the
release `bootstrap` (argv[1]) started 20 times per case. Prints medians and maxima.

With `--smoke` (scripts/test.sh, on the debug `bootstrap` the tests built): one start of the
default case, which must log `ready for invocations` with its figures, ask for its first event
and answer two scheduled events with run reports; prints the figures on one line."""
import json
import os
import queue
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BINARY = sys.argv[1]
SMOKE = "--smoke" in sys.argv[2:]
DB = urllib.parse.urlparse(os.environ["DB_URL"])
STARTS = 20


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class RuntimeApi(BaseHTTPRequestHandler):
    """GET .../invocation/next hands out the queued events (then blocks); POST .../response
    records when each answer came. Times go to the server's `marks` queue."""
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def setup(self):
        super().setup()
        # Headers and body go out as two writes: without this, Nagle's algorithm holds the body
        # until the function's delayed ACK (40 ms) on a reused connection.
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_GET(self):
        self.server.marks.put(("next", time.perf_counter()))
        event = self.server.events.get()
        if event is None:  # the function was killed while it waited: drop the connection
            self.close_connection = True
            return
        body = json.dumps(event["payload"]).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Lambda-Runtime-Aws-Request-Id", event["id"])
        self.send_header("Lambda-Runtime-Deadline-Ms", str(int(time.time() * 1000) + 120_000))
        self.send_header("Lambda-Runtime-Invoked-Function-Arn",
                         "arn:aws:lambda:eu-west-1:123456789012:function:unreserver")
        self.send_header("Lambda-Runtime-Trace-Id", "Root=1-00000000-000000000000000000000000")
        self.end_headers()
        self.wfile.write(body)
        self.server.marks.put(("delivered", time.perf_counter()))

    def do_POST(self):
        length = int(self.headers.get("Content-Length", 0))
        body = self.rfile.read(length)
        kind = "response" if self.path.endswith("/response") else "error"
        self.server.marks.put((kind, time.perf_counter(), body.decode(errors="replace")))
        self.send_response(202)
        self.send_header("Content-Length", "0")
        self.end_headers()


class Server(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass  # the function is killed while it waits for its next event


def start_runtime_api():
    server = Server(("127.0.0.1", free_port()), RuntimeApi)
    server.marks, server.events = queue.Queue(), queue.Queue()
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def start_moto():
    port = free_port()
    moto = subprocess.Popen(["moto_server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(endpoint, timeout=0.5)
            break
        except Exception:
            time.sleep(0.1)
    secret = {"username": DB.username, "password": urllib.parse.unquote(DB.password),
              "host": "localhost", "port": DB.port, "dbname": DB.path.lstrip("/")}
    body = json.dumps({"Name": "prod/shop-db", "SecretString": json.dumps(secret)})
    req = urllib.request.Request(endpoint, data=body.encode(), method="POST", headers={
        "Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": "secretsmanager.CreateSecret",
        "Authorization": "AWS4-HMAC-SHA256 Credential=x/20260101/eu-west-1/secretsmanager/aws4_request, SignedHeaders=host, Signature=x"})
    urllib.request.urlopen(req, timeout=5)
    return moto, endpoint


def expect(api, kind, timeout=30):
    mark = api.marks.get(timeout=timeout)
    if mark[0] != kind:
        raise SystemExit(f"expected {kind} from the function, got {mark}")
    return mark


def one_start(api, env):
    """Init, first and second invocation of one process, in ms."""
    for n in (1, 2):
        api.events.put({"id": f"req-{n}", "payload": {"source": "schedule"}})
    t0 = time.perf_counter()
    p = subprocess.Popen([BINARY], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         text=True)
    try:
        ready = expect(api, "next")[1]
        invocations = []
        for _ in (1, 2):
            delivered = expect(api, "delivered")[1]
            answer = api.marks.get(timeout=30)
            if answer[0] != "response" or '"stopped_reason"' not in answer[2]:
                raise SystemExit(f"the invocation failed: {answer}")
            invocations.append((answer[1] - delivered) * 1000)
            expect(api, "next")
        p.kill()
        stderr = p.communicate()[1]
    finally:
        p.kill()
        p.wait()
        api.events.put(None)  # releases the killed function's pending GET
    line = next(json.loads(l) for l in stderr.splitlines() if "ready for invocations" in l)
    fields = line.get("fields", line)
    return (ready - t0) * 1000, fields["tls_ms"], fields["aws_ms"], *invocations


def case_env(api, endpoint, extra):
    return dict(os.environ, AWS_LAMBDA_RUNTIME_API=f"127.0.0.1:{api.server_port}",
                AWS_LAMBDA_FUNCTION_NAME="unreserver", AWS_LAMBDA_FUNCTION_MEMORY_SIZE="256",
                AWS_LAMBDA_FUNCTION_VERSION="1", AWS_LAMBDA_LOG_GROUP_NAME="/aws/lambda/unreserver",
                DB_SECRET_ID="prod/shop-db", DB_CA_BUNDLE=os.environ["PG_CA_CERT"],
                AWS_REGION="eu-west-1", AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="y",
                AWS_ENDPOINT_URL=endpoint, LOG_FORMAT="json", RUST_LOG="info", **extra)


def measure(api, envs):
    """Each case started STARTS times, the cases interleaved (the machine's load drifts)."""
    one_start(api, envs[0])  # the first run releases the sample data's due rows: later runs are idle
    rows = [[] for _ in envs]
    for _ in range(STARTS):
        for i, env in enumerate(envs):
            rows[i].append(one_start(api, env))
    return [[(statistics.median(col), max(col)) for col in zip(*r)] for r in rows]


def smoke(api, endpoint):
    """One start of the default case; fails (SystemExit, KeyError) if any part is missing."""
    init, tls, aws, first, second = one_start(api, case_env(api, endpoint, {}))
    print(f"cold-start smoke (debug bootstrap): ready after {init:.0f} ms (tls_ms {tls:.1f}, "
          f"aws_ms {aws:.1f}); invocations answered in {first:.0f} ms and {second:.0f} ms")


def main():
    api = start_runtime_api()
    moto, endpoint = start_moto()
    try:
        if SMOKE:
            smoke(api, endpoint)
            return
        cases = (({"PREFETCH_CREDENTIALS": "0"}, "without the prefetch (init's own work)"),
                 ({"PREFETCH_CREDENTIALS": "0", "DB_RDS_CA_REGIONS": "all"},
                  "without the prefetch, all 87 RDS CAs (DB_RDS_CA_REGIONS=all)"),
                 ({"PREFETCH_CREDENTIALS": "0", "SSL_CERT_FILE": "/nonexistent"},
                  "diagnosis only: without the prefetch and with no system CA store"),
                 ({}, "with the prefetch (the default)"),
                 ({"EVENT_BUS_NAME": "shop-events"}, "with the prefetch and EVENT_BUS_NAME"))
        print(f"{STARTS} starts per case, the cases interleaved; median (max) in ms\n")
        print("| case | init | tls_ms | aws_ms | 1st invocation | 2nd invocation |")
        print("|---|---|---|---|---|---|")
        results = measure(api, [case_env(api, endpoint, extra) for extra, _ in cases])
        for (_, label), cols in zip(cases, results):
            print(f"| {label} | " + " | ".join(f"{m:.1f} ({x:.1f})" for m, x in cols) + " |")
    finally:
        moto.kill()
        moto.wait()


main()
