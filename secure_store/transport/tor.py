"""Inspect a SOCKS proxy: is it reachable, is it Tor, is Tor bootstrapped."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import re
import secrets
import socket
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import requests

from secure_store.errors import (
    ProxyConfigError,
    ProxyRefusedError,
    ProxyUnreachableError,
    TransportError,
)

log = logging.getLogger(__name__)

CHECK_TIMEOUT_S = 10.0
# What Tor's SocksPort answers to a plain HTTP request (proto_http.c); no
# other SOCKS server we know says this.
TOR_HTTP_ANSWER = b"HTTP/1.0 501 Tor is not an HTTP Proxy"
HTTP_PROBE = b"GET / HTTP/1.0\r\n\r\n"
MAX_PROBE_ANSWER_BYTES = 256

SOCKS_VERSION = 5
SOCKS_NO_AUTH = 0x00
SOCKS_USER_PASS = 0x02
SOCKS_NO_ACCEPTABLE_METHOD = 0xFF
USER_PASS_VERSION = 1
SOCKS_METHOD_NAMES = {
    SOCKS_NO_AUTH: "no authentication",
    SOCKS_USER_PASS: "username/password",
}
ISOLATION_TOKEN_BYTES = 8
MS_DECIMALS = 2  # sub-millisecond noise is not worth printing

_BOOTSTRAP_RE = re.compile(
    r"PROGRESS=(?P<percent>\d+)(?: TAG=(?P<tag>\S+))?"
    r'(?: SUMMARY="(?P<summary>[^"]*)")?'
)


@dataclass(frozen=True)
class ProxyReport:
    """What ``check_proxy`` found; ``None`` means "not checked/unknown".

    A returned report always has ``reachable`` True: an unreachable proxy
    raises ProxyUnreachableError instead, one that does not speak SOCKS5
    ProxyRefusedError.
    """

    proxy: str
    reachable: bool
    socks_method: str
    connect_ms: float
    handshake_ms: float
    is_tor: bool | None = None
    tor_evidence: str | None = None
    tor_version: str | None = None
    control_port: str | None = None
    bootstrap_percent: int | None = None
    bootstrap_summary: str | None = None
    circuit_established: bool | None = None
    target_url: str | None = None
    target_status: int | None = None
    target_ms: float | None = None
    target_error: str | None = None
    problems: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        """Reachable, not known to be anything but Tor, bootstrapped if
        known, and the target (if any) answered."""
        return (
            self.reachable
            and self.is_tor is not False
            and self.bootstrap_percent in (None, 100)
            and self.target_error is None
            and not self.problems
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field, plus ``ok``."""
        out = asdict(self)
        for key in ("connect_ms", "handshake_ms", "target_ms"):
            if out[key] is not None:
                out[key] = round(out[key], MS_DECIMALS)
        out["problems"] = list(self.problems)
        out["ok"] = self.ok
        return out

    def describe(self) -> str:
        """A few aligned lines for the command line."""

        def yes_no(value: bool | None) -> str:
            return {True: "yes", False: "no", None: "unknown"}[value]

        lines = [
            f"proxy      {self.proxy}",
            f"reachable  {yes_no(self.reachable)} (SOCKS5, "
            f"{self.socks_method}; connect {self.connect_ms:.1f} ms, "
            f"handshake {self.handshake_ms:.1f} ms)",
        ]
        tor = yes_no(self.is_tor)
        if self.tor_evidence:
            tor += f" ({self.tor_evidence})"
        if self.tor_version:
            tor += f"; Tor {self.tor_version}"
        lines.append(f"tor        {tor}")
        if self.bootstrap_percent is not None:
            boot = f"{self.bootstrap_percent}%"
            if self.bootstrap_summary:
                boot += f" ({self.bootstrap_summary})"
            if self.circuit_established is not None:
                boot += (
                    "; circuit established"
                    if self.circuit_established
                    else "; no circuit yet"
                )
            lines.append(f"bootstrap  {boot}")
        elif self.control_port is None:
            lines.append("bootstrap  unknown (no control port given)")
        else:
            lines.append(
                "bootstrap  unknown (the control port did not tell; see "
                "problems)"
            )
        if self.target_url is not None:
            if self.target_error is not None:
                answer = f"failed: {self.target_error}"
            else:
                answer = (
                    f"HTTP {self.target_status} in {self.target_ms:.0f} ms"
                )
            lines.append(f"target     {self.target_url} -> {answer}")
        lines.extend(f"problem    {problem}" for problem in self.problems)
        lines.append(f"ok         {yes_no(self.ok)}")
        return "\n".join(lines)


@dataclass(frozen=True)
class _SocksAddress:
    scheme: str
    host: str
    port: int
    username: str | None
    password: str | None

    def redacted(self) -> str:
        creds = "***:***@" if self.username is not None else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{creds}{host}:{self.port}"

    def requests_url(self, username: str, password: str) -> str:
        # Always socks5h here: the target's name goes to the proxy, never
        # to the local resolver, whatever scheme the caller wrote.
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"socks5h://{username}:{password}@{host}:{self.port}"


@dataclass
class _ControlFindings:
    version: str | None = None
    bootstrap: str | None = None
    circuit_established: bool | None = None
    socks_listeners: list[str] = field(default_factory=list)
    problem: str | None = None


def check_proxy(
    proxy_url: str,
    *,
    control_port: int | None = None,
    control_host: str | None = None,
    control_password: str | None = None,
    control_cookie_path: str | os.PathLike[str] | None = None,
    target_url: str | None = None,
    timeout_s: float = CHECK_TIMEOUT_S,
) -> ProxyReport:
    """Inspect the SOCKS5 proxy at ``proxy_url`` and report what it is.

    Steps, each bounded by ``timeout_s``:

    1. TCP connect and SOCKS5 greeting (and the username/password
       sub-negotiation when the URL has credentials), timed;
    2. if ``control_port`` is given, ask Tor's control port (with stem;
       password, cookie file, or whatever PROTOCOLINFO allows) for its
       version, bootstrap phase, circuit state and SOCKS listeners;
    3. if the proxy is on a loopback address, send it one plain HTTP GET:
       Tor's SocksPort answers ``501 Tor is not an HTTP Proxy``;
    4. if ``target_url`` is given, GET it through the proxy (socks5h, fresh
       random SOCKS credentials unless the URL has some, no redirects) and
       time the answer's headers.

    Raises ProxyConfigError for a malformed URL, ProxyUnreachableError if
    nothing accepts the TCP connection, ProxyRefusedError if something
    answers but not as a SOCKS5 proxy that accepts us, and TransportError
    if a control port is given but stem is not installed.

    >>> report = check_proxy("socks5h://127.0.0.1:9050",
    ...                      control_port=9051)  # doctest: +SKIP
    >>> print(report.describe())  # doctest: +SKIP
    """
    address = _parse_socks_url(proxy_url)
    connect_ms, handshake_ms, method = _socks_handshake(address, timeout_s)
    log.debug("proxy %s answered SOCKS5 (%s)", address.redacted(), method)

    problems: list[str] = []
    is_tor: bool | None = None
    evidence: str | None = None
    control: _ControlFindings | None = None
    control_label: str | None = None
    if control_port is not None:
        host = control_host or address.host
        control_label = _host_port(host, control_port)
        control = _inspect_control_port(
            host,
            control_port,
            control_password,
            control_cookie_path,
            timeout_s,
        )
        if control.problem is not None:
            problems.append(control.problem)
        elif _listens_on(control.socks_listeners, address):
            is_tor = True
            evidence = f"control port {control_label} lists this SocksPort"
        else:
            problems.append(
                f"the Tor at control port {control_label} does not list "
                f"{_host_port(address.host, address.port)} among its "
                f"SocksPorts {control.socks_listeners}"
            )

    if is_tor is None and _is_loopback(address.host):
        answer = _http_probe(address, timeout_s)
        is_tor = answer.startswith(TOR_HTTP_ANSWER)
        evidence = (
            "its SOCKS port answers HTTP with 'Tor is not an HTTP Proxy'"
            if is_tor
            else "its SOCKS port does not answer HTTP as Tor does"
        )

    target_status = target_ms = target_error = None
    if target_url is not None:
        target_status, target_ms, target_error = _fetch_target(
            address, target_url, timeout_s
        )

    percent, summary = _parse_bootstrap(control.bootstrap if control else None)
    return ProxyReport(
        proxy=address.redacted(),
        reachable=True,
        socks_method=method,
        connect_ms=connect_ms,
        handshake_ms=handshake_ms,
        is_tor=is_tor,
        tor_evidence=evidence,
        tor_version=control.version if control else None,
        control_port=control_label,
        bootstrap_percent=percent,
        bootstrap_summary=summary,
        circuit_established=control.circuit_established if control else None,
        target_url=target_url,
        target_status=target_status,
        target_ms=target_ms,
        target_error=target_error,
        problems=tuple(problems),
    )


def _parse_socks_url(proxy_url: str) -> _SocksAddress:
    try:
        parts = urlsplit(proxy_url)
        port = parts.port
    except ValueError as exc:
        raise ProxyConfigError(f"malformed proxy URL: {exc}") from exc
    if parts.scheme not in ("socks5h", "socks5"):
        raise ProxyConfigError(
            f"proxy URL must start with socks5h:// (got {parts.scheme!r})"
        )
    if not parts.hostname or port is None:
        raise ProxyConfigError("proxy URL needs a host and a port")
    username = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password or "") if username is not None else None
    return _SocksAddress(
        parts.scheme, parts.hostname, port, username, password
    )


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _connect(address: _SocksAddress, timeout_s: float) -> socket.socket:
    try:
        return socket.create_connection(
            (address.host, address.port), timeout=timeout_s
        )
    except OSError as exc:
        raise ProxyUnreachableError(
            f"nothing answered at {_host_port(address.host, address.port)}"
            f": {exc.strerror or exc}"
        ) from exc


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _socks_handshake(
    address: _SocksAddress, timeout_s: float
) -> tuple[float, float, str]:
    """(connect ms, greeting round trip ms, method chosen)."""
    where = _host_port(address.host, address.port)
    started = time.perf_counter()
    sock = _connect(address, timeout_s)
    connected = time.perf_counter()
    with sock:
        methods = [SOCKS_NO_AUTH]
        if address.username is not None:
            methods = [SOCKS_USER_PASS, SOCKS_NO_AUTH]
        try:
            sock.sendall(bytes([SOCKS_VERSION, len(methods), *methods]))
            reply = _recv_exactly(sock, 2)
            answered = time.perf_counter()
            if len(reply) == 2 and reply[0] == SOCKS_VERSION:
                _finish_auth(sock, address, reply[1], where)
        except TimeoutError as exc:
            raise ProxyRefusedError(
                f"{where} accepted the connection but did not answer the "
                f"SOCKS5 greeting within {timeout_s:g} s"
            ) from exc
        except OSError as exc:
            raise ProxyRefusedError(
                f"{where} dropped the SOCKS5 greeting: {exc}"
            ) from exc
    if len(reply) != 2 or reply[0] != SOCKS_VERSION:
        raise ProxyRefusedError(
            f"{where} answered, but not as a SOCKS5 proxy ({reply!r})"
        )
    return (
        (connected - started) * 1000,
        (answered - connected) * 1000,
        SOCKS_METHOD_NAMES[reply[1]],
    )


def _finish_auth(
    sock: socket.socket, address: _SocksAddress, method: int, where: str
) -> None:
    if method == SOCKS_NO_ACCEPTABLE_METHOD:
        raise ProxyRefusedError(
            f"{where} refused every authentication method we offered"
            + ("" if address.username else " (it may want credentials)")
        )
    if method not in SOCKS_METHOD_NAMES:
        raise ProxyRefusedError(f"{where} chose unknown method {method}")
    if method != SOCKS_USER_PASS:
        return
    user = (address.username or "").encode()
    password = (address.password or "").encode()
    sock.sendall(
        bytes([USER_PASS_VERSION, len(user)])
        + user
        + bytes([len(password)])
        + password
    )
    status = _recv_exactly(sock, 2)
    if len(status) != 2 or status[1] != 0:
        raise ProxyRefusedError(f"{where} refused our SOCKS credentials")


def _http_probe(address: _SocksAddress, timeout_s: float) -> bytes:
    """The first bytes the proxy answers to a plain HTTP GET ('' if none).

    Only called for loopback proxies: it is a diagnostic aimed at our own
    machine's Tor, not something to send to a remote service.
    """
    try:
        with _connect(address, timeout_s) as sock:
            sock.sendall(HTTP_PROBE)
            answer = b""
            while len(answer) < len(TOR_HTTP_ANSWER):
                chunk = sock.recv(MAX_PROBE_ANSWER_BYTES)
                if not chunk:
                    break
                answer += chunk
            return answer
    except (OSError, ProxyUnreachableError) as exc:
        log.debug("HTTP probe of the proxy got no answer: %s", exc)
        return b""


def _listens_on(listeners: list[str], address: _SocksAddress) -> bool:
    for listener in listeners:
        host, _, port = listener.strip('"').rpartition(":")
        host = host.strip("[]")
        if port != str(address.port):
            continue
        if host == address.host or (
            _is_loopback(host) and _is_loopback(address.host)
        ):
            return True
    return False


def _parse_bootstrap(phase: str | None) -> tuple[int | None, str | None]:
    if phase is None:
        return None, None
    match = _BOOTSTRAP_RE.search(phase)
    if match is None:
        return None, None
    tag, summary = match.group("tag"), match.group("summary")
    described = ": ".join(part for part in (tag, summary) if part)
    return int(match.group("percent")), described or None


def _inspect_control_port(
    host: str,
    port: int,
    password: str | None,
    cookie_path: str | os.PathLike[str] | None,
    timeout_s: float,
) -> _ControlFindings:
    """Ask Tor's control port; failures become ``problem``, not errors."""
    try:
        import stem.control  # noqa: F401  (only to test it is installed)
    except ImportError as exc:
        raise TransportError(
            "checking Tor's control port needs stem: "
            "pip install 'secure-store[tor]'"
        ) from exc
    # stem sets its logger to TRACE when imported, so any application with
    # a root handler would print every control-port line; keep warnings.
    logging.getLogger("stem").setLevel(logging.WARNING)
    where = _host_port(host, port)
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as exc:
        return _ControlFindings(
            problem=f"control port {where} unreachable: {exc.strerror or exc}"
        )

    # stem has no read timeout: a port that accepts and never answers
    # would block forever, so the exchange runs in a thread we can abandon
    # (closing the controller unblocks it).
    findings = _ControlFindings()
    holder: dict[str, Any] = {}
    worker = threading.Thread(
        target=_query_control_port,
        args=(host, port, password, cookie_path, findings, holder),
        name="tor-control-check",
        daemon=True,
    )
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        controller = holder.get("controller")
        if controller is not None:
            with contextlib.suppress(Exception):
                controller.close()
        return _ControlFindings(
            problem=f"control port {where} did not answer within "
            f"{timeout_s:g} s"
        )
    return findings


def _query_control_port(
    host: str,
    port: int,
    password: str | None,
    cookie_path: str | os.PathLike[str] | None,
    findings: _ControlFindings,
    holder: dict[str, Any],
) -> None:
    import stem
    import stem.connection
    import stem.control

    where = _host_port(host, port)
    try:
        controller = stem.control.Controller.from_port(address=host, port=port)
    except stem.SocketError as exc:
        findings.problem = f"control port {where} unreachable: {exc}"
        return
    holder["controller"] = controller
    with controller:
        try:
            if cookie_path is not None:
                stem.connection.authenticate_cookie(
                    controller, os.fspath(cookie_path)
                )
            else:
                controller.authenticate(password=password)
            findings.version = str(controller.get_version()).split()[0]
            findings.bootstrap = controller.get_info("status/bootstrap-phase")
            findings.circuit_established = (
                controller.get_info("status/circuit-established") == "1"
            )
            findings.socks_listeners = controller.get_info(
                "net/listeners/socks", ""
            ).split()
        except stem.connection.AuthenticationFailure as exc:
            findings.problem = f"control port {where} refused us: {exc}"
        except (stem.ControllerError, stem.SocketError, OSError) as exc:
            findings.problem = f"control port {where} failed: {exc}"


def _fetch_target(
    address: _SocksAddress, target_url: str, timeout_s: float
) -> tuple[int | None, float | None, str | None]:
    """(status, ms to the answer's headers, error) of a GET through the
    proxy; the body is not read."""
    if address.username is not None:
        username, password = address.username, address.password or ""
    else:
        # Fresh credentials: Tor's IsolateSOCKSAuth puts this check on a
        # circuit of its own, shared with no report.
        username = secrets.token_hex(ISOLATION_TOKEN_BYTES)
        password = secrets.token_hex(ISOLATION_TOKEN_BYTES)
    proxy = address.requests_url(username, password)
    with requests.Session() as session:
        session.trust_env = False
        started = time.perf_counter()
        try:
            with session.get(
                target_url,
                proxies={"http": proxy, "https": proxy},
                timeout=(timeout_s, timeout_s),
                allow_redirects=False,
                stream=True,
            ) as answer:
                elapsed_ms = (time.perf_counter() - started) * 1000
                return answer.status_code, elapsed_ms, None
        except requests.RequestException as exc:
            message = f"{type(exc).__name__}: {exc}"
            for secret in (username, password):
                if secret:  # never show the caller's credentials
                    message = message.replace(secret, "***")
            return None, None, message
