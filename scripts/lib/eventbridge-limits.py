"""A stand-in for EventBridge's PutEvents limits in front of moto's server (which checks none):
it refuses a PutEvents request of more than 10 entries, or whose entries total more than
256 KB, as EventBridge does, and forwards every other request to moto unchanged.

    eventbridge-limits.py LISTEN_PORT MOTO_URL

Entry size as AWS documents it ("Calculating Amazon EventBridge PutEvents event entry size"):
14 bytes for the Time when given, plus the UTF-8 bytes of Source, DetailType, Detail and each
Resources entry. Refused requests are counted at GET /limits (JSON), for the tests."""
import http.server
import json
import sys
import urllib.request

MAX_ENTRIES = 10
MAX_REQUEST_BYTES = 256 * 1024
refused = {"requests": 0, "largest": 0}


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
        self.forward(body)

    def forward(self, body):
        request = urllib.request.Request(MOTO + self.path, data=body or None, method=self.command)
        for name, value in self.headers.items():
            if name.lower() not in ("host", "content-length"):
                request.add_header(name, value)
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                self.reply(response.status, response.read(), response.headers.get("Content-Type"))
        except urllib.error.HTTPError as error:
            self.reply(error.code, error.read(), error.headers.get("Content-Type"))

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
