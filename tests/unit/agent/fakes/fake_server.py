"""A stand-in for gunicorn: answers every GET with the status and body it is given; when its
port is taken it lingers a few seconds before failing, as gunicorn retries its bind."""

import http.server
import sys
import time

port, status, body = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        data = body.encode()
        self.send_response(status)
        if 300 <= status < 400:
            self.send_header("Location", "https://shop.test/")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


try:
    server = http.server.HTTPServer(("127.0.0.1", port), Handler)
except OSError:
    time.sleep(5)
    sys.exit(1)
server.serve_forever()
