"""Helpers for the gateway tests: an upstream, sealed reports, WSGI calls."""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from secure_store.transport.envelope import GatewayKey, seal

# A report as the Clean Insights core sends it (contract section 7.2).
CIMP_REPORT: dict[str, Any] = {
    "idsite": 7,
    "lang": "de-AT;q=1,de;q=0.9",
    "visits": [
        {
            "action_name": "Main/Settings",
            "period_start": 1705276800,
            "period_end": 1705881600,
            "times": 3,
        }
    ],
    "events": [
        {
            "category": "music",
            "action": "play",
            "name": "track",
            "value": 12.5,
            "period_start": 1705276800,
            "period_end": 1705881600,
            "times": 2,
        }
    ],
}
CIMP_BODY = json.dumps(
    CIMP_REPORT, separators=(",", ":"), ensure_ascii=False
).encode()

REPORT_ID = bytes(range(1, 17))
OTHER_REPORT_ID = bytes(range(101, 117))


@dataclass
class UpstreamRequest:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Upstream:
    """A CIMP stand-in on 127.0.0.1: records requests, answers as told."""

    status: int = 204
    delay_s: float = 0.0
    # If set, sent instead of an HTTP answer before hanging up (b"":
    # hang up without a word).
    raw_answer: bytes | None = None
    requests: list[UpstreamRequest] = field(default_factory=list)
    url: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def record(
        self, request: UpstreamRequest
    ) -> tuple[int, float, bytes | None]:
        with self._lock:
            self.requests.append(request)
            return self.status, self.delay_s, self.raw_answer

    @property
    def bodies(self) -> list[bytes]:
        with self._lock:
            return [r.body for r in self.requests]


def _handler_for(upstream: Upstream) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            status, delay_s, raw_answer = upstream.record(
                UpstreamRequest(self.path, dict(self.headers), body)
            )
            if delay_s:
                time.sleep(delay_s)
            if raw_answer is not None:
                self.close_connection = True
                self.wfile.write(raw_answer)
                return
            answer = b"" if status == 204 else b'{"answer":"from upstream"}'
            try:
                self.send_response(status)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)
            except (BrokenPipeError, ConnectionResetError):
                # The gateway gave up waiting: the slow-upstream tests.
                self.close_connection = True

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@contextmanager
def running_upstream() -> Iterator[Upstream]:
    """Run a real HTTP server on 127.0.0.1 standing in for the CIMP."""
    recorder = Upstream()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(recorder))
    server.daemon_threads = True
    recorder.url = f"http://127.0.0.1:{server.server_address[1]}/cimp"
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": 0.02},
        daemon=True,
    )
    thread.start()
    try:
        yield recorder
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """Run ``app`` under a real waitress server in this process; its URL."""
    from waitress import wasyncore

    from secure_store.gateway import make_server

    server: Any = make_server(app, "127.0.0.1", 0, threads=8)
    stop = threading.Event()

    def run() -> None:
        # waitress's own run() has no clean way to stop from outside.
        while not stop.is_set():
            wasyncore.loop(timeout=0.02, map=server._map, count=1)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.effective_port}"
    finally:
        stop.set()
        thread.join()
        server.task_dispatcher.shutdown(timeout=5)
        wasyncore.close_all(server._map)


def seal_report(
    key: GatewayKey,
    payload: bytes = CIMP_BODY,
    report_id: bytes = REPORT_ID,
) -> bytes:
    """Seal ``payload`` to ``key`` afresh (a new envelope every call)."""
    return seal(key.key_config(), report_id, payload)


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def call_app(
    app: Any,
    body: bytes,
    *,
    method: str = "POST",
    path: str = "/",
    content_length: str | None = "auto",
) -> Answer:
    """Call the WSGI app in-process, as a WSGI server would."""
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "CONTENT_TYPE": "application/octet-stream",
        "wsgi.input": io.BytesIO(body),
        "wsgi.url_scheme": "http",
        "wsgi.errors": io.StringIO(),
        "wsgi.version": (1, 0),
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    if content_length == "auto":
        environ["CONTENT_LENGTH"] = str(len(body))
    elif content_length is not None:
        environ["CONTENT_LENGTH"] = content_length
    started: list[Any] = []

    def start_response(status: str, headers: list[tuple[str, str]]) -> Any:
        started.extend([status, headers])
        return None

    chunks = b"".join(app(environ, start_response))
    return Answer(int(started[0].split()[0]), dict(started[1]), chunks)
