"""Gateway throughput and latency under waitress, against a trivial app.

Three processes besides this one, all on 127.0.0.1: a CIMP stand-in (a
trivial WSGI app answering 204), the gateway (opening, checking, the
SQLite replay cache, forwarding to the stand-in), and two baselines
under the same waitress settings: a trivial WSGI app that reads the body
and answers 204, and a plain forwarder that passes the body on to the
stand-in with requests, as the gateway does, and nothing else. This
process seals every envelope beforehand (each with its own report id, so
every request is forwarded) and then sends a fixed number of requests
from a few keep-alive connections in threads, timing each one. The
client shares the machine's cores with the servers, so the figures are
for comparing, not absolute capacity.

Run: ``python -m bench.gateway [--quick] [--requests N]``
"""

from __future__ import annotations

import argparse
import http.client
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from ._common import RATIO_PREFIX, header, percentile, print_table

REQUESTS = 2_000
QUICK_REQUESTS = 200
WARMUP_REQUESTS = 50
CONCURRENCY = 4
SERVER_THREADS = 4
START_TIMEOUT_S = 30.0
REQUEST_TIMEOUT_S = 30.0
# A realistic weekly report: a few dozen aggregated points, about 4 KiB.
VISITS = 24
EVENTS = 12
SITE_ID = 7
BASELINE = "trivial WSGI app"
FORWARDER = "plain forwarder"


def sample_report() -> bytes:
    """Return a CIMP body of about 4 KiB (contract section 7.2)."""
    import json

    start, end = 1_767_571_200, 1_768_175_999
    visits = [
        {
            "action_name": f"Main/Scene{index}/Detail",
            "period_start": start,
            "period_end": end,
            "times": index + 1,
        }
        for index in range(VISITS)
    ]
    events = [
        {
            "category": f"category{index}",
            "action": "play",
            "name": f"item-{index}",
            "value": index * 1.5,
            "period_start": start,
            "period_end": end,
            "times": 2,
        }
        for index in range(EVENTS)
    ]
    report = {
        "idsite": SITE_ID,
        "lang": "de-AT;q=1,de;q=0.9,en;q=0.8",
        "visits": visits,
        "events": events,
    }
    return json.dumps(report, separators=(",", ":")).encode()


# -- the server processes ---------------------------------------------------


def _trivial_app(
    environ: dict[str, Any], start_response: Callable[..., Any]
) -> Iterable[bytes]:
    length = int(environ.get("CONTENT_LENGTH") or 0)
    environ["wsgi.input"].read(length)
    start_response("204 No Content", [("Content-Length", "0")])
    return [b""]


def _forwarder(upstream_url: str) -> Callable[..., Iterable[bytes]]:
    """A WSGI app that only passes the body on, as the gateway does."""
    import requests

    sessions = threading.local()

    def app(
        environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length)
        session = getattr(sessions, "session", None)
        if session is None:
            session = sessions.session = requests.Session()
            session.trust_env = False
        answer = session.post(
            upstream_url,
            data=body,
            headers={"Content-Type": "application/json; charset=UTF-8"},
            timeout=REQUEST_TIMEOUT_S,
        )
        status = "204 No Content" if answer.ok else "502 Bad Gateway"
        start_response(status, [("Content-Length", "0")])
        return [b""]

    return app


def _serve(role: str, options: argparse.Namespace) -> None:
    """Run one server process and print ``PORT <n>`` once it listens."""
    import logging

    # waitress warns whenever a request waits for a free thread, which a
    # load test makes happen all the time.
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    from secure_store.gateway import (
        create_app,
        load_keys,
        open_replay_cache,
        serve,
    )

    app: Callable[..., Iterable[bytes]] = _trivial_app
    if role == "forwarder":
        app = _forwarder(options.upstream)
    elif role == "gateway":
        app = create_app(
            load_keys(key_files=[options.key_file]),
            options.upstream,
            replay_cache=open_replay_cache(options.replay_cache),
        )
    serve(
        app,
        "127.0.0.1",
        0,
        threads=SERVER_THREADS,
        ready=lambda host, port: print(f"PORT {port}", flush=True),
    )


class ServerProcess:
    """One of the server processes, started with ``--serve ROLE``."""

    def __init__(self, role: str, *arguments: str) -> None:
        project = Path(__file__).resolve().parents[1]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(project), env.get("PYTHONPATH")])
        )
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.gateway",
                "--serve",
                role,
                *arguments,
            ],
            stdout=subprocess.PIPE,
            env=env,
            cwd=project,
            text=True,
        )
        self.port = self._read_port()

    def _read_port(self) -> int:
        assert self.process.stdout is not None
        result: list[str] = []
        reader = threading.Thread(
            target=lambda: result.append(self.process.stdout.readline()),  # type: ignore[union-attr]
            daemon=True,
        )
        reader.start()
        reader.join(START_TIMEOUT_S)
        if not result or not result[0].startswith("PORT "):
            self.stop()
            raise RuntimeError(f"server did not start: {result!r}")
        return int(result[0].split()[1])

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# -- the load ---------------------------------------------------------------


def drive(port: int, bodies: Sequence[bytes]) -> tuple[float, list[float]]:
    """POST every body once from CONCURRENCY connections.

    Returns the wall time and each request's latency in seconds; raises
    if any answer is not 204.
    """
    latencies: list[float] = []
    failures: list[str] = []
    next_index = iter(range(len(bodies)))
    lock = threading.Lock()

    def worker() -> None:
        connection = http.client.HTTPConnection(
            "127.0.0.1", port, timeout=REQUEST_TIMEOUT_S
        )
        mine: list[float] = []
        headers = {"Content-Type": "application/octet-stream"}
        while True:
            with lock:
                index = next(next_index, None)
            if index is None:
                break
            started = time.perf_counter()
            connection.request("POST", "/", bodies[index], headers)
            answer = connection.getresponse()
            answer.read()
            mine.append(time.perf_counter() - started)
            if answer.status != 204:
                failures.append(str(answer.status))
        connection.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(CONCURRENCY)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if failures:
        raise RuntimeError(f"{len(failures)} requests failed: {failures[:5]}")
    return elapsed, latencies


def envelopes(
    suite_name: str, folder: Path, count: int
) -> tuple[Path, list[bytes]]:
    """Write a gateway key of ``suite_name``; seal ``count`` reports to it."""
    from secure_store.transport.envelope import (
        GatewayKey,
        Suite,
        new_report_id,
        seal,
    )

    key = GatewayKey.generate(Suite(suite_name))
    key_file = folder / f"{suite_name}.json"
    key.save(key_file)
    config = key.key_config()
    report = sample_report()
    return key_file, [
        seal(config, new_report_id(), report) for _ in range(count)
    ]


def measure(port: int, bodies: Sequence[bytes]) -> list[str]:
    """Warm up, then drive the server; return a table row's figures."""
    drive(port, bodies[:WARMUP_REQUESTS])
    measured = bodies[WARMUP_REQUESTS:]
    elapsed, latencies = drive(port, measured)
    return [
        str(len(measured)),
        f"{len(measured) / elapsed:.0f}",
        f"{percentile(latencies, 0.50) * 1000:.2f}",
        f"{percentile(latencies, 0.99) * 1000:.2f}",
        f"{len(bodies[0])}",
    ]


def run(count: int, quick: bool) -> None:
    header("Gateway under waitress: requests per second and latency", quick)
    print(
        f"# {CONCURRENCY} client connections, {SERVER_THREADS} waitress "
        f"threads per server, {len(sample_report())}-byte CIMP report, "
        "SQLite replay cache, upstream answers 204"
    )
    total = count + WARMUP_REQUESTS
    rows: list[list[str]] = []
    rates: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as temp:
        folder = Path(temp)
        upstream = ServerProcess("upstream")
        try:
            upstream_url = f"http://127.0.0.1:{upstream.port}/"
            plain = [sample_report()] * total
            for role, name, arguments in (
                ("baseline", BASELINE, ()),
                ("forwarder", FORWARDER, ("--upstream", upstream_url)),
            ):
                server = ServerProcess(role, *arguments)
                try:
                    rows.append([name, *measure(server.port, plain)])
                finally:
                    server.stop()
            for suite_name in ("x25519", "pq-hybrid"):
                key_file, bodies = envelopes(suite_name, folder, total)
                gateway = ServerProcess(
                    "gateway",
                    "--key-file",
                    str(key_file),
                    "--upstream",
                    upstream_url,
                    "--replay-cache",
                    str(folder / f"replay-{suite_name}.sqlite3"),
                )
                try:
                    rows.append(
                        [
                            f"gateway {suite_name}",
                            *measure(gateway.port, bodies),
                        ]
                    )
                finally:
                    gateway.stop()
        finally:
            upstream.stop()
    for row in rows:
        rates[row[0]] = float(row[2])
    print_table(
        ["server", "requests", "req/s", "p50 ms", "p99 ms", "body bytes"],
        rows,
    )
    base, forward = rates[BASELINE], rates[FORWARDER]
    print(
        f"{RATIO_PREFIX} "
        f"x25519/trivial={rates['gateway x25519'] / base:.2f}x "
        f"pq-hybrid/trivial={rates['gateway pq-hybrid'] / base:.2f}x "
        f"x25519/forwarder={rates['gateway x25519'] / forward:.2f}x "
        f"pq-hybrid/forwarder={rates['gateway pq-hybrid'] / forward:.2f}x "
        "(req/s over req/s; no target)"
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--requests", type=int, default=None)
    parser.add_argument(
        "--serve",
        choices=["upstream", "baseline", "forwarder", "gateway"],
        default=None,
    )
    parser.add_argument("--key-file")
    parser.add_argument("--upstream")
    parser.add_argument("--replay-cache")
    options = parser.parse_args(argv)
    if options.serve:
        _serve(options.serve, options)
        return
    count = options.requests or (QUICK_REQUESTS if options.quick else REQUESTS)
    run(count, options.quick)


if __name__ == "__main__":
    main()
