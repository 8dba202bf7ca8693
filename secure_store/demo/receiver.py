"""A CIMP-compatible receiver on 127.0.0.1 that checks and records reports."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

LOOPBACK = "127.0.0.1"
MAX_BODY_BYTES = 1 << 20


def is_cimp_body(body: Any) -> bool:
    """Tell whether ``body`` has the shape of a CIMP report (§7.2)."""
    if not isinstance(body, dict):
        return False
    idsite = body.get("idsite")
    if not isinstance(idsite, int) or isinstance(idsite, bool) or idsite < 1:
        return False
    visits, events = body.get("visits"), body.get("events")
    if not isinstance(visits, list) or not isinstance(events, list):
        return False
    return all(isinstance(item, dict) for item in visits + events)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    # Without it, a keep-alive answer waits ~40 ms for a delayed ACK.
    disable_nagle_algorithm = True

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            self._answer(413, b"too large")
            return
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            body = None
        if not is_cimp_body(body):
            self._answer(400, b"not a CIMP report")
            return
        self.server.record(body, self.client_address[0])
        self._answer(self.server.status, b"")

    def _answer(self, status: int, text: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(text)))
        self.end_headers()
        self.wfile.write(text)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # reports are private; the demo prints what it needs


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__((LOOPBACK, 0), _Handler)
        self.status = 204
        self.received: list[dict[str, Any]] = []
        self.peers: list[str] = []
        self.lock = threading.Lock()

    def record(self, body: dict[str, Any], peer: str) -> None:
        with self.lock:
            self.received.append(body)
            self.peers.append(peer)


class CimpReceiver:
    """A real HTTP server standing in for a CIMP; records what it accepts.

    It answers 204 to a well-formed CIMP body and 400 to anything else,
    and keeps every accepted body in :attr:`received`, with the sending
    address in :attr:`peers`::

        with CimpReceiver() as cimp:
            requests.post(cimp.url, json={"idsite": 1, "visits": [],
                                          "events": []})
            assert cimp.received[0]["idsite"] == 1
    """

    def __init__(self) -> None:
        self._server = _Server()
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The URL to POST reports to."""
        return f"http://{LOOPBACK}:{self._server.server_address[1]}/cimp"

    @property
    def received(self) -> list[dict[str, Any]]:
        """A copy of every accepted report body, oldest first."""
        with self._server.lock:
            return list(self._server.received)

    @property
    def peers(self) -> list[str]:
        """The address each accepted report came from."""
        with self._server.lock:
            return list(self._server.peers)

    def answer_with(self, status: int) -> None:
        """Answer later well-formed reports with ``status`` (still record)."""
        self._server.status = status

    def start(self) -> CimpReceiver:
        """Serve on a background thread; return self."""
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="cimp", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> CimpReceiver:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
