"""A real HTTPS webhook receiver for tests/notify.rs. Every POST is appended
to OUT (one JSON line): the event id from the body, the Milebatch-Signature
header and whether it verifies (computed here, with Python's hmac, over
"<t>.<raw body>" under SECRET), and the body. What it answers is read from
MODE_FILE at each request: "ok" (200), "fail" (500), "hang" (the request is
recorded, then no answer for 120 s). Prints "ready" once it listens.

usage: webhook_sink.py PORT CERT KEY SECRET OUT MODE_FILE
"""
import hashlib
import hmac
import http.server
import json
import ssl
import sys
import threading
import time

port, cert, key, secret, out, mode_file = sys.argv[1:7]
lock = threading.Lock()


class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        sig = self.headers.get("Milebatch-Signature", "")
        fields = dict(p.split("=", 1) for p in sig.split(",") if "=" in p)
        expect = hmac.new(secret.encode(), fields.get("t", "").encode() + b"." + body,
                          hashlib.sha256).hexdigest()
        ok = hmac.compare_digest(expect, fields.get("v1", ""))
        try:
            event = json.loads(body)
        except ValueError:
            event = None
        with open(mode_file) as f:
            mode = f.read().strip()
        with lock, open(out, "a") as f:
            f.write(json.dumps({
                "event_id": event and event.get("id"),
                "header_event_id": self.headers.get("Milebatch-Event-Id"),
                "content_type": self.headers.get("Content-Type"),
                "signature": sig,
                "signature_ok": ok,
                "t": fields.get("t"),
                "mode": mode,
                "body": event,
            }, ensure_ascii=False) + "\n")
        if mode == "hang":
            time.sleep(120)
            return
        code = 200 if mode == "ok" else 500
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", int(port)), Handler)
ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
ctx.load_cert_chain(cert, key)
server.socket = ctx.wrap_socket(server.socket, server_side=True)
print("ready", flush=True)
server.serve_forever()
