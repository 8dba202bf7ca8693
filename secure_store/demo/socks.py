"""A real SOCKS5 server (pproxy) on 127.0.0.1, run as a child process."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

from ..errors import SecureStoreError

LOOPBACK = "127.0.0.1"
START_TIMEOUT_S = 10.0
START_ATTEMPTS = 3
POLL_S = 0.02
STOP_TIMEOUT_S = 5.0
# The proxy refuses every destination but loopback, so that nothing the
# demo or a test sends through it can ever leave this machine.
LOOPBACK_ONLY_RULE = r"{(?!(localhost|127\.0\.0\.1)$)}"


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(port: int, timeout_s: float) -> bool:
    """Wait until something listens on 127.0.0.1:``port``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((LOOPBACK, port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.02)
    return False


class Pproxy:
    """pproxy as a SOCKS5 server on loopback, checking credentials each time.

    pproxy is started with ``--auth 0`` so that it checks the username and
    password on every connection instead of trusting an address for 30 days
    after one good login. Its verbose log (one line per connection, with the
    destination as the client named it) is kept for inspection::

        with Pproxy() as proxy:
            requests.get(url, proxies={"http": proxy.url})
            print(proxy.log_lines())
    """

    def __init__(self, *, with_credentials: bool = True) -> None:
        self.port = free_port()
        self.username = "demo" if with_credentials else ""
        self.password = secrets.token_urlsafe(12) if with_credentials else ""
        self._dir = Path(tempfile.mkdtemp(prefix="secure-store-pproxy-"))
        self._log_path = self._dir / "pproxy.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The ``socks5h://`` URL of the proxy, with its credentials."""
        auth = f"{self.username}:{self.password}@" if self.username else ""
        return f"socks5h://{auth}{LOOPBACK}:{self.port}"

    def start(self) -> Pproxy:
        """Start pproxy and wait until it listens; return self.

        The port was free when picked, but another socket may take it
        before pproxy binds it; pproxy then exits, and a new port is tried.
        """
        for _ in range(START_ATTEMPTS):
            if self._launch():
                return self
            self.port = free_port()
        log = "\n".join(self.log_lines()[-5:])
        self.stop()
        raise SecureStoreError(
            f"pproxy did not start listening on {LOOPBACK} after "
            f"{START_ATTEMPTS} tries; is the 'pproxy' package installed? "
            f"Its last words: {log or '(nothing)'}"
        )

    def _launch(self) -> bool:
        listen = f"socks5://{LOOPBACK}:{self.port}"
        if self.username:
            listen += f"#{self.username}:{self.password}"
        command = [sys.executable, "-m", "pproxy", "-l", listen, "-v"]
        command += ["--auth", "0", "-b", LOOPBACK_ONLY_RULE]
        with open(self._log_path, "wb") as log:
            process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        self._process = process
        # pproxy says "Serving on ... 127.0.0.1:PORT" once it listens; a
        # connection test could reach some other program on a taken port.
        serving = f"{LOOPBACK}:{self.port} by socks5"
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if process.poll() is not None:
                self._process = None
                return False
            if any(serving in line for line in self.log_lines()):
                return True
            time.sleep(POLL_S)
        self.stop_process()
        return False

    @property
    def pid(self) -> int | None:
        """The proxy process's id while it runs."""
        return self._process.pid if self._process is not None else None

    def log_lines(self) -> list[str]:
        """The proxy's log so far, one entry per line."""
        try:
            return self._log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []

    def stop(self) -> None:
        """Stop the proxy process and remove its folder."""
        self.stop_process()
        shutil.rmtree(self._dir, ignore_errors=True)

    def stop_process(self) -> None:
        """Stop the proxy process, if it runs."""
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None

    def __enter__(self) -> Pproxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
