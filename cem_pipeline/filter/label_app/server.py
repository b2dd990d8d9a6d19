"""`cem label`: a local page that shows candidate patches in a grid and records a person's decisions.

stdlib http.server on 127.0.0.1 only (never another interface). Every decision is written to the
labels table at once, so closing the page loses nothing and the next start resumes where it stopped.
Patch ids are int64 and travel as strings, because JavaScript numbers lose precision beyond 2**53.
"""
from __future__ import annotations

import io
import json
import secrets
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import numpy as np
import pandas as pd

from cem_pipeline.core.patches import read_patches
from cem_pipeline.core.workdir import Workdir
from cem_pipeline.filter.labels import LABELS, balance, read_labels, record_labels
from cem_pipeline.filter.selection import filter_candidates

STATIC = Path(__file__).resolve().parent
STATIC_FILES = {"/": ("index.html", "text/html"), "/app.js": ("app.js", "text/javascript"),
                "/style.css": ("style.css", "text/css")}
HOST = "127.0.0.1"


class LabelSession:
    """Candidates in a seeded random order, the labels so far, and the pixels of any candidate as PNG."""

    def __init__(self, workdir: Workdir, target: int, seed: int):
        self.workdir = workdir
        candidates, self.note = filter_candidates(workdir.root)
        order = np.random.default_rng(seed).permutation(len(candidates))
        self.candidates = candidates.iloc[order].set_index("patch_id", drop=False)
        self.target = min(target, len(self.candidates))
        self._lock = threading.Lock()
        self._labels = read_labels(workdir.labels)

    def state(self) -> dict:
        with self._lock:
            counts = balance(self._labels)
        labelled = counts["informative"] + counts["uninformative"]
        return {"labelled": labelled, "target": self.target, "counts": counts, "candidates": len(self.candidates),
                "note": self.note}

    def next_batch(self, n: int) -> list[dict]:
        with self._lock:
            done = set(self._labels["patch_id"].tolist())
        rows = self.candidates[~self.candidates["patch_id"].isin(done)].head(n)
        return [{"patch_id": str(r.patch_id), "dataset": r.dataset, "where": f"{r.volume} {r.axis}{r.slice} y{r.y} x{r.x}"}
                for r in rows.itertuples(index=False)]

    def png(self, patch_id: int) -> bytes:
        from PIL import Image

        if patch_id not in self.candidates.index:
            raise KeyError(patch_id)
        (pixels,) = read_patches(self.workdir.store, self.candidates.loc[[patch_id]])
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        return buffer.getvalue()

    def record(self, patch_id: int, label: str) -> dict:
        if label not in LABELS:
            raise ValueError(f"label must be one of {', '.join(LABELS)}")
        if patch_id not in self.candidates.index:
            raise KeyError(patch_id)
        with self._lock:
            self._labels = record_labels(self.workdir.labels, pd.DataFrame({"patch_id": [patch_id], "label": [label]}))
        return self.state()


class LabelServer(ThreadingHTTPServer):
    """The page's server: one session and a per-server token that every label POST must carry.

    Binding to loopback does not stop a web page from elsewhere: a browser on this machine sends its
    cross-site POSTs (a form's text/plain, or a DNS-rebinding page whose Host is another name) to 127.0.0.1
    too. So every request must name this server as Host, and a POST must be JSON, come from this origin
    (when the browser says), and carry the token that only the URL printed by `cem label` knows.
    """

    daemon_threads = True

    def __init__(self, session: LabelSession, port: int):
        super().__init__((HOST, port), _Handler)
        self.session = session
        self.token = secrets.token_urlsafe(16)

    @property
    def port(self) -> int:
        return self.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/?token={self.token}"

    def allowed_hosts(self) -> set[str]:
        return {f"{HOST}:{self.port}", f"localhost:{self.port}"}


class _Handler(BaseHTTPRequestHandler):
    server: LabelServer

    @property
    def session(self) -> LabelSession:
        return self.server.session

    def log_message(self, format: str, *args) -> None:  # keep the terminal for the progress line
        return

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, payload, status: int = HTTPStatus.OK) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json")

    def _refused(self) -> bool:
        """Answer 403/415 and return True for a request that is not from this page."""
        if self.headers.get("Host") not in self.server.allowed_hosts():
            self._json({"error": "Host header does not name this server"}, HTTPStatus.FORBIDDEN)
            return True
        if self.command != "POST":
            return False
        origin = self.headers.get("Origin")
        if origin is not None and origin.removeprefix("http://") not in self.server.allowed_hosts():
            self._json({"error": f"cross-origin request from {origin} refused"}, HTTPStatus.FORBIDDEN)
            return True
        if (self.headers.get("Content-Type") or "").split(";")[0].strip() != "application/json":
            self._json({"error": "labels are accepted as application/json only"}, HTTPStatus.UNSUPPORTED_MEDIA_TYPE)
            return True
        if not secrets.compare_digest(self.headers.get("X-CEM-Token") or "", self.server.token):
            self._json({"error": "missing or wrong session token (open the URL `cem label` printed)"}, HTTPStatus.FORBIDDEN)
            return True
        return False

    def do_GET(self) -> None:
        if self._refused():
            return
        url = urlparse(self.path)
        if url.path in STATIC_FILES:
            name, content_type = STATIC_FILES[url.path]
            self._send(HTTPStatus.OK, (STATIC / name).read_bytes(), content_type + "; charset=utf-8")
        elif url.path == "/api/state":
            self._json(self.session.state())
        elif url.path == "/api/batch":
            n = int(parse_qs(url.query).get("n", ["24"])[0])
            self._json({"patches": self.session.next_batch(max(1, min(n, 200))), **self.session.state()})
        elif url.path.startswith("/patch/") and url.path.endswith(".png"):
            try:
                body = self.session.png(int(url.path[len("/patch/") : -len(".png")]))
            except (KeyError, ValueError):
                self._json({"error": "unknown patch"}, HTTPStatus.NOT_FOUND)
                return
            self._send(HTTPStatus.OK, body, "image/png")
        else:
            self._json({"error": "not found"}, HTTPStatus.NOT_FOUND)

    def do_POST(self) -> None:
        if self._refused():
            return
        if urlparse(self.path).path != "/api/label":
            self._json({"error": "not found"}, HTTPStatus.NOT_FOUND)
            return
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            self._json(self.session.record(int(body["patch_id"]), str(body["label"])))
        except KeyError:
            self._json({"error": "unknown patch or missing field"}, HTTPStatus.BAD_REQUEST)
        except ValueError as exc:
            self._json({"error": str(exc)}, HTTPStatus.BAD_REQUEST)


def make_server(session: LabelSession, port: int) -> LabelServer:
    """A server bound to 127.0.0.1:port (0 = any free port); the caller runs serve_forever and closes it."""
    return LabelServer(session, port)
