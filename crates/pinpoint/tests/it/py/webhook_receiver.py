"""A webhook receiver for Pinpoint's alert tests, independent of Pinpoint's code.

Usage: webhook_receiver.py SECRET_FILE OUT_FILE

Listens on 127.0.0.1 (a free port, printed as "port N" once ready) and, for every POST,
appends one JSON line to OUT_FILE: the path, the delivery id, whether the signature
verified (HMAC-SHA256 of "TIMESTAMP.BODY" under the secret, timestamp within five minutes),
the status it answered, and the body. The first attempt of each delivery to /hook is
answered 503 (to exercise retries); everything else 204.
"""

import hashlib
import hmac
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SECRET = open(sys.argv[1], "rb").read().strip()
OUT = sys.argv[2]
SEEN = set()


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        delivery = self.headers.get("Pinpoint-Delivery", "")
        timestamp = self.headers.get("Pinpoint-Timestamp", "")
        signature = self.headers.get("Pinpoint-Signature", "")
        expected = "v1=" + hmac.new(SECRET, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
        fresh = timestamp.isdigit() and abs(time.time() - int(timestamp)) < 300
        verified = fresh and hmac.compare_digest(expected, signature)
        status = 204
        if self.path == "/hook" and delivery not in SEEN:
            SEEN.add(delivery)
            status = 503
        with open(OUT, "a") as out:
            out.write(json.dumps({
                "path": self.path,
                "delivery": delivery,
                "verified": verified,
                "signed": bool(signature),
                "status": status,
                "body": json.loads(body),
            }) + "\n")
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
print(f"port {server.server_address[1]}", flush=True)
server.serve_forever()
