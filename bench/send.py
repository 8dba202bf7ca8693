"""A POST through a real SOCKS5 server on 127.0.0.1 against a direct POST.

The proxied path is the project's ``Sender`` (through ``pproxy``, the
pure-Python SOCKS5 server the demo and tests use). The direct path is a
``requests`` session set up the same way (environment ignored, no
redirects, the same headers, a new connection for every POST, as the
Sender makes). Both POST the same 2 KiB body to the same CIMP receiver
on 127.0.0.1, taking turns. When ``microsocks`` (a small C SOCKS5
server) is installed, a third row shows how much of the difference is
the proxy program itself.

Run: ``python -m bench.send [--quick]``
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence

import requests

from secure_store.demo.receiver import CimpReceiver
from secure_store.demo.socks import (
    LOOPBACK,
    START_TIMEOUT_S,
    STOP_TIMEOUT_S,
    Pproxy,
    free_port,
    wait_for_port,
)
from secure_store.transport.proxy import parse_proxy_url
from secure_store.transport.sender import CONTENT_TYPE, Sender

from . import _common
from ._common import median, ms, percentile

TARGET_EXTRA_S = 0.002
POSTS = 400
QUICK_POSTS = 15
WARMUP_POSTS = 5
TIMEOUT_S = 10.0
BODY_BYTES = 2048
# The same headers the Sender sends (see secure_store.transport.sender).
DIRECT_HEADERS = {
    "User-Agent": "secure-store",
    "Accept": "*/*",
    "Accept-Encoding": "identity",
    "Content-Type": CONTENT_TYPE,
}


def cimp_body(size: int) -> bytes:
    """A well-formed CIMP report of about ``size`` bytes."""
    visit = {
        "action_name": "Main/Settings",
        "period_start": 1767571200,
        "period_end": 1768175999,
        "times": 3,
    }
    visits = []
    body = b""
    while len(body) < size:
        visits.append(visit)
        body = json.dumps(
            {"idsite": 1, "visits": visits, "events": []}
        ).encode("utf-8")
    return body


class DirectPoster:
    """POSTs without a proxy, otherwise as the Sender does."""

    def __init__(self) -> None:
        self._session = requests.Session()
        self._session.trust_env = False
        self._session.max_redirects = 0
        self._session.headers.clear()
        self._session.headers.update(DIRECT_HEADERS)

    def post(self, url: str, body: bytes, timeout_s: float) -> None:
        """POST ``body``; raise unless the answer is 2xx."""
        response = self._session.post(
            url,
            data=body,
            timeout=(timeout_s, timeout_s),
            allow_redirects=False,
        )
        # The Sender drops its connection after each send; so do we.
        self._session.close()
        if not 200 <= response.status_code < 300:
            raise RuntimeError(f"direct POST answered {response.status_code}")

    def close(self) -> None:
        """Close the session."""
        self._session.close()


@contextlib.contextmanager
def microsocks() -> Iterator[str | None]:
    """Run microsocks on loopback if installed; yield its URL or None."""
    program = shutil.which("microsocks")
    if program is None:
        yield None
        return
    port = free_port()
    password = secrets.token_urlsafe(12)
    # -b binds outgoing connections to loopback, so they cannot leave.
    command = [program, "-i", LOOPBACK, "-p", str(port), "-b", LOOPBACK]
    command += ["-u", "bench", "-P", password]
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        if not wait_for_port(port, START_TIMEOUT_S):
            yield None
            return
        yield f"socks5h://bench:{password}@{LOOPBACK}:{port}"
    finally:
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def latencies(
    posts: dict[str, Callable[[], None]], count: int
) -> dict[str, list[float]]:
    """Seconds of each POST, the paths taking turns."""
    names = list(posts)
    for _ in range(WARMUP_POSTS):
        for name in names:
            posts[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for index in range(count):
        order = names if index % 2 == 0 else names[::-1]
        for name in order:
            started = time.perf_counter()
            posts[name]()
            times[name].append(time.perf_counter() - started)
    return times


def main(argv: Sequence[str] | None = None) -> int:
    """Measure, print the table and the ratio line; return 0."""
    args = _common.parse_args(__doc__ or "", argv)
    count = QUICK_POSTS if args.quick else POSTS
    _common.header("send: POST via SOCKS5 (Sender) vs direct", args.quick)
    body = cimp_body(BODY_BYTES)
    with contextlib.ExitStack() as stack:
        cimp = stack.enter_context(CimpReceiver())
        proxy = stack.enter_context(Pproxy())
        fast_proxy_url = stack.enter_context(microsocks())
        direct = DirectPoster()
        stack.callback(direct.close)
        sender = Sender(
            parse_proxy_url(proxy.url),
            max_attempts=1,
            allow_insecure_http=True,
        )
        stack.callback(sender.close)
        posts: dict[str, Callable[[], None]] = {
            "direct (requests)": lambda: direct.post(
                cimp.url, body, TIMEOUT_S
            ),
            "Sender via pproxy": lambda: sender.post(
                cimp.url, body, TIMEOUT_S
            ),
        }
        if fast_proxy_url is not None:
            fast_sender = Sender(
                parse_proxy_url(fast_proxy_url),
                max_attempts=1,
                allow_insecure_http=True,
            )
            stack.callback(fast_sender.close)
            posts["Sender via microsocks"] = lambda: fast_sender.post(
                cimp.url, body, TIMEOUT_S
            )
        times = latencies(posts, count)
        received = len(cimp.received)
    expected = (count + WARMUP_POSTS) * len(posts)
    if received != expected:
        raise RuntimeError(f"the receiver got {received} of {expected} POSTs")

    base = times["direct (requests)"]
    rows = [
        [
            name,
            str(len(values)),
            ms(median(values)),
            ms(percentile(values, 0.99)),
            f"{(median(values) - median(base)) * 1000:+.2f}",
            f"{median(values) / median(base):.2f}",
        ]
        for name, values in times.items()
    ]
    _common.print_table(
        ["path", "POSTs", "median ms", "p99 ms", "median +ms", "ratio"], rows
    )
    proxied = times["Sender via pproxy"]
    extra_s = median(proxied) - median(base)
    ratios = [
        ("median", median(proxied) / median(base)),
        ("p99", percentile(proxied, 0.99) / percentile(base, 0.99)),
    ]
    _common.print_ratios(
        ratios,
        f"median <= +{TARGET_EXTRA_S * 1000:g} ms",
        extra_s <= TARGET_EXTRA_S,
        extra=f"median_extra={extra_s * 1000:+.2f}ms",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
