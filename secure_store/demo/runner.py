"""`secure-store demo`: the whole path on real loopback servers."""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

import keyring
import keyring.backend

from ..cleaninsights import CleanInsights
from ..cleaninsights.clock import FrozenClock, use_clock
from ..errors import SecureStoreError
from ..secure_store import SecureStore
from ..storage.keys import KEYRING_SERVICE, KeyringKeysets
from ..transport import envelope
from .keyring_backend import DemoPlaintextKeyring
from .receiver import CimpReceiver
from .socks import LOOPBACK, Pproxy, wait_for_port

log = logging.getLogger(__name__)

SITE_ID = 1
CAMPAIGN_ID = "demo-weekly"
CAMPAIGN_START = datetime(2026, 1, 5, tzinfo=UTC)
PERIOD_DAYS = 7
# Mid-way through the campaign's first week.
DEMO_NOW = CAMPAIGN_START + timedelta(days=2, hours=10)
SEND_TIMEOUT_S = 10
DELIVERY_WAIT_S = 30.0
GATEWAY_START_TIMEOUT_S = 10.0
GATEWAY_STOP_TIMEOUT_S = 5.0
LOOP_TURN_S = 0.02

# What the app measures in the demo: (scene path, times) and
# (category, action, name, values).
VISITS: list[tuple[list[str], int]] = [
    (["Main"], 3),
    (["Main", "Settings"], 2),
]
EVENTS: list[tuple[str, str, str, list[float]]] = [
    ("music", "play", "track-42", [12.5, 7.5]),
]


def expected_report(period_start: int, period_end: int) -> dict[str, Any]:
    """The CIMP body the demo's measurements must produce."""
    visits = [
        {
            "action_name": "/".join(path),
            "period_start": period_start,
            "period_end": period_end,
            "times": times,
        }
        for path, times in VISITS
    ]
    events = [
        {
            "category": category,
            "action": action,
            "name": name,
            "value": sum(values),
            "period_start": period_start,
            "period_end": period_end,
            "times": len(values),
        }
        for category, action, name, values in EVENTS
    ]
    return {"idsite": SITE_ID, "visits": visits, "events": events}


def secret_words() -> list[str]:
    """Strings that must never appear readable in the sealed file."""
    words = [CAMPAIGN_ID]
    for path, _ in VISITS:
        words += path
    for category, action, name, _ in EVENTS:
        words += [category, action, name]
    return words


def find_plaintext(blob: bytes, words: list[str]) -> list[str]:
    """Return the words found in ``blob`` as UTF-8, JSON or UTF-16 text."""
    found = []
    for word in words:
        forms = {
            word.encode("utf-8"),
            json.dumps(word).encode("utf-8"),
            word.encode("utf-16-le"),
            word.encode("utf-16-be"),
        }
        if any(form in blob for form in forms):
            found.append(word)
    return found


class _Steps:
    """Prints each step of the demo with the time it took."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.timings: list[tuple[str, float]] = []

    @contextlib.contextmanager
    def step(self, title: str) -> Iterator[None]:
        self.out.write(f"\n== {title}\n")
        started = time.perf_counter()
        yield
        elapsed = time.perf_counter() - started
        self.timings.append((title, elapsed))
        self.out.write(f"   ({elapsed * 1000:.1f} ms)\n")
        self.out.flush()

    def say(self, text: str) -> None:
        self.out.write(f"   {text}\n")
        self.out.flush()


def pick_keyring(folder: Path) -> tuple[keyring.backend.KeyringBackend, bool]:
    """Return the OS keyring if it works here, else a demo-only one.

    The second value is True when the demo-only backend was chosen.
    """
    try:
        keysets = KeyringKeysets()
        probe_name = f"demo-probe-{secrets.token_hex(4)}"
        keysets.create(probe_name)
        keysets.delete(probe_name)
        return keyring.get_keyring(), False
    except SecureStoreError as exc:
        log.debug("OS keyring not usable for the demo: %s", exc)
        return DemoPlaintextKeyring(folder), True


class WaitressThread:
    """A WSGI app under waitress on a background thread of this process.

    waitress's own ``run()`` cannot be stopped cleanly from another thread,
    so this runs its loop in short turns and checks a stop flag between.
    """

    def __init__(self, app: Callable[..., Any], threads: int = 4) -> None:
        from ..gateway import make_server

        self._server: Any = make_server(app, LOOPBACK, 0, threads=threads)
        self.port: int = self._server.effective_port
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="waitress", daemon=True
        )

    def _run(self) -> None:
        from waitress import wasyncore

        while not self._stop.is_set():
            wasyncore.loop(timeout=LOOP_TURN_S, map=self._server._map, count=1)

    def start(self) -> WaitressThread:
        """Serve; return self once the port listens."""
        self._thread.start()
        if not wait_for_port(self.port, GATEWAY_START_TIMEOUT_S):
            raise SecureStoreError("the gateway did not start listening")
        return self

    def stop(self) -> None:
        """Stop serving, finish running requests, close every socket."""
        from waitress import wasyncore

        self._stop.set()
        self._thread.join()
        self._server.task_dispatcher.shutdown(timeout=GATEWAY_STOP_TIMEOUT_S)
        wasyncore.close_all(self._server._map)

    def __enter__(self) -> WaitressThread:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def run_demo(out: TextIO = sys.stdout) -> int:
    """Run the demo; return 0 when the CIMP got exactly what was measured."""
    from ..gateway import create_app
    from ..gateway.replay import SQLiteReplayCache

    steps = _Steps(out)
    folder = Path(tempfile.mkdtemp(prefix="secure-store-demo-"))
    clock = FrozenClock(DEMO_NOW)
    store_name = f"demo-{secrets.token_hex(4)}"
    started = time.perf_counter()
    keyring_backend: keyring.backend.KeyringBackend | None = None
    with contextlib.ExitStack() as cleanup, use_clock(clock):
        cleanup.callback(shutil.rmtree, folder, ignore_errors=True)

        with steps.step(
            "Start a CIMP receiver, the gateway and a SOCKS5 proxy"
        ):
            cimp = cleanup.enter_context(CimpReceiver())
            gateway_key = envelope.GatewayKey.generate(
                envelope.Suite.PQ_HYBRID
            )
            app = create_app(
                [gateway_key],
                cimp.url,
                replay_cache=SQLiteReplayCache(folder / "replay.sqlite3"),
            )
            gateway = cleanup.enter_context(WaitressThread(app))
            proxy = cleanup.enter_context(Pproxy())
            key_config = gateway_key.key_config().to_base64()
            gateway_url = f"http://localhost:{gateway.port}/"
            steps.say(f"CIMP receiver  {cimp.url}")
            steps.say(
                f"gateway        {gateway_url} (hybrid ML-KEM-768+X25519)"
            )
            steps.say(f"SOCKS5 proxy   {proxy.url.split('@')[-1]} (pproxy)")
            steps.say(
                f"key config     {key_config[:32]}... "
                f"({len(key_config)} chars)"
            )

        with steps.step("Open a SecureStore"):
            keyring_backend, demo_only = pick_keyring(folder)
            if demo_only:
                steps.say(
                    "no working OS keyring here: using a DEMO-ONLY keyring "
                    f"that keeps the key in plaintext under {folder}"
                )
            else:
                steps.say(f"keyring        {type(keyring_backend).__module__}")
            store_path = folder / f"{store_name}.sstore"
            store = SecureStore(
                name=store_name,
                path=store_path,
                proxy_url=proxy.url,
                gateway_key_config=key_config,
                keyring_backend=keyring_backend,
                allow_insecure_keyring=demo_only,
                # The demo gateway is plain HTTP on loopback, not an onion.
                allow_insecure_http=True,
            )
            cleanup.callback(_forget_keyset, store_name, keyring_backend)
            cleanup.callback(store.close)
            steps.say(f"store file     {store_path}")

        conf = {
            "server": gateway_url,
            "siteId": SITE_ID,
            "timeout": SEND_TIMEOUT_S,
            "persistEveryNTimes": 1000,
            "campaigns": {
                CAMPAIGN_ID: {
                    "start": CAMPAIGN_START.isoformat(),
                    "end": (CAMPAIGN_START + timedelta(days=90)).isoformat(),
                    "aggregationPeriodLength": PERIOD_DAYS,
                    "numberOfPeriods": 4,
                }
            },
        }
        ci = CleanInsights(conf, store)

        with steps.step(f"Measure at {clock.now():%Y-%m-%d %H:%M} UTC"):
            ci.grant_campaign(CAMPAIGN_ID)
            for path, times in VISITS:
                for _ in range(times):
                    ci.measure_visit(path, CAMPAIGN_ID)
            for category, action, name, values in EVENTS:
                for value in values:
                    ci.measure_event(
                        category, action, CAMPAIGN_ID, name, value
                    )
            steps.say(
                f"{sum(t for _, t in VISITS)} visits, "
                f"{sum(len(v) for *_, v in EVENTS)} events measured"
            )

        with steps.step("Persist, and look at the file on disk"):
            ci.persist()
            blob = store_path.read_bytes()
            leaks = find_plaintext(blob, secret_words())
            steps.say(
                f"{store_path.name}: {len(blob)} bytes, mode "
                f"{store_path.stat().st_mode & 0o777:o}"
            )
            steps.say(f"first bytes: {blob[:24].hex(' ')}")
            if leaks:
                out.write(f"FAIL: the sealed file shows {leaks}\n")
                return 1
            steps.say(
                f"none of {len(secret_words())} scene/event/campaign names "
                "found (UTF-8, JSON, UTF-16)"
            )

        period_end = CAMPAIGN_START + timedelta(days=PERIOD_DAYS)
        clock.set(period_end + timedelta(hours=1))
        with steps.step(
            f"Move the clock to {clock.now():%Y-%m-%d %H:%M} UTC and send"
        ):
            ci.persist_and_send()
            delivered = _wait_until(
                lambda: bool(cimp.received) and not store.visits,
                DELIVERY_WAIT_S,
            )
            report = expected_report(
                int(CAMPAIGN_START.timestamp()), int(period_end.timestamp())
            )
            size = len(
                envelope.seal(
                    gateway_key.key_config(),
                    secrets.token_bytes(envelope.REPORT_ID_BYTES),
                    json.dumps(report, separators=(",", ":")).encode(),
                )
            )
            steps.say(f"envelope: {size} bytes for the sealed report")
            connects = [
                line
                for line in proxy.log_lines()
                if f"-> localhost:{gateway.port}" in line
            ]
            steps.say(f"proxy log: {connects[-1] if connects else 'nothing'}")

        with steps.step("What the CIMP received"):
            for body in cimp.received:
                steps.say(json.dumps(body, sort_keys=True))
            if not delivered:
                out.write(
                    f"FAIL: nothing delivered within {DELIVERY_WAIT_S:g} s "
                    f"(store load error: {store.load_error})\n"
                )
                return 1
            if cimp.received != [report]:
                out.write(
                    "FAIL: the CIMP received something else than measured:\n"
                    f"   expected {json.dumps(report, sort_keys=True)}\n"
                )
                return 1
            if not connects:
                out.write("FAIL: the proxy never saw the gateway's name\n")
                return 1

    out.write("\n== Timings\n")
    for title, elapsed in steps.timings:
        out.write(f"   {elapsed * 1000:8.1f} ms  {title}\n")
    total = time.perf_counter() - started
    out.write(
        f"   {total * 1000:8.1f} ms  total, with start-up and clean-up\n"
    )
    out.write(
        "\nOK: the CIMP received exactly the measured visits and events, "
        "sealed at rest and in transit, through the SOCKS5 proxy.\n"
    )
    return 0


def _wait_until(condition: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def _forget_keyset(
    store_name: str, backend: keyring.backend.KeyringBackend | None
) -> None:
    """Remove the demo store's keyset from the keyring it was put in."""
    with contextlib.suppress(Exception):
        if backend is not None:
            backend.delete_password(KEYRING_SERVICE, store_name)
