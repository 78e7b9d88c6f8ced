"""A stand-in for EventBridge's PutEvents limits in front of moto's server (which checks none):
it refuses a PutEvents request of more than 10 entries, or whose entries total more than
256 KB, as EventBridge does, and forwards every other request to moto unchanged.

    eventbridge-limits.py LISTEN_PORT MOTO_URL

Entry size as AWS documents it ("Calculating Amazon EventBridge PutEvents event entry size"):
14 bytes for the Time when given, plus the UTF-8 bytes of Source, DetailType, Detail and each
Resources entry. Refused requests are counted at GET /limits (JSON), for the tests.

It also throttles, once, each entry whose Detail holds the text THROTTLE-ONCE: that entry comes
back with `ErrorCode` `ThrottlingException` in a 200 answer (`FailedEntryCount` counting it),
as EventBridge answers when a request passes the account's PutEvents quota; the other entries
of the request are forwarded to moto. Entries throttled are counted at GET /limits."""
import http.server
import json
import sys
import urllib.request

MAX_ENTRIES = 10
MAX_REQUEST_BYTES = 256 * 1024
refused = {"requests": 0, "largest": 0, "throttled": 0}
throttled_once = set()


def entry_size(entry):
    size = 14 if entry.get("Time") else 0
    for field in ("Source", "DetailType", "Detail"):
        size += len(entry.get(field, "").encode("utf-8"))
    size += sum(len(r.encode("utf-8")) for r in entry.get("Resources", []))
    return size


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/limits":
            self.reply(200, json.dumps(refused).encode(), "application/json")
        else:
            self.forward(b"")

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.headers.get("X-Amz-Target", "").endswith(".PutEvents"):
            entries = json.loads(body or b"{}").get("Entries", [])
            total = sum(entry_size(e) for e in entries)
            if len(entries) > MAX_ENTRIES or total > MAX_REQUEST_BYTES:
                refused["requests"] += 1
                refused["largest"] = max(refused["largest"], total)
                message = ("Total size of the entries in the request is over the limit."
                           if total > MAX_REQUEST_BYTES else
                           "1 validation error detected: Value at 'entries' failed to satisfy "
                           "constraint: Member must have length less than or equal to 10")
                error = {"__type": "ValidationException", "message": message}
                self.reply(400, json.dumps(error).encode(), "application/x-amz-json-1.1")
                return
            throttle = [i for i, e in enumerate(entries)
                        if "THROTTLE-ONCE" in e.get("Detail", "")
                        and e.get("Detail") not in throttled_once]
            if throttle:
                self.throttle(body, entries, set(throttle))
                return
        self.forward(body)

    def throttle(self, body, entries, throttle):
        """Answers for the entries at `throttle` ThrottlingException, forwarding the rest."""
        for i in throttle:
            throttled_once.add(entries[i]["Detail"])
            refused["throttled"] += 1
        rest = [e for i, e in enumerate(entries) if i not in throttle]
        accepted = []
        if rest:
            request = json.loads(body)
            request["Entries"] = rest
            status, answer, _ = self.send_on(json.dumps(request).encode())
            if status != 200:
                self.reply(status, answer, "application/x-amz-json-1.1")
                return
            accepted = json.loads(answer).get("Entries", [])
        results, failed = [], 0
        for i in range(len(entries)):
            if i in throttle:
                failed += 1
                results.append({"ErrorCode": "ThrottlingException",
                                "ErrorMessage": "Rate exceeded"})
            else:
                results.append(accepted.pop(0) if accepted else {})
                failed += 1 if "ErrorCode" in results[-1] else 0
        answer = {"FailedEntryCount": failed, "Entries": results}
        self.reply(200, json.dumps(answer).encode(), "application/x-amz-json-1.1")

    def forward(self, body):
        self.reply(*self.send_on(body))

    def send_on(self, body):
        """This request with `body`, sent to moto: (status, body, content type)."""
        request = urllib.request.Request(MOTO + self.path, data=body or None, method=self.command)
        for name, value in self.headers.items():
            if name.lower() not in ("host", "content-length"):
                request.add_header(name, value)
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return response.status, response.read(), response.headers.get("Content-Type")
        except urllib.error.HTTPError as error:
            return error.code, error.read(), error.headers.get("Content-Type")

    def reply(self, status, body, content_type):
        self.send_response(status)
        if content_type:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    MOTO = sys.argv[2].rstrip("/")
    http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
