"""Posting sealed reports through the SOCKS proxy within one deadline.

A :class:`Sender` owns one ``requests.Session`` that can only talk through
a SOCKS5 proxy: environment proxy settings, ``.netrc`` and cookies are
ignored, redirects are not followed, and a request without a proxy is
refused before any socket opens. Connection failures and answers 429,
502, 503 and 504 are retried by urllib3's ``Retry`` with exponential
backoff and jitter, honouring ``Retry-After``; so are resets and timeouts
after the request went out, because the gateway forwards each report id
at most once and answers a repeat with success.

One deadline bounds the whole send. Each new connection's connect timeout
(which also bounds the SOCKS handshake) is cut to the time left, backoff
sleeps are cut too, a wait the server asks for that would pass the
deadline ends the send at once, and a watchdog shuts the sockets down at
the deadline, which stops a server that trickles bytes slower than any
read timeout would notice.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import math
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.cookiejar import DefaultCookiePolicy
from typing import Any, TypeVar
from urllib.parse import urlsplit

import requests
import socks
from requests.adapters import HTTPAdapter
from requests.cookies import RequestsCookieJar
from requests.utils import get_auth_from_url, select_proxy
from urllib3.contrib.socks import (
    SOCKSConnection,
    SOCKSHTTPConnectionPool,
    SOCKSHTTPSConnection,
    SOCKSHTTPSConnectionPool,
    SOCKSProxyManager,
)
from urllib3.exceptions import (
    ConnectTimeoutError,
    InvalidHeader,
    MaxRetryError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    ResponseError,
)
from urllib3.response import BaseHTTPResponse
from urllib3.util.retry import Retry

from secure_store.errors import (
    ProxyConfigError,
    ProxyRefusedError,
    ProxyUnreachableError,
    RejectedError,
    SecureStoreError,
    SendError,
    SendTimeoutError,
    ServerFailureError,
    ServerUnreachableError,
)
from secure_store.transport.proxy import ProxyConfig, check_server_url

__all__ = [
    "CONTENT_TYPE",
    "DEFAULT_MAX_ATTEMPTS",
    "RETRY_STATUSES",
    "Sender",
]

logger = logging.getLogger(__name__)

#: The body is an opaque envelope.
CONTENT_TYPE = "application/octet-stream"

# Every client sends the same headers, so headers tell nothing about which
# client or library version is reporting.
_HEADERS = {
    "User-Agent": "secure-store",
    "Accept": "*/*",
    "Accept-Encoding": "identity",
    "Content-Type": CONTENT_TYPE,
}

#: Tries per send, the first included.
DEFAULT_MAX_ATTEMPTS = 3

#: Backoff before the n-th retry: factor * 2 ** (n - 1), the first at once.
DEFAULT_BACKOFF_FACTOR_S = 0.5

#: Up to this much random extra backoff, so clients do not retry in step.
DEFAULT_BACKOFF_JITTER_S = 0.5

#: No single backoff sleep is longer than this.
DEFAULT_BACKOFF_MAX_S = 30.0

#: Answers retried within one send.
RETRY_STATUSES = frozenset({429, 502, 503, 504})

#: How much of a failure answer is read to explain it in the error.
MAX_ERROR_BODY_BYTES = 512

# How much of that answer the error message quotes.
_ERROR_DETAIL_CHARS = 200

# SOCKS5 reply code 0x02: the proxy's rules forbid the connection.
_SOCKS_NOT_ALLOWED = "0x02"


# -- one send's deadline -----------------------------------------------------


@dataclass
class _SendState:
    """The deadline and live connections of the send on this thread."""

    deadline: float
    budget_s: float
    attempts: int = 0
    expired: bool = False
    gave_up_waiting_s: float | None = None
    # Duplicates of every socket this send opened. A duplicate refers to
    # the same connection, so shutting it down stops whoever reads the
    # original, also once TLS has wrapped (and detached) that original.
    handles: list[socket.socket] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def register(self, sock: socket.socket) -> None:
        handle = socket.fromfd(sock.fileno(), sock.family, sock.type)
        with self.lock:
            self.handles.append(handle)
            if self.expired:
                _shut(handle)

    def expire(self) -> None:
        """Watchdog: the deadline passed; stop every blocked socket."""
        with self.lock:
            self.expired = True
            for handle in self.handles:
                _shut(handle)

    def release(self) -> None:
        """Close the duplicates; the connections close with their owners."""
        with self.lock:
            for handle in self.handles:
                handle.close()
            self.handles.clear()


def _shut(handle: socket.socket) -> None:
    with contextlib.suppress(OSError):
        handle.shutdown(socket.SHUT_RDWR)


_local = threading.local()

_E = TypeVar("_E", bound=BaseException)


def _state() -> _SendState | None:
    state: _SendState | None = getattr(_local, "state", None)
    return state


# -- urllib3 and requests plumbing -------------------------------------------


class _DeadlineSOCKSConnection(SOCKSConnection):
    """A SOCKS connection that the send's deadline bounds from the start.

    Unlike urllib3's, it hands the socket to the watchdog before the SOCKS
    handshake, so a proxy that answers the handshake a byte at a time is
    stopped at the deadline too, and its connect timeout is cut to the
    time left.
    """

    def _new_conn(self) -> socket.socket:
        state = _state()
        if state is None:
            plain: socket.socket = super()._new_conn()
            return plain
        remaining = state.remaining()
        if state.expired or remaining <= 0:
            raise ConnectTimeoutError(
                self, "the send's deadline passed before connecting"
            )
        timeout = self.timeout
        if not isinstance(timeout, (int, float)) or timeout > remaining:
            self.timeout = timeout = remaining
        try:
            return self._connect_through_proxy(state, timeout)
        except TimeoutError as exc:
            raise ConnectTimeoutError(
                self, f"connecting via the proxy timed out after {timeout} s"
            ) from exc
        except socks.ProxyError as exc:
            if isinstance(exc.socket_err, TimeoutError):
                raise ConnectTimeoutError(
                    self, f"the SOCKS handshake timed out after {timeout} s"
                ) from exc
            raise NewConnectionError(
                self, f"failed to connect via the proxy: {exc}"
            ) from exc
        except OSError as exc:
            raise NewConnectionError(
                self, f"failed to connect via the proxy: {exc}"
            ) from exc

    def _connect_through_proxy(
        self, state: _SendState, timeout: float
    ) -> socket.socket:
        options = self._socks_options
        proxy_host = str(options["proxy_host"]).strip("[]")
        error: OSError | None = None
        for family, kind, proto, _, _ in socket.getaddrinfo(
            proxy_host, options["proxy_port"], 0, socket.SOCK_STREAM
        ):
            sock = socks.socksocket(family, kind, proto)
            state.register(sock)
            try:
                for option in self.socket_options or ():
                    sock.setsockopt(*option)
                sock.settimeout(timeout)
                sock.set_proxy(
                    options["socks_version"],
                    proxy_host,
                    options["proxy_port"],
                    options["rdns"],
                    options["username"],
                    options["password"],
                )
                sock.connect((self.host.strip("[]"), self.port))
            except OSError as exc:
                error = exc
                sock.close()
                continue
            connected: socket.socket = sock
            return connected
        raise error or OSError(f"no address for the proxy {proxy_host}")


class _DeadlineSOCKSHTTPSConnection(
    _DeadlineSOCKSConnection, SOCKSHTTPSConnection
):
    pass


class _CountingPoolMixin:
    def urlopen(self, *args: Any, **kwargs: Any) -> BaseHTTPResponse:
        # urlopen calls itself once per retry, so this counts attempts.
        state = _state()
        if state is not None:
            state.attempts += 1
        response: BaseHTTPResponse = super().urlopen(  # type: ignore[misc]
            *args, **kwargs
        )
        return response


class _DeadlineSOCKSPool(_CountingPoolMixin, SOCKSHTTPConnectionPool):
    ConnectionCls = _DeadlineSOCKSConnection


class _DeadlineSOCKSHTTPSPool(_CountingPoolMixin, SOCKSHTTPSConnectionPool):
    ConnectionCls = _DeadlineSOCKSHTTPSConnection


class _DeadlineSOCKSProxyManager(SOCKSProxyManager):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The base class sets this on the instance, so a class attribute
        # in a subclass would be shadowed.
        self.pool_classes_by_scheme = {
            "http": _DeadlineSOCKSPool,
            "https": _DeadlineSOCKSHTTPSPool,
        }


class _DeadlineRetry(Retry):
    """urllib3 Retry that never waits or retries past the send's deadline."""

    # 413 means too large: waiting will not make the report smaller.
    RETRY_AFTER_STATUS_CODES = frozenset({429, 503})

    def increment(
        self,
        method: str | None = None,
        url: str | None = None,
        response: BaseHTTPResponse | None = None,
        error: Exception | None = None,
        _pool: Any = None,
        _stacktrace: Any = None,
    ) -> _DeadlineRetry:
        retry = super().increment(
            method, url, response, error, _pool, _stacktrace
        )
        state = _state()
        if state is None:
            return retry
        wait = retry._least_wait(response)
        if state.expired or state.remaining() <= wait:
            state.gave_up_waiting_s = wait
            reason = error or ResponseError(
                f"no time left to wait {wait:.1f} s and retry"
            )
            raise MaxRetryError(_pool, url, reason) from reason
        return retry

    def _retry_after(self, response: BaseHTTPResponse | None) -> float | None:
        if response is None or not self.respect_retry_after_header:
            return None
        try:
            return self.get_retry_after(response)
        except InvalidHeader:
            return None

    def _least_wait(self, response: BaseHTTPResponse | None) -> float:
        retry_after = self._retry_after(response)
        if retry_after:
            return retry_after
        return self.new(backoff_jitter=0.0).get_backoff_time()

    def sleep(self, response: BaseHTTPResponse | None = None) -> None:
        wait = self._retry_after(response) or self.get_backoff_time()
        state = _state()
        if state is not None:
            wait = min(wait, max(0.0, state.remaining()))
        if wait > 0:
            time.sleep(wait)


class _SocksOnlyAdapter(HTTPAdapter):
    """An adapter that connects only through a SOCKS5 proxy."""

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        if proxy in self.proxy_manager:
            return self.proxy_manager[proxy]
        if not proxy.lower().startswith(("socks5h://", "socks5://")):
            raise ProxyConfigError(
                "refusing a non-SOCKS5 proxy inside the sender"
            )
        username, password = get_auth_from_url(proxy)
        manager = _DeadlineSOCKSProxyManager(
            proxy,
            username=username or None,
            password=password or None,
            num_pools=self._pool_connections,  # type: ignore[attr-defined]
            maxsize=self._pool_maxsize,  # type: ignore[attr-defined]
            block=self._pool_block,  # type: ignore[attr-defined]
            **proxy_kwargs,
        )
        self.proxy_manager[proxy] = manager
        return manager

    def get_connection_with_tls_context(
        self,
        request: requests.PreparedRequest,
        verify: Any,
        proxies: Mapping[str, str] | None = None,
        cert: Any = None,
    ) -> Any:
        proxy = select_proxy(request.url or "", proxies or {})
        if not proxy or not proxy.lower().startswith(("socks5h:", "socks5:")):
            # Fail closed: without the proxy this would be a direct
            # connection revealing the device's address.
            raise ProxyConfigError(
                "refusing to connect without the SOCKS proxy"
            )
        return super().get_connection_with_tls_context(
            request, verify, proxies, cert
        )

    def drop_proxy(self, proxy: str) -> None:
        """Close and forget the pools of one isolated proxy URL."""
        manager = self.proxy_manager.pop(proxy, None)
        if manager is not None:
            manager.clear()


# -- the sender --------------------------------------------------------------


class Sender:
    """Posts envelopes to a gateway through one SOCKS5 proxy.

    ``deadline_s`` bounds each :meth:`post` as a whole; by default it is
    the post's ``timeout_s`` times ``max_attempts``. Sends are serialised:
    a post waits for one in progress, and that wait counts against its
    own deadline.
    """

    def __init__(
        self,
        proxy: ProxyConfig,
        *,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        deadline_s: float | None = None,
        backoff_factor_s: float = DEFAULT_BACKOFF_FACTOR_S,
        backoff_jitter_s: float = DEFAULT_BACKOFF_JITTER_S,
        backoff_max_s: float = DEFAULT_BACKOFF_MAX_S,
        allow_insecure_http: bool = False,
        ca_bundle: str | None = None,
    ) -> None:
        if not isinstance(proxy, ProxyConfig):
            raise ProxyConfigError(
                "Sender needs a ProxyConfig from parse_proxy_url(); it "
                "never sends without a proxy"
            )
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, not {max_attempts}")
        if deadline_s is not None and not _positive(deadline_s):
            raise ValueError(f"deadline_s must be > 0, not {deadline_s!r}")
        self.proxy = proxy
        self.max_attempts = max_attempts
        self.deadline_s = deadline_s
        self.allow_insecure_http = allow_insecure_http
        self._verify: bool | str = ca_bundle or True
        self._lock = threading.Lock()

        retries = max_attempts - 1
        self._retry = _DeadlineRetry(
            total=retries,
            connect=retries,
            read=retries,
            status=retries,
            other=0,
            redirect=0,
            allowed_methods=frozenset({"POST"}),
            status_forcelist=RETRY_STATUSES,
            backoff_factor=backoff_factor_s,
            backoff_jitter=backoff_jitter_s,
            backoff_max=backoff_max_s,
            respect_retry_after_header=True,
            raise_on_status=False,
            raise_on_redirect=False,
        )
        self._adapter = _SocksOnlyAdapter(max_retries=self._retry)
        self._session = requests.Session()
        self._session.trust_env = False
        self._session.headers.clear()
        self._session.headers.update(_HEADERS)
        # A cookie would link one send to the next; accept none.
        self._session.cookies = RequestsCookieJar(
            policy=DefaultCookiePolicy(allowed_domains=[])
        )
        for prefix in list(self._session.adapters):
            del self._session.adapters[prefix]
        self._session.mount("http://", self._adapter)
        self._session.mount("https://", self._adapter)

    def __enter__(self) -> Sender:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every connection; the sender can still be used after."""
        self._session.close()

    def post(self, url: str, body: bytes, timeout_s: float) -> None:
        """POST ``body`` to ``url`` through the proxy.

        Returns on a 2xx answer. Otherwise raises a SendError subclass:
        ProxyUnreachableError, ProxyRefusedError, ServerUnreachableError,
        SendTimeoutError, RejectedError (4xx and 3xx, not retried) or
        ServerFailureError (5xx or 429, also after retries).
        ``timeout_s`` is the connect and read timeout of each attempt.
        """
        url = check_server_url(
            url, allow_insecure_http=self.allow_insecure_http
        )
        if not _positive(timeout_s):
            raise ValueError(f"timeout_s must be > 0, not {timeout_s!r}")
        budget_s = self.deadline_s or timeout_s * self.max_attempts
        state = _SendState(time.monotonic() + budget_s, budget_s)
        host = urlsplit(url).hostname or "?"

        if not self._lock.acquire(timeout=budget_s):
            raise SendTimeoutError(
                f"another send held the sender for the whole {budget_s:.1f}"
                " s deadline"
            )
        try:
            with _Watchdog(state):
                self._post(url, host, body, timeout_s, state)
        finally:
            self._session.cookies.clear()
            self._lock.release()

    def _post(
        self,
        url: str,
        host: str,
        body: bytes,
        timeout_s: float,
        state: _SendState,
    ) -> None:
        proxy_url = self.proxy.isolated_url()
        proxies = {"http": proxy_url, "https": proxy_url}
        started = time.monotonic()
        try:
            response = self._session.post(
                url,
                data=body,
                proxies=proxies,
                timeout=(timeout_s, timeout_s),
                allow_redirects=False,
                stream=True,
                verify=self._verify,
            )
        except requests.RequestException as exc:
            raise self._translate(exc, host, timeout_s, state) from exc
        except SecureStoreError:
            raise
        except Exception as exc:
            # Anything else urllib3 or PySocks raise still means "not
            # delivered"; callers handle SendError, not library errors.
            raise self._translate(exc, host, timeout_s, state) from exc
        finally:
            self._adapter.drop_proxy(proxy_url)

        if state.expired:
            # The watchdog cut the connection: whatever was parsed of the
            # answer (headers cut short read as complete) is not one.
            response.close()
            raise SendTimeoutError(
                f"sending to {host} did not finish within its "
                f"{state.budget_s:.1f} s deadline ({_tries(state)})"
            )
        try:
            status = response.status_code
            if 200 <= status < 300:
                logger.debug(
                    "sent %d bytes to %s via %s: HTTP %d after %d "
                    "attempt(s) in %.3f s",
                    len(body),
                    host,
                    self.proxy.redacted(),
                    status,
                    state.attempts,
                    time.monotonic() - started,
                )
                return
            detail = _read_detail(response)
        finally:
            response.close()
        raise _http_error(status, response.reason, detail, state)

    def _translate(
        self,
        exc: BaseException,
        host: str,
        timeout_s: float,
        state: _SendState,
    ) -> SendError:
        """Say in our words which part of the path failed."""
        tries = _tries(state)
        proxy = self.proxy.redacted()
        if state.expired:
            return SendTimeoutError(
                f"sending to {host} did not finish within its "
                f"{state.budget_s:.1f} s deadline ({tries})"
            )
        chain = list(_causes(exc))
        # The specific SOCKS errors hide inside a general one; look for
        # them first, in order of how much they explain.
        unreachable = _first(chain, socks.ProxyConnectionError)
        if unreachable is not None:
            return ProxyUnreachableError(
                f"cannot reach the proxy {proxy}: "
                f"{_socket_reason(unreachable)} ({tries})"
            )
        if _first(chain, socks.SOCKS5AuthError) is not None:
            return ProxyRefusedError(
                f"the proxy {proxy} refused our SOCKS login ({tries})"
            )
        reply = _first(chain, socks.SOCKS5Error)
        if reply is not None:
            if str(reply).startswith(_SOCKS_NOT_ALLOWED):
                return ProxyRefusedError(
                    f"the proxy {proxy} refused to connect to {host}: "
                    f"{reply} ({tries})"
                )
            return ServerUnreachableError(
                f"the proxy {proxy} could not reach {host}: {reply} ({tries})"
            )
        general = _first(chain, socks.GeneralProxyError)
        if general is not None:
            if isinstance(general.socket_err, TimeoutError):
                return SendTimeoutError(
                    f"the proxy {proxy} accepted the connection but did "
                    "not finish the SOCKS handshake within "
                    f"{timeout_s:.1f} s ({tries})"
                )
            return ProxyRefusedError(
                f"the proxy {proxy} broke off the SOCKS handshake "
                f"({general}); it may want a login we lack ({tries})"
            )
        if any(isinstance(c, requests.exceptions.SSLError) for c in chain):
            return ServerUnreachableError(
                f"TLS with {host} failed: {_last_words(chain)} ({tries})"
            )
        if any(
            isinstance(c, (ReadTimeoutError, requests.ReadTimeout))
            for c in chain
        ):
            return SendTimeoutError(
                f"{host} did not answer within {timeout_s:.1f} s ({tries})"
            )
        if any(
            isinstance(c, (ConnectTimeoutError, TimeoutError))
            and not isinstance(c, socks.ProxyError)
            for c in chain
        ) and not any(isinstance(c, ConnectionRefusedError) for c in chain):
            return SendTimeoutError(
                f"connecting to {host} via {proxy} timed out after "
                f"{timeout_s:.1f} s ({tries})"
            )
        if any(
            isinstance(
                c,
                (
                    ProtocolError,
                    http.client.HTTPException,
                    ConnectionError,
                    requests.ConnectionError,
                ),
            )
            for c in chain
        ):
            return ServerUnreachableError(
                f"the connection to {host} via {proxy} was lost before an "
                f"answer: {_last_words(chain)} ({tries})"
            )
        return SendError(f"sending to {host} failed: {exc} ({tries})")


class _Watchdog:
    """Installs a send's state on this thread and expires it on time."""

    def __init__(self, state: _SendState) -> None:
        self._state = state
        self._timer = threading.Timer(
            max(0.0, state.remaining()), state.expire
        )
        self._timer.daemon = True

    def __enter__(self) -> _SendState:
        _local.state = self._state
        self._timer.start()
        return self._state

    def __exit__(self, *exc_info: object) -> None:
        self._timer.cancel()
        _local.state = None
        self._state.release()


def _positive(value: float) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


def _tries(state: _SendState) -> str:
    count = max(1, state.attempts)
    return f"{count} attempt" + ("" if count == 1 else "s")


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """Walk an exception, its causes, contexts and wrapped reasons."""
    seen: set[int] = set()
    stack: list[BaseException] = [exc]
    while stack:
        current = stack.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        linked: list[object] = [
            getattr(current, "reason", None),
            getattr(current, "socket_err", None),
            current.__cause__,
            current.__context__,
            *current.args,
        ]
        stack.extend(e for e in linked if isinstance(e, BaseException))


def _first(chain: list[BaseException], kind: type[_E]) -> _E | None:
    for cause in chain:
        if isinstance(cause, kind):
            return cause
    return None


def _socket_reason(error: socks.ProxyError) -> str:
    cause = error.socket_err
    if isinstance(cause, ConnectionRefusedError):
        return "connection refused (is it running?)"
    if isinstance(cause, TimeoutError):
        return "connecting timed out"
    return str(cause or error)


def _last_words(chain: list[BaseException]) -> str:
    """The innermost error's own message, short."""
    innermost = chain[-1]
    text = str(innermost) or type(innermost).__name__
    return text[:_ERROR_DETAIL_CHARS]


def _read_detail(response: requests.Response) -> str:
    """The start of a failure answer's body, as one printable line."""
    try:
        raw = response.raw.read(MAX_ERROR_BODY_BYTES)
    except Exception:  # the body only makes the message nicer
        return ""
    text = bytes(raw or b"").decode("utf-8", errors="replace")
    printable = "".join(c if c.isprintable() else " " for c in text)
    return " ".join(printable.split())[:_ERROR_DETAIL_CHARS]


def _http_error(
    status: int, reason: str | None, detail: str, state: _SendState
) -> SendError:
    message = f"HTTP Error {status}: {reason or http_reason(status)}"
    if detail:
        message += f": {detail}"
    if state.gave_up_waiting_s is not None:
        message += (
            f"; retrying after {state.gave_up_waiting_s:.1f} s would pass "
            "the deadline"
        )
    message += f" ({_tries(state)})"
    if 300 <= status < 400:
        return RejectedError(message + "; redirects are not followed", status)
    if status == 429 or status >= 500:
        return ServerFailureError(message, status)
    return RejectedError(message, status)


def http_reason(status: int) -> str:
    """The standard reason phrase of an HTTP status."""
    try:
        return http.client.responses[status]
    except KeyError:
        return "Unknown"
