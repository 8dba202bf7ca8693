"""The plain HTTP send of FileStore and the server test, on 127.0.0.1."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from ci_helpers import utc

from secure_store.cleaninsights import CleanInsights, FileStore
from secure_store.cleaninsights.clock import FrozenClock
from secure_store.cleaninsights.store import post_cimp
from secure_store.demo.socks import free_port
from secure_store.errors import SendError, ServerUnreachableError


class Cimp:
    """A tiny CIMP stand-in: answers every POST with a set status."""

    def __init__(self) -> None:
        self.status = 204
        self.answer = b""
        self.location: str | None = None
        self.requests: list[tuple[dict[str, str], bytes]] = []
        cimp = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                cimp.requests.append((dict(self.headers), body))
                self.send_response(cimp.status)
                if cimp.location:
                    self.send_header("Location", cimp.location)
                self.send_header("Content-Length", str(len(cimp.answer)))
                self.end_headers()
                self.wfile.write(cimp.answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/ci"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}
        )

    def __enter__(self) -> Cimp:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def cimp_server() -> Iterator[Cimp]:
    with Cimp() as server:
        yield server


def test_post_sends_json_with_the_cimp_content_type(cimp_server: Cimp) -> None:
    post_cimp('{"idsite":1,"visits":[],"events":[]}', cimp_server.url, 5)
    headers, body = cimp_server.requests[0]
    assert headers["Content-Type"] == "application/json; charset=UTF-8"
    assert body == b'{"idsite":1,"visits":[],"events":[]}'


def test_post_accepts_200(cimp_server: Cimp) -> None:
    cimp_server.status = 200
    post_cimp("{}", cimp_server.url, 5)


def test_post_error_names_status_and_body(cimp_server: Cimp) -> None:
    cimp_server.status = 500
    cimp_server.answer = b"database down"
    with pytest.raises(SendError) as raised:
        post_cimp("{}", cimp_server.url, 5)
    assert str(raised.value) == "HTTP Error 500: database down"
    assert raised.value.status == 500


def test_post_does_not_follow_redirects(cimp_server: Cimp) -> None:
    cimp_server.status = 307
    cimp_server.location = "http://127.0.0.1:9/elsewhere"
    with pytest.raises(SendError) as raised:
        post_cimp("{}", cimp_server.url, 5)
    assert raised.value.status == 307


def test_post_ignores_environment_proxies(
    cimp_server: Cimp, monkeypatch: pytest.MonkeyPatch
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, dead)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    post_cimp("{}", cimp_server.url, 5)
    assert len(cimp_server.requests) == 1


def test_post_to_a_closed_port_is_unreachable() -> None:
    with pytest.raises(ServerUnreachableError):
        post_cimp("{}", f"http://127.0.0.1:{free_port()}/", 2)


def server_test(url: str, tmp_path: Path) -> list[Exception | None]:
    ci = CleanInsights(
        {
            "server": url,
            "siteId": 1,
            "campaigns": {
                "c": {
                    "start": "2024-01-01T00:00:00Z",
                    "end": "2024-12-31T00:00:00Z",
                    "aggregationPeriodLength": 1,
                }
            },
        },
        FileStore(tmp_path / "store.json"),
    )
    results: list[Exception | None] = []
    ci.test_server(results.append)
    return results


def test_server_test_passes_on_400(cimp_server: Cimp, tmp_path: Path) -> None:
    cimp_server.status = 400
    cimp_server.answer = b"empty body"
    assert server_test(cimp_server.url, tmp_path) == [None]
    assert cimp_server.requests[0][1] == b""


def test_server_test_fails_on_success(
    cimp_server: Cimp, tmp_path: Path
) -> None:
    results = server_test(cimp_server.url, tmp_path)
    assert [str(r) for r in results] == [
        "server should have answered 400 to an empty body"
    ]


def test_server_test_passes_on_a_status_400_error_type(tmp_path: Path) -> None:
    class Rejecting(FileStore):
        def send(
            self, data: str, server: str, timeout: float, done: Any
        ) -> None:
            done(SendError("rejected by the gateway", 400))

    ci = CleanInsights(
        {
            "server": "http://127.0.0.1:9/",
            "siteId": 1,
            "campaigns": {
                "c": {
                    "start": "2024-01-01T00:00:00Z",
                    "end": "2024-12-31T00:00:00Z",
                    "aggregationPeriodLength": 1,
                }
            },
        },
        Rejecting(tmp_path / "s.json"),
    )
    results: list[Exception | None] = []
    ci.test_server(results.append)
    assert results == [None]


def test_server_test_reports_other_errors(
    cimp_server: Cimp, tmp_path: Path
) -> None:
    cimp_server.status = 404
    results = server_test(cimp_server.url, tmp_path)
    assert [getattr(r, "status", None) for r in results] == [404]


def test_file_store_end_to_end(
    cimp_server: Cimp, tmp_path: Path, clock: FrozenClock
) -> None:
    path = tmp_path / "data" / "store.json"
    store = FileStore(path)
    ci = CleanInsights(
        {
            "server": cimp_server.url,
            "siteId": 3,
            "campaigns": {
                "c": {
                    "start": "2024-01-01T00:00:00Z",
                    "end": "2024-12-31T00:00:00Z",
                    "aggregationPeriodLength": 1,
                }
            },
        },
        store,
        languages=["en"],
    )
    ci.grant_campaign("c")
    ci.measure_visit(["Home"], "c")
    ci.persist()
    clock.set(utc(2024, 1, 18, 0, 0, 1))
    ci.persist_and_send()
    store.close()
    assert [body for _, body in cimp_server.requests] == [
        b'{"idsite":3,"visits":[{"action_name":"Home","period_start":'
        b'1705449600,"period_end":1705536000,"times":1}],"events":[]}'
    ]
    assert FileStore(path).visits == []


def test_post_without_an_answer_times_out() -> None:
    import socket
    import time

    from secure_store.errors import SendTimeoutError

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)  # the kernel accepts; nobody ever answers
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/"
        started = time.monotonic()
        with pytest.raises(SendTimeoutError):
            post_cimp("{}", url, 0.3)
        assert time.monotonic() - started < 2
