"""A fake Hugging Face Hub on the loopback address: the `resolve` and
`api/models` endpoints (GET and HEAD, byte ranges, SHA-256 ETags, the commit
header) served from a folder of repositories `ROOT/user/repo/...`.
No network is used; both qresidual and huggingface_hub download from it."""
import hashlib
import http.server
import json
import pathlib
import threading

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class _Handler(http.server.BaseHTTPRequestHandler):
    root: pathlib.Path = pathlib.Path(".")

    def log_message(self, *args):  # quiet
        pass

    def _send(self, status, headers, body, head_only):
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Connection", "close")
        self.end_headers()
        if not head_only:
            self.wfile.write(body)

    def _json(self, status, obj, head_only=False):
        body = json.dumps(obj).encode()
        self._send(status, {"Content-Type": "application/json", "Content-Length": str(len(body))}, body, head_only)

    def _handle(self, head_only):
        path = self.path.split("?")[0]
        if path.startswith("/api/models/"):
            repo = path[len("/api/models/"):].split("/revision/")[0]
            d = self.root / repo
            if not d.is_dir():
                return self._json(404, {"error": "Repository not found"}, head_only)
            files = sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file())
            return self._json(200, {"id": repo, "sha": COMMIT, "siblings": [{"rfilename": f} for f in files]}, head_only)
        parts = path.lstrip("/").split("/", 4)
        if len(parts) != 5 or parts[2] != "resolve":
            return self._json(404, {"error": "not found"}, head_only)
        f = self.root / parts[0] / parts[1] / parts[4]
        if not f.is_file():
            return self._json(404, {"error": "Entry not found"}, head_only)
        data = f.read_bytes()
        total = len(data)
        start, end, status = 0, total, 200
        rng = self.headers.get("Range", "")
        if rng.startswith("bytes="):
            a, b = rng[len("bytes="):].split("-", 1)
            start = int(a or 0)
            end = min(int(b) + 1, total) if b else total
            status = 206
        body = data[start:end]
        headers = {
            "Content-Length": str(len(body)),
            "ETag": '"%s"' % hashlib.sha256(data).hexdigest(),
            "X-Repo-Commit": COMMIT,
            "Accept-Ranges": "bytes",
        }
        if status == 206:
            headers["Content-Range"] = f"bytes {start}-{max(end - 1, start)}/{total}"
        self._send(status, headers, body, head_only)

    def do_GET(self):
        self._handle(False)

    def do_HEAD(self):
        self._handle(True)


class FakeHub:
    """Serve `root` until `close()`; `url` is the endpoint (HF_ENDPOINT)."""

    def __init__(self, root):
        handler = type("Handler", (_Handler,), {"root": pathlib.Path(root)})
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = "http://127.0.0.1:%d" % self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
