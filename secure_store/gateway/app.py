"""The gateway's WSGI app: open envelopes, check, de-duplicate, forward.

Each report id is forwarded to the CIMP at most once. A request takes a
lease on its id in the replay cache before forwarding; the id is marked
forwarded when the CIMP accepts the report and also when the outcome is
ambiguous: once the request may have reached the CIMP (a read timeout,
the connection reset or closed while awaiting the answer, a malformed
answer), a second forward could count the report twice, so the client
is told to retry (503/502 with Retry-After), its retry is answered 204
as a repeat, and the request's log line says ``outcome=ambiguous``. The
lease is released, so a retry forwards again, only when the CIMP
certainly did not get the request (connection refused, connect timeout,
name not resolved) or answered with an error status.
"""

from __future__ import annotations

import errno
import http.cookiejar
import json
import logging
import math
import os
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests
import urllib3.exceptions

from secure_store.errors import (
    EnvelopeError,
    GatewayError,
    ReplayCacheError,
    SecureStoreError,
)
from secure_store.gateway.replay import (
    Claim,
    ClaimStatus,
    ReplayCache,
    open_replay_cache,
)
from secure_store.transport.envelope import (
    REPORT_ID_BYTES,
    GatewayKey,
    open_envelope,
    parse_header,
)

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment
    from waitress.server import BaseWSGIServer, MultiSocketServer

logger = logging.getLogger(__name__)

# Real CIMP reports are a few KiB; a MiB leaves room for months of data
# while keeping one request's memory small.
MAX_BODY_BYTES = 1 << 20

# The client's own deadline is of the same order; waiting longer for the
# CIMP would only make the client give up first.
UPSTREAM_TIMEOUT_S = 10.0

# Sent with every 502/503 so clients spread their retries.
RETRY_AFTER_S = 30

# waitress worker threads per process: requests mostly wait on upstream.
DEFAULT_THREADS = 8

MAX_PORT = 65_535

KEY_CONFIG_PATH = "/.well-known/secure-store-key-config"

UPSTREAM_CONTENT_TYPE = "application/json; charset=UTF-8"

# A lease outlives the upstream timeout by this much, so a slow but
# successful forward is never overtaken by a second one.
LEASE_MARGIN_S = 5.0

# How often a request waiting on another request's lease asks again.
IN_FLIGHT_POLL_S = 0.02

# Upstream's answer body is read (to keep the connection reusable) up to
# this much and never logged or passed on.
MAX_UPSTREAM_ANSWER_BYTES = 64 * 1024

# The outcome of a forward that may or may not have reached upstream.
AMBIGUOUS = "ambiguous"

# Outcomes after which the report id counts as forwarded.
_SETTLED_OUTCOMES = frozenset({"forwarded", AMBIGUOUS})

# urllib3 errors raised before a byte of the request was sent.
_NOT_SENT_ERRORS = (
    urllib3.exceptions.NewConnectionError,
    urllib3.exceptions.ConnectTimeoutError,
)

# requests errors raised while preparing the request, before connecting.
_PREPARE_ERRORS = (
    requests.exceptions.InvalidURL,
    requests.exceptions.InvalidSchema,
    requests.exceptions.MissingSchema,
    requests.exceptions.InvalidHeader,
)

_READ_CHUNK_BYTES = 64 * 1024
_SCHEMA_RESOURCE = "cimp.schema.json"
_JSON = "application/json"


@dataclass
class _Response:
    status: int
    outcome: str
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class _RequestLog:
    """What the per-request log line says; never payload or address."""

    method: str = "-"
    outcome: str = "-"
    size: int = 0
    key_id: int | None = None


_REASONS = {
    200: "OK",
    204: "No Content",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Content Too Large",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


def _json_response(
    status: int,
    outcome: str,
    message: str,
    *,
    retry: bool,
    retry_after_s: int | None = None,
    **extra: Any,
) -> _Response:
    document = {"error": outcome, "message": message, "retry": retry}
    document.update(extra)
    headers = [("Content-Type", _JSON), ("Cache-Control", "no-store")]
    if retry_after_s is not None:
        headers.append(("Retry-After", str(retry_after_s)))
    body = json.dumps(document, separators=(",", ":")).encode()
    return _Response(status, outcome, body, headers)


def _do_not_retry(outcome: str, message: str, **extra: Any) -> _Response:
    return _json_response(
        400,
        outcome,
        f"{message}; do not retry this request unchanged",
        retry=False,
        **extra,
    )


@cache
def load_cimp_schema() -> dict[str, Any]:
    """Return the JSON schema of a CIMP report body shipped with the gateway.

    >>> load_cimp_schema()["required"]
    ['idsite', 'visits', 'events']
    """
    text = (
        resources.files("secure_store.gateway")
        .joinpath(_SCHEMA_RESOURCE)
        .read_text(encoding="utf-8")
    )
    schema: dict[str, Any] = json.loads(text)
    return schema


def _inline_local_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """Return ``schema`` with each ``#/$defs/...`` reference replaced by
    the definition it names (the shipped schema has no cycles)."""
    definitions = schema.get("$defs", {})
    prefix = "#/$defs/"

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            reference = node.get("$ref")
            if isinstance(reference, str) and reference.startswith(prefix):
                return inline(definitions[reference[len(prefix) :]])
            return {
                name: inline(value)
                for name, value in node.items()
                if name != "$defs"
            }
        if isinstance(node, list):
            return [inline(item) for item in node]
        return node

    inlined: dict[str, Any] = inline(schema)
    return inlined


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Two parsers may pick different values for a repeated key; refusing
    # them means upstream sees exactly what was checked.
    document = dict(pairs)
    if len(document) != len(pairs):
        raise ValueError("repeated key in a JSON object")
    return document


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    # 1e999 parses to infinity, which no CIMP report contains.
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("a number is too large")
    return value


def _size_bucket(size: int) -> int:
    """Round ``size`` up to a power of two of at least 1 KiB for the log."""
    if size <= 0:
        return 0
    return max(1024, 1 << (size - 1).bit_length())


class GatewayApp:
    """The WSGI callable; build it with :func:`create_app`."""

    def __init__(
        self,
        keys: Iterable[GatewayKey],
        upstream_url: str,
        *,
        replay_cache: ReplayCache,
        max_body_bytes: int = MAX_BODY_BYTES,
        upstream_timeout_s: float = UPSTREAM_TIMEOUT_S,
        retry_after_s: int = RETRY_AFTER_S,
        in_flight_wait_s: float | None = None,
    ) -> None:
        from jsonschema import Draft202012Validator

        self.keys = _index_keys(keys)
        self.upstream_url = _check_upstream_url(upstream_url)
        _check_limits(max_body_bytes, upstream_timeout_s)
        self.max_body_bytes = max_body_bytes
        self.upstream_timeout_s = upstream_timeout_s
        self.retry_after_s = retry_after_s
        self.replay_cache = replay_cache
        self.lease_s = 2 * upstream_timeout_s + LEASE_MARGIN_S
        self.in_flight_wait_s = (
            upstream_timeout_s + 1.0
            if in_flight_wait_s is None
            else in_flight_wait_s
        )
        # jsonschema resolves "$ref" on every use; validating against the
        # same schema with its local references inlined takes half as long.
        self._validator = Draft202012Validator(
            _inline_local_refs(load_cimp_schema())
        )
        self._key_config_body = self._build_key_config_body()
        self._sessions = threading.local()

    # -- WSGI ---------------------------------------------------------------

    def __call__(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes]:
        """Answer one request; never raises and never shows a traceback."""
        started = time.perf_counter()
        log = _RequestLog()
        try:
            response = self._route(environ, log)
        except Exception as exc:
            # Only the exception's type and where it happened: messages
            # of library exceptions may quote the payload.
            logger.error(
                "internal error %s at\n%s",
                type(exc).__name__,
                "".join(traceback.format_tb(exc.__traceback__)),
            )
            response = _json_response(
                500, "internal", "internal error", retry=True
            )
        log.outcome = response.outcome
        headers = [
            *response.headers,
            ("Content-Length", str(len(response.body))),
        ]
        start_response(
            f"{response.status} {_REASONS.get(response.status, 'Error')}",
            headers,
        )
        _log_request(log, response.status, started)
        return [response.body]

    def _route(self, environ: WSGIEnvironment, log: _RequestLog) -> _Response:
        method = str(environ.get("REQUEST_METHOD", ""))
        log.method = method if method in ("GET", "HEAD", "POST") else "other"
        if environ.get("PATH_INFO", "") == KEY_CONFIG_PATH:
            if method in ("GET", "HEAD"):
                return self._key_config_response()
            return _method_not_allowed("GET, HEAD")
        if method != "POST":
            return _method_not_allowed("POST")
        return self._handle_report(environ, log)

    # -- key configs --------------------------------------------------------

    def _build_key_config_body(self) -> bytes:
        configs = [
            {"key_id": key_id, "config": key.key_config().to_base64()}
            for key_id, key in sorted(self.keys.items())
        ]
        return json.dumps({"key_configs": configs}, indent=1).encode()

    def _key_config_response(self) -> _Response:
        # For HEAD the server drops the body but keeps Content-Length.
        headers = [("Content-Type", _JSON), ("Cache-Control", "no-cache")]
        return _Response(200, "key-config", self._key_config_body, headers)

    # -- reports ------------------------------------------------------------

    def _handle_report(
        self, environ: WSGIEnvironment, log: _RequestLog
    ) -> _Response:
        body = self._read_body(environ, log)
        if isinstance(body, _Response):
            return body

        opened = self._open(body, log)
        if isinstance(opened, _Response):
            return opened
        report_id, payload = opened

        problem = self._check_payload(payload)
        if problem is not None:
            return problem

        return self._forward_once(report_id, payload)

    def _read_body(
        self, environ: WSGIEnvironment, log: _RequestLog
    ) -> bytes | _Response:
        declared = environ.get("CONTENT_LENGTH") or ""
        length: int | None = None
        if declared:
            if not (declared.isascii() and declared.isdigit()):
                return _do_not_retry(
                    "bad-length", "Content-Length is not a number"
                )
            length = int(declared)
            log.size = length
            if length > self.max_body_bytes:
                return self._too_large()

        stream = environ["wsgi.input"]
        limit = self.max_body_bytes if length is None else length
        chunks: list[bytes] = []
        received = 0
        # Without a length (chunked), read one byte past the limit to
        # tell "exactly at the limit" from "too large".
        while received <= limit:
            wanted = min(_READ_CHUNK_BYTES, limit + 1 - received)
            if length is not None:
                wanted = min(wanted, length - received)
                if wanted == 0:
                    break
            chunk = stream.read(wanted)
            if not chunk:
                break
            chunks.append(chunk)
            received += len(chunk)
        log.size = received
        if received > self.max_body_bytes:
            return self._too_large()
        if length is not None and received < length:
            return _do_not_retry(
                "truncated", "the body is shorter than its Content-Length"
            )
        if received == 0:
            return _do_not_retry("empty", "the body holds no envelope")
        return b"".join(chunks)

    def _too_large(self) -> _Response:
        return _json_response(
            413,
            "too-large",
            f"the body exceeds {self.max_body_bytes} bytes; do not retry",
            retry=False,
            max_body_bytes=self.max_body_bytes,
        )

    def _open(
        self, body: bytes, log: _RequestLog
    ) -> tuple[bytes, bytes] | _Response:
        try:
            key_id = log.key_id = parse_header(body).key_id
            if key_id not in self.keys:
                # Worded for operators who just retired a key: the
                # client pinned a key config this gateway no longer has.
                return _do_not_retry(
                    "undecryptable",
                    f"unknown key id {key_id}: the envelope is sealed to a "
                    "key this gateway does not hold; fetch the current key "
                    "config",
                )
            opened = open_envelope(body, self.keys)
        except EnvelopeError as exc:
            logger.info("refused envelope: %s", exc)
            return _do_not_retry("undecryptable", str(exc))
        except Exception as exc:
            # The envelope code should only raise EnvelopeError; whatever
            # it raised, the input did not open, and the client must not
            # be told to retry it.
            logger.error(
                "opening an envelope raised %s; this is a bug",
                type(exc).__name__,
            )
            return _do_not_retry(
                "undecryptable", "the envelope could not be opened"
            )
        report_id = bytes(opened.report_id)
        if len(report_id) != REPORT_ID_BYTES or not any(report_id):
            return _do_not_retry(
                "no-report-id", "the envelope carries no report id"
            )
        return report_id, bytes(opened.payload)

    def _check_payload(self, payload: bytes) -> _Response | None:
        try:
            document = json.loads(
                payload.decode("utf-8"),
                object_pairs_hook=_reject_duplicate_keys,
                parse_constant=_reject_constant,
                parse_float=_finite_float,
            )
        except (ValueError, RecursionError) as exc:
            # Only the kind of failure: a decoder message may quote text.
            reason = (
                "nested too deeply"
                if isinstance(exc, RecursionError)
                else type(exc).__name__
            )
            logger.info("refused payload: not UTF-8 JSON (%s)", reason)
            return _do_not_retry(
                "not-json", f"the payload is not UTF-8 JSON ({reason})"
            )

        error = _first_schema_error(self._validator, document)
        if error is not None:
            logger.info("refused payload: not a CIMP report: %s", error)
            return _do_not_retry(
                "not-cimp", f"the payload is not a CIMP report: {error}"
            )
        return None

    def _forward_once(self, report_id: bytes, payload: bytes) -> _Response:
        deadline = time.monotonic() + self.in_flight_wait_s
        while True:
            try:
                claim = self.replay_cache.claim(report_id, self.lease_s)
            except ReplayCacheError as exc:
                logger.error("replay cache unavailable: %s", exc)
                return self._retry_later(
                    "replay-cache-unavailable",
                    "the replay cache is unavailable",
                )
            if claim.status is ClaimStatus.FORWARDED:
                return _Response(204, "repeat")
            if claim.status is ClaimStatus.CLAIMED:
                break
            # Another request is forwarding this id right now; its
            # outcome decides ours.
            if time.monotonic() >= deadline:
                return self._retry_later(
                    "in-flight", "the same report is being forwarded"
                )
            time.sleep(IN_FLIGHT_POLL_S)

        try:
            response = self._forward(payload)
        except BaseException:
            # Whatever broke may have broken after upstream got the
            # report; forwarding it again could count it twice.
            self._settle(claim, AMBIGUOUS)
            raise
        self._settle(claim, response.outcome)
        return response

    def _settle(self, claim: Claim, outcome: str) -> None:
        try:
            if outcome in _SETTLED_OUTCOMES:
                self.replay_cache.mark_forwarded(claim)
            else:
                self.replay_cache.release(claim)
        except ReplayCacheError as exc:
            # Upstream has the report either way. Telling the client to
            # retry after a success would double-count, so the answer
            # stands; only replay protection for this id is lost.
            logger.error("replay cache update failed: %s", exc)

    def _forward(self, payload: bytes) -> _Response:
        try:
            answer = self._session().post(
                self.upstream_url,
                data=payload,
                headers={"Content-Type": UPSTREAM_CONTENT_TYPE},
                timeout=self.upstream_timeout_s,
                allow_redirects=False,
                stream=True,
            )
        except requests.RequestException as exc:
            return self._failed_forward(exc)

        status = answer.status_code
        _drain(answer)
        if 200 <= status < 300:
            return _Response(204, "forwarded")
        if status in (408, 429):
            return self._retry_later(
                "upstream-unavailable", f"the CIMP server answered {status}"
            )
        if 400 <= status < 500:
            logger.warning("upstream refused the report with %d", status)
            return _do_not_retry(
                "upstream-rejected",
                f"the CIMP server refused the report with {status}",
                upstream_status=status,
            )
        logger.warning("upstream answered %d", status)
        return self._upstream_failed(f"the CIMP server answered {status}")

    def _failed_forward(self, exc: requests.RequestException) -> _Response:
        # Only the exception's type: its message may quote the URL.
        kind = type(exc).__name__
        if _surely_not_sent(exc):
            logger.warning("upstream unreachable (%s)", kind)
            return self._retry_later(
                "upstream-unavailable", "the CIMP server is unreachable"
            )
        logger.warning(
            "upstream failed after the request may have been sent (%s); "
            "the report id counts as forwarded",
            kind,
        )
        message = (
            "the CIMP server may have received the report but gave no "
            "usable answer; a retry will be answered as a repeat"
        )
        if isinstance(exc, (requests.Timeout, requests.ConnectionError)):
            return self._retry_later(AMBIGUOUS, message)
        return self._upstream_failed(message, outcome=AMBIGUOUS)

    def _retry_later(self, outcome: str, message: str) -> _Response:
        return _json_response(
            503,
            outcome,
            f"{message}; retry later",
            retry=True,
            retry_after_s=self.retry_after_s,
        )

    def _upstream_failed(
        self, message: str, *, outcome: str = "upstream-failed"
    ) -> _Response:
        return _json_response(
            502,
            outcome,
            f"{message}; retry later",
            retry=True,
            retry_after_s=self.retry_after_s,
        )

    def _session(self) -> requests.Session:
        session: requests.Session | None = getattr(
            self._sessions, "session", None
        )
        if session is None:
            session = requests.Session()
            # The upstream is the operator's CIMP, named on the command
            # line: no proxy from the environment, no .netrc, no cookies.
            session.trust_env = False
            session.proxies.clear()
            session.cookies.set_policy(
                http.cookiejar.DefaultCookiePolicy(allowed_domains=[])
            )
            self._sessions.session = session
        return session

    def close(self) -> None:
        """Close the replay cache; the app must not be called afterwards."""
        self.replay_cache.close()


def _surely_not_sent(exc: requests.RequestException) -> bool:
    """Tell whether ``exc`` happened before any byte of the request left.

    Only connect-phase failures qualify (refused, connect timeout, name
    not resolved); anything later, or unknown, may have reached upstream.
    """
    if isinstance(exc, (requests.exceptions.ConnectTimeout, *_PREPARE_ERRORS)):
        return True
    # A TLS error may come from the handshake or from reading the
    # answer; the exception does not say which, so it counts as sent.
    if not isinstance(exc, requests.ConnectionError) or isinstance(
        exc, (requests.exceptions.SSLError, requests.exceptions.ProxyError)
    ):
        return False
    causes: list[BaseException] = []
    pending: list[object] = [*exc.args[:1], exc.__cause__]
    while pending and len(causes) < 8:
        cause = pending.pop()
        if isinstance(cause, BaseException) and cause not in causes:
            causes.append(cause)
            pending.append(getattr(cause, "reason", None))
            pending.append(cause.__cause__)
    return any(isinstance(c, _NOT_SENT_ERRORS) for c in causes)


def _drain(answer: requests.Response) -> None:
    # Reading a short answer to its end returns the connection to the
    # pool; a long one is cut off.
    try:
        received = 0
        for chunk in answer.iter_content(_READ_CHUNK_BYTES):
            received += len(chunk)
            if received > MAX_UPSTREAM_ANSWER_BYTES:
                break
    except requests.RequestException:
        pass
    finally:
        answer.close()


def _first_schema_error(validator: Any, document: Any) -> str | None:
    from jsonschema.exceptions import best_match

    error = best_match(validator.iter_errors(document))
    if error is None:
        return None
    # The path holds only schema-known keys and list indices (unknown
    # keys fail at their parent), and the expectation comes from the
    # schema, so the message quotes no payload value.
    expected = json.dumps(error.validator_value)
    if len(expected) > 80:
        expected = expected[:77] + "..."
    return f"{error.json_path} fails {error.validator} {expected}"


def _method_not_allowed(allowed: str) -> _Response:
    response = _json_response(
        405,
        "method-not-allowed",
        f"use {allowed}",
        retry=False,
    )
    response.headers.append(("Allow", allowed))
    return response


def _log_request(log: _RequestLog, status: int, started: float) -> None:
    fields = {
        "method": log.method,
        "status": status,
        "outcome": log.outcome,
        "size_bucket": _size_bucket(log.size),
        "key_id": log.key_id,
        "latency_ms": round((time.perf_counter() - started) * 1000, 2),
    }
    line = " ".join(
        f"{name}={'-' if value is None else value}"
        for name, value in fields.items()
    )
    logger.info("request %s", line, extra={"gateway": fields})


def _check_limits(max_body_bytes: int, upstream_timeout_s: float) -> None:
    if (
        isinstance(max_body_bytes, bool)
        or not isinstance(max_body_bytes, int)
        or max_body_bytes < 1
    ):
        raise GatewayError(
            f"max_body_bytes must be a whole number of at least 1, "
            f"not {max_body_bytes!r}"
        )
    if (
        isinstance(upstream_timeout_s, bool)
        or not isinstance(upstream_timeout_s, (int, float))
        or not math.isfinite(upstream_timeout_s)
        or upstream_timeout_s <= 0
    ):
        raise GatewayError(
            f"upstream_timeout_s must be a finite number of seconds above "
            f"0, not {upstream_timeout_s!r}"
        )


def _index_keys(keys: Iterable[GatewayKey]) -> dict[int, GatewayKey]:
    indexed: dict[int, GatewayKey] = {}
    for key in keys:
        if key.key_id in indexed:
            raise GatewayError(f"two gateway keys have key id {key.key_id}")
        indexed[key.key_id] = key
    if not indexed:
        raise GatewayError("the gateway needs at least one key")
    return indexed


def _check_upstream_url(url: str) -> str:
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        port_ok = parts.port is None or parts.port > 0
    except ValueError as exc:
        raise GatewayError(f"upstream URL {url!r}: {exc}") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise GatewayError(
            f"upstream URL {url!r} must be http:// or https:// with a host"
        )
    if not port_ok or parts.username or parts.password:
        raise GatewayError(f"upstream URL {url!r} is not usable")
    return url


def create_app(
    keys: Iterable[GatewayKey],
    upstream_url: str,
    *,
    replay_cache: ReplayCache | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
    upstream_timeout_s: float = UPSTREAM_TIMEOUT_S,
    retry_after_s: int = RETRY_AFTER_S,
    in_flight_wait_s: float | None = None,
) -> GatewayApp:
    """Build the gateway's WSGI app.

    ``keys`` are the private keys whose key configs clients may have
    pinned; an envelope is opened with the one its key id names.
    ``replay_cache`` defaults to the SQLite file at
    :func:`~secure_store.gateway.replay.default_replay_cache_path`.
    Raises :class:`GatewayError` for unusable settings.
    """
    keys = list(keys)
    _index_keys(keys)
    _check_upstream_url(upstream_url)
    # Before the default replay cache file is created.
    _check_limits(max_body_bytes, upstream_timeout_s)
    cache = open_replay_cache(None) if replay_cache is None else replay_cache
    return GatewayApp(
        keys,
        upstream_url,
        replay_cache=cache,
        max_body_bytes=max_body_bytes,
        upstream_timeout_s=upstream_timeout_s,
        retry_after_s=retry_after_s,
        in_flight_wait_s=in_flight_wait_s,
    )


ENV_PREFIX = "SECURE_STORE_GATEWAY_"


def app_from_env(environ: Mapping[str, str] | None = None) -> GatewayApp:
    """Build the app from ``SECURE_STORE_GATEWAY_*`` environment variables.

    For WSGI servers that take an app factory on their command line, such
    as ``gunicorn 'secure_store.gateway:app_from_env()'``. ``UPSTREAM``
    (the CIMP URL) is required; ``KEY_DIR`` and ``KEY_FILES`` (separated
    by ``os.pathsep``) name the keys; ``REPLAY_CACHE`` and
    ``MAX_BODY_BYTES`` are optional, as on the command line. Raises
    :class:`GatewayError` naming a missing or malformed variable.
    """
    env = os.environ if environ is None else environ

    def get(name: str) -> str | None:
        return env.get(ENV_PREFIX + name) or None

    upstream = get("UPSTREAM")
    if upstream is None:
        raise GatewayError(f"set {ENV_PREFIX}UPSTREAM to the CIMP URL")
    key_files = (get("KEY_FILES") or "").split(os.pathsep)
    keys = load_keys(key_files=filter(None, key_files), key_dir=get("KEY_DIR"))
    limit = get("MAX_BODY_BYTES") or str(MAX_BODY_BYTES)
    if not limit.isdigit():
        raise GatewayError(f"{ENV_PREFIX}MAX_BODY_BYTES must be a number")
    return create_app(
        keys,
        upstream,
        replay_cache=open_replay_cache(get("REPLAY_CACHE")),
        max_body_bytes=int(limit),
    )


# -- keys -------------------------------------------------------------------

KEY_FILE_SUFFIX = ".json"


def load_keys(
    key_files: Iterable[str | os.PathLike[str]] = (),
    key_dir: str | os.PathLike[str] | None = None,
) -> list[GatewayKey]:
    """Load gateway private keys from files and from every ``*.json`` in
    a folder.

    Raises :class:`GatewayError` naming the file that cannot be loaded,
    when two files hold the same key id, or when no key is found.
    """
    paths = [Path(p) for p in key_files]
    if key_dir is not None:
        folder = Path(key_dir)
        if not folder.is_dir():
            raise GatewayError(f"key folder {folder} does not exist")
        paths.extend(
            sorted(
                p
                for p in folder.iterdir()
                if p.suffix == KEY_FILE_SUFFIX
                and not p.name.startswith(".")
                and p.is_file()
            )
        )
    keys: list[GatewayKey] = []
    seen: dict[int, Path] = {}
    for path in paths:
        key = _load_key(path)
        if key.key_id in seen:
            raise GatewayError(
                f"{path} and {seen[key.key_id]} both hold key id {key.key_id}"
            )
        seen[key.key_id] = path
        keys.append(key)
    if not keys:
        raise GatewayError("no gateway key given (use a key file or folder)")
    return keys


def _load_key(path: Path) -> GatewayKey:
    # GatewayKey.load warns about key files other users may read.
    try:
        return GatewayKey.load(path)
    except (OSError, ValueError, SecureStoreError) as exc:
        raise GatewayError(f"cannot load gateway key {path}: {exc}") from exc


# -- serving ----------------------------------------------------------------


def listen_url(host: str, port: int) -> str:
    """Return the URL of a server listening on ``host`` and ``port``.

    >>> listen_url("::1", 8080)
    'http://[::1]:8080/'
    """
    return f"http://{_host_port(host, port)}/"


def _host_port(host: str, port: int) -> str:
    # An IPv6 address needs brackets to be told from the port.
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


def _check_threads(threads: int) -> None:
    if (
        isinstance(threads, bool)
        or not isinstance(threads, int)
        or threads < 1
    ):
        raise GatewayError(f"threads must be at least 1, not {threads!r}")


def make_server(
    app: Callable[..., Iterable[bytes]],
    host: str,
    port: int,
    *,
    threads: int = DEFAULT_THREADS,
    max_body_bytes: int | None = None,
) -> BaseWSGIServer | MultiSocketServer:
    """Create (but do not run) a waitress server for ``app``.

    ``port`` 0 picks a free port; read it from ``server.effective_port``.
    waitress refuses bodies over ``max_body_bytes`` (default: the app's
    limit) before passing them on. Raises :class:`GatewayError` for a
    port in use, a host that is not this machine's, or bad settings.
    """
    import waitress

    _check_threads(threads)
    where = _host_port(host, port)
    if isinstance(port, bool) or not isinstance(port, int):
        raise GatewayError(f"the port must be a number, not {port!r}")
    if not 0 <= port <= MAX_PORT:
        raise GatewayError(f"cannot listen on {where}: no such port")
    if not host or any(c.isspace() for c in host):
        # Refused here, before waitress asks a name server about it.
        raise GatewayError(f"cannot listen on {where}: invalid host")
    if max_body_bytes is None:
        max_body_bytes = getattr(app, "max_body_bytes", MAX_BODY_BYTES)
    try:
        return waitress.create_server(
            app,
            host=host,
            port=port,
            threads=threads,
            max_request_body_size=max_body_bytes,
            ident="secure-store-gateway",
            expose_tracebacks=False,
            clear_untrusted_proxy_headers=True,
        )
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            reason = "the port is already in use (is a gateway running?)"
        else:
            reason = exc.strerror or str(exc)
        raise GatewayError(f"cannot listen on {where}: {reason}") from exc
    except ValueError as exc:
        # waitress says only "Invalid host/port specified."
        raise GatewayError(
            f"cannot listen on {where}: invalid host or port (not an "
            "address or resolvable name of this machine)"
        ) from exc


def _listening(
    server: BaseWSGIServer | MultiSocketServer, host: str, port: int
) -> list[tuple[str, int]]:
    addresses = getattr(server, "effective_listen", None)
    if addresses:
        return [(str(h), int(p)) for h, p in addresses]
    return [
        (
            str(getattr(server, "effective_host", host)),
            int(getattr(server, "effective_port", port)),
        )
    ]


def serve(
    app: Callable[..., Iterable[bytes]],
    host: str,
    port: int,
    *,
    threads: int = DEFAULT_THREADS,
    max_body_bytes: int | None = None,
    ready: Callable[[str, int], None] | None = None,
) -> None:
    """Serve ``app`` with waitress until interrupted.

    Logs the listening URL once at INFO and prints nothing; ``ready(host,
    port)`` is called once the socket listens (useful with port 0), with
    the first address if ``host`` named several. Raises
    :class:`GatewayError` as :func:`make_server` does.
    """
    server = make_server(
        app, host, port, threads=threads, max_body_bytes=max_body_bytes
    )
    addresses = _listening(server, host, port)
    logger.info(
        "gateway listening on %s",
        " and ".join(listen_url(h, p) for h, p in addresses),
    )
    try:
        if ready is not None:
            ready(*addresses[0])
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
