"""A tiny web app to deploy with shipyard: it says which version it is.

GET /up answers 200 when healthy (503 when APP_BROKEN=1, to show a failed deploy); every
other path answers "hello from <service> <version> on <host>". SIGTERM stops it at once,
so `docker stop` never waits.
"""

import http.server
import os
import signal
import socket
import sys

VERSION = os.environ.get("SHIPYARD_VERSION", "unknown")
HOST = os.environ.get("SHIPYARD_HOST", socket.gethostname())
BROKEN = os.environ.get("APP_BROKEN") == "1"
PORT = int(os.environ.get("PORT", "80"))


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        if self.path.split("?")[0] == "/up":
            status, body = (503, b"broken\n") if BROKEN else (200, b"ok\n")
        else:
            status, body = 200, f"hello from {os.environ.get('APP_NAME', 'demo')} {VERSION} on {HOST}\n".encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        sys.stderr.write(f"{self.address_string()} {format % args}\n")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        # A background worker: it just stays up until it is stopped.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        signal.pause()
    server = http.server.ThreadingHTTPServer(("0.0.0.0", PORT), Handler)
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"listening on {PORT}, version {VERSION}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
