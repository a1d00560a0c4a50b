#!/usr/bin/env python3
"""An HTTP/JSON Baton participant in Python, standard library only (docs/HTTP.md).

Actions: POST /inventory/reserve (409 when the quantity exceeds the stock) and
POST /inventory/release (its compensation). Answers are kept by Idempotency-Key, so a
redelivered call (after a timeout or a coordinator crash) gets the first answer again and
changes nothing. Usage: inventory.py [PORT] (default 9101).
"""
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STOCK = {"A-1": 5, "B-2": 1}
RESERVED = {}  # tx_id -> (sku, qty)
ANSWERS = {}  # Idempotency-Key -> (status, body)
LOCK = threading.Lock()


def handle(path, call):
    payload = call.get("payload") or {}
    tx = call["tx_id"]
    if path == "/inventory/reserve":
        sku, qty = payload.get("sku"), int(payload.get("qty", 1))
        if STOCK.get(sku, 0) < qty:
            return 409, {"message": f"only {STOCK.get(sku, 0)} of {sku} left"}
        STOCK[sku] -= qty
        RESERVED[tx] = (sku, qty)
        return 200, {"reservation": f"r-{tx[-6:]}", "sku": sku, "qty": qty}
    if path == "/inventory/release":
        # Nothing to undo is fine: a compensation must succeed in the end.
        sku, qty = RESERVED.pop(tx, (None, 0))
        if sku:
            STOCK[sku] += qty
        return 200, {"released": qty}
    return 404, {"message": f"no action {path}"}


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        call = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        key = self.headers.get("Idempotency-Key", "")
        with LOCK:
            if key not in ANSWERS:
                ANSWERS[key] = handle(self.path, call)
            status, body = ANSWERS[key]
        print(f"inventory: {call.get('phase')} {self.path} attempt {call.get('attempt')} -> {status}",
              flush=True)
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 9101
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
