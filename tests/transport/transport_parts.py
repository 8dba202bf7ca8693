"""Real loopback parts for transport tests: SOCKS servers, HTTP servers."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from secure_store.demo.socks import free_port

LOOPBACK = "127.0.0.1"
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0

# Environment variables a proxy server must not inherit from a test.
_PROXY_ENV = (
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
)


def _wait_listening(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited early: {process.returncode}")
        try:
            with socket.create_connection((LOOPBACK, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.01)
    raise TimeoutError(f"nothing listens on {LOOPBACK}:{port}")


class SocksServer:
    """A real SOCKS5 server (pproxy or microsocks) on 127.0.0.1.

    ``login`` makes it demand that user name and password on every
    connection. Its own log (stdout and stderr) is kept in a file.
    """

    def __init__(
        self, kind: str, log_dir: Path, login: tuple[str, str] | None = None
    ) -> None:
        self.kind = kind
        self.port = free_port()
        self.log_path = log_dir / f"{kind}-{self.port}.log"
        self.login = login
        if kind == "pproxy":
            listen = f"socks5://{LOOPBACK}:{self.port}"
            if login:
                listen += f"#{login[0]}:{login[1]}"
            # --auth 0: check the login on every connection instead of
            # trusting the address for 30 days after one good login.
            command = [sys.executable, "-u", "-m", "pproxy", "-l", listen]
            command += ["-v", "--auth", "0"]
        elif kind == "microsocks":
            binary = shutil.which("microsocks")
            if binary is None:
                pytest.skip("microsocks is not installed")
            command = [binary, "-i", LOOPBACK, "-p", str(self.port)]
            if login:
                command += ["-u", login[0], "-P", login[1]]
        else:
            raise ValueError(kind)
        env = {k: v for k, v in os.environ.items() if k not in _PROXY_ENV}
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, env=env
        )
        _wait_listening(self.port, self.process)
        # Our own readiness probe is not part of any test's traffic.
        time.sleep(0.05)
        self._mark = 0
        self.mark()

    @property
    def url(self) -> str:
        return f"socks5h://{LOOPBACK}:{self.port}"

    def url_with_login(self) -> str:
        assert self.login is not None
        user, password = self.login
        return f"socks5h://{user}:{password}@{LOOPBACK}:{self.port}"

    def mark(self) -> None:
        """Forget the log so far; log_lines() returns what follows."""
        self._mark = self.log_path.stat().st_size

    def log_lines(self) -> list[str]:
        # Servers write asynchronously; give the last line a moment.
        time.sleep(0.1)
        data = self.log_path.read_bytes()[self._mark :]
        return data.decode("utf-8", errors="replace").splitlines()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT_S)
        self._log.close()


class SilentListener:
    """Accepts TCP connections on 127.0.0.1 and never says a word.

    As a SOCKS proxy it hangs in the middle of the handshake; as an
    environment proxy it records whether anyone tried to use it.
    """

    def __init__(self) -> None:
        self._socket = socket.socket()
        self._socket.bind((LOOPBACK, 0))
        self._socket.listen(16)
        self._socket.settimeout(0.1)
        self.port: int = self._socket.getsockname()[1]
        self.accepted = 0
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._socket.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            self._held.append(conn)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(STOP_TIMEOUT_S)
        for conn in self._held:
            conn.close()
        self._socket.close()


@dataclass
class Received:
    """One request as the HTTP server saw it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    action: str


@dataclass
class Script:
    """What the server does with each request, in order; then ``rest``."""

    actions: list[tuple[Any, ...]] = field(default_factory=list)
    rest: tuple[Any, ...] = ("answer", 204, {})
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next(self) -> tuple[Any, ...]:
        with self.lock:
            return self.actions.pop(0) if self.actions else self.rest


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Without this, headers and body leave in two segments and wait for
    # the peer's delayed ACK (about 40 ms each).
    disable_nagle_algorithm = True
    server: ScriptedServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        self._serve()

    def do_GET(self) -> None:
        self._serve()

    def _serve(self) -> None:
        action = self.server.script.next()
        length = int(self.headers.get("Content-Length", "0"))
        headers = {k.lower(): v for k, v in self.headers.items()}
        kind = action[0]

        if kind == "reset":
            # Read half the body, then abort: the peer gets an RST.
            self.rfile.read(length // 2)
            self._record(headers, b"", "reset")
            self.connection.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
            )
            self.connection.close()
            self.close_connection = True
            return

        body = self.rfile.read(length)
        self._record(headers, body, kind)
        if kind == "hang":
            self.server.stopping.wait()
            self.close_connection = True
            return
        if kind == "trickle":
            # A status line and headers that never end, one byte at a time.
            line = b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 10_000
            for byte in line:
                if self.server.stopping.wait(action[1]):
                    break
                try:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                except OSError:
                    break
            self.close_connection = True
            return
        _, status, headers_out = action
        extra = dict(headers_out)
        payload = extra.pop("body", b"")
        self.send_response(status)
        for name, value in extra.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if payload:
            self.wfile.write(payload)

    def _record(self, headers: dict[str, str], body: bytes, kind: str) -> None:
        with self.server.lock:
            self.server.received.append(
                Received(self.command, self.path, headers, body, kind)
            )


class ScriptedServer(ThreadingHTTPServer):
    """A stdlib HTTP server on 127.0.0.1 following a script of answers."""

    daemon_threads = True
    block_on_close = False

    def __init__(
        self, script: Script, tls: ssl.SSLContext | None = None
    ) -> None:
        super().__init__((LOOPBACK, 0), _Handler)
        self.scheme = "http"
        if tls is not None:
            self.scheme = "https"
            # The handshake happens in the handler thread, on first read,
            # so a client that stalls it cannot block the accept loop.
            self.socket = tls.wrap_socket(
                self.socket, server_side=True, do_handshake_on_connect=False
            )
        self.script = script
        self.received: list[Received] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.05}
        )
        self._thread.daemon = True
        self._thread.start()

    @property
    def port(self) -> int:
        port: int = self.server_address[1]
        return port

    @property
    def url(self) -> str:
        # A host name, so the SOCKS proxy, not this machine, resolves it.
        return f"{self.scheme}://localhost:{self.port}/report"

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Resets and watchdog shutdowns are what these tests provoke.
        pass

    def stop(self) -> None:
        self.stopping.set()
        self.shutdown()
        self.server_close()
        self._thread.join(STOP_TIMEOUT_S)


@dataclass
class Certificates:
    """A throw-away CA and a server certificate for ``localhost``."""

    ca_path: Path
    server_context: ssl.SSLContext


def make_certificates(folder: Path) -> Certificates:
    from datetime import UTC, datetime, timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            True,
        )
        .add_extension(ca_ski, False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    leaf = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost")]), False
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                ca_ski
            ),
            False,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_path = folder / "ca.pem"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    chain_path = folder / "server.pem"
    chain_path.write_bytes(
        leaf.public_bytes(serialization.Encoding.PEM)
        + key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(chain_path)
    return Certificates(ca_path, context)


class TricklingSocksProxy(SilentListener):
    """A SOCKS5 'proxy' that answers the handshake one byte at a time.

    Each byte comes well within any read timeout, but the whole handshake
    takes longer than a send's deadline.
    """

    # Method "no auth", then "succeeded, bound to 0.0.0.0:0".
    ANSWER = b"\x05\x00" + b"\x05\x00\x00\x01" + bytes(6)

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        super().__init__()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._socket.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            self._held.append(conn)
            threading.Thread(
                target=self._trickle, args=(conn,), daemon=True
            ).start()

    def _trickle(self, conn: socket.socket) -> None:
        for byte in self.ANSWER:
            if self._stop.wait(self.delay_s):
                return
            try:
                conn.sendall(bytes([byte]))
            except OSError:
                return


class TricklingTlsServer(TricklingSocksProxy):
    """A 'TLS server' that sends a 16 KiB handshake record byte by byte."""

    ANSWER = b"\x16\x03\x03\x40\x00" + bytes(16 * 1024)
