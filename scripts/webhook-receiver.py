#!/usr/bin/env python3
"""A webhook receiver for Data Export, on Python's standard library alone.

It checks each event's signature as the Standard Webhooks spec says, prints the
event, and answers 204 (or 401 when the signature is wrong or too old):

    python3 scripts/webhook-receiver.py --port 9000 --secret whsec_...

Then add http://127.0.0.1:9000/ on the org's Notifications page (the server must
run with WEBHOOK_ALLOW_PRIVATE=1 to deliver to this machine). The test suite runs
this same script as its receiver; --log, --secrets-file, --fail-first, --status and
--hang are there for those tests.
"""

import argparse
import base64
import hashlib
import hmac
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOLERANCE_SECS = 5 * 60


def verify(secret, msg_id, timestamp, body, signature_header):
    """True when one of the header's `v1,<base64>` signatures is the HMAC-SHA256 of
    `{id}.{timestamp}.{body}` keyed with the secret's decoded bytes."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = msg_id.encode() + b"." + timestamp.encode() + b"." + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    for candidate in signature_header.split(" "):
        version, _, sig = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(sig, expected):
            return True
    return False


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=9000, help="0 picks a free port (printed first)")
    parser.add_argument("--secret", action="append", default=[], help="a whsec_ secret; repeat for several")
    parser.add_argument("--secrets-file", help="more secrets, one per line, read again for each request")
    parser.add_argument("--log", help="append each request as a JSON line to this file")
    parser.add_argument("--fail-first", type=int, default=0, help="answer 500 to the first N requests")
    parser.add_argument("--status", type=int, help="always answer this status (302 points at /elsewhere)")
    parser.add_argument("--hang", action="store_true", help="never answer")
    args = parser.parse_args()
    lock = threading.Lock()
    seen = {"n": 0}

    def secrets():
        found = list(args.secret)
        if args.secrets_file:
            try:
                with open(args.secrets_file) as f:
                    found += [line.strip() for line in f if line.strip()]
            except FileNotFoundError:
                pass
        return found

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            msg_id = self.headers.get("webhook-id", "")
            timestamp = self.headers.get("webhook-timestamp", "")
            signature = self.headers.get("webhook-signature", "")
            fresh = timestamp.isdigit() and abs(time.time() - int(timestamp)) <= TOLERANCE_SECS
            keys = secrets()
            verified_by = next((i for i, s in enumerate(keys) if verify(s, msg_id, timestamp, body, signature)), None)
            with lock:
                seen["n"] += 1
                n = seen["n"]
            if args.hang:
                time.sleep(3600)
                return
            if args.status:
                status = args.status
            elif n <= args.fail_first:
                status = 500
            else:
                status = 204 if fresh and verified_by is not None else 401
            try:
                event = json.loads(body)
            except ValueError:
                event = None
            record = {
                "n": n,
                "path": self.path,
                "id": msg_id,
                "timestamp": timestamp,
                "fresh": fresh,
                "verified_by": verified_by,
                "valid": fresh and verified_by is not None,
                "status": status,
                "content_type": self.headers.get("content-type"),
                "event": event,
            }
            line = json.dumps(record)
            if args.log:
                with lock, open(args.log, "a") as f:
                    f.write(line + "\n")
            else:
                print(line, flush=True)
            self.send_response(status)
            if status == 302:
                self.send_header("location", "/elsewhere")
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *_):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    print(f"listening on {server.server_address[1]}", flush=True)
    print(f"add http://127.0.0.1:{server.server_address[1]}/ as an endpoint", file=sys.stderr, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
