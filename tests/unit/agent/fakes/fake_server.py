"""A stand-in for gunicorn: listens on a unix socket (replacing a stale socket at the path, as
gunicorn does) and answers every GET with the status and body it is given. Status "nobind":
it starts but never binds (a slow or stuck gunicorn); "exit": it dies at once."""

import http.server
import os
import socketserver
import stat
import sys
import time

path, status, body = sys.argv[1], sys.argv[2], sys.argv[3]

if status == "nobind":
    time.sleep(60)
    sys.exit(1)
if status == "exit":  # dies while starting (an import error)
    time.sleep(0.3)
    sys.exit(3)


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        data = body.encode()
        self.send_response(int(status))
        if 300 <= int(status) < 400:
            self.send_header("Location", "https://shop.test/")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def address_string(self):
        return "unix"

    def log_message(self, *args):
        pass


class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def get_request(self):
        request, _ = super().get_request()
        return request, ("unix", 0)


try:
    if stat.S_ISSOCK(os.stat(path).st_mode):
        os.remove(path)
except FileNotFoundError:
    pass
Server(path, Handler).serve_forever()
