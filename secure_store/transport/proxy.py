"""Which proxies and server URLs a report may travel through, and how.

Policy, in short: only SOCKS5 with remote name resolution (``socks5h://``)
unless the caller accepts the DNS leak of ``socks5://``; no HTTP proxies;
servers over ``https://``, or plain ``http://`` to an ``.onion`` address,
whose transport Tor already encrypts and authenticates end to end.

Stream isolation. Tor's ``IsolateSOCKSAuth`` (on by default) puts streams
with different SOCKS user names or passwords on different circuits, and
Tor picks the user name/password method whenever a client offers it
(unless the SocksPort sets ``PreferSOCKSNoAuth``). When
the proxy URL carries no credentials, every send offers fresh random ones,
so no two reports share a circuit and the exit cannot link them. When the
URL carries credentials, they are the proxy's login and are sent unchanged:
an authenticating proxy would refuse anything else, and that proxy can link
the sends by the login anyway. To get per-send isolation through Tor, leave
the credentials out of the URL. A proxy that needs no login simply picks
"no authentication" from the methods offered, so the random credentials
never even leave the device.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import logging
import secrets
from dataclasses import dataclass, field
from urllib.parse import SplitResult, quote, unquote, urlsplit, urlunsplit

from secure_store.errors import ProxyConfigError

__all__ = [
    "DEFAULT_PROXY_URL",
    "ProxyConfig",
    "check_server_url",
    "is_onion_host",
    "parse_proxy_url",
]

logger = logging.getLogger(__name__)

#: Tor's SOCKS port on this machine, resolving names remotely.
DEFAULT_PROXY_URL = "socks5h://127.0.0.1:9050"

#: Random bytes in each isolation user name and password (hex encoded).
ISOLATION_TOKEN_BYTES = 16

# RFC 1929 carries user name and password in one length byte each.
_MAX_SOCKS_FIELD_BYTES = 255

# A v3 onion address: base32 of public key (32) | checksum (2) | version.
_ONION_V3_LABEL_CHARS = 56
_ONION_V3_VERSION = 3
_ONION_PUBLIC_KEY_BYTES = 32


@dataclass(frozen=True)
class ProxyConfig:
    """A checked SOCKS5 proxy: where it is, how to log in, and isolation."""

    host: str
    port: int
    remote_dns: bool = True
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    isolate: bool = True

    @property
    def scheme(self) -> str:
        """``socks5h`` when the proxy resolves names, else ``socks5``."""
        return "socks5h" if self.remote_dns else "socks5"

    @property
    def isolates_sends(self) -> bool:
        """True when each send gets its own random SOCKS credentials."""
        return self.isolate and self.username is None

    def url(self) -> str:
        """The proxy URL with the configured credentials, if any."""
        return self._build(self.username, self.password)

    def isolated_url(self) -> str:
        """The URL to use for one send.

        Fresh random credentials on every call when the URL carried none
        and isolation is on; otherwise the configured URL unchanged.
        """
        if not self.isolates_sends:
            return self.url()
        return self._build(
            secrets.token_hex(ISOLATION_TOKEN_BYTES),
            secrets.token_hex(ISOLATION_TOKEN_BYTES),
        )

    def redacted(self) -> str:
        """The URL safe to log and show: the password replaced by ***."""
        if self.username is None:
            return self._build(None, None)
        return self._build(self.username, "***", quote_password=False)

    def _build(
        self,
        username: str | None,
        password: str | None,
        *,
        quote_password: bool = True,
    ) -> str:
        host = self.host
        if ":" in host:
            host = f"[{host}]"
        login = ""
        if username is not None and password is not None:
            secret = quote(password, safe="") if quote_password else password
            login = f"{quote(username, safe='')}:{secret}@"
        return f"{self.scheme}://{login}{host}:{self.port}"


def parse_proxy_url(
    url: str, *, allow_socks5: bool = False, isolate: bool = True
) -> ProxyConfig:
    """Check ``url`` against the proxy policy and return its parts.

    Raises ProxyConfigError naming what is wrong. ``socks5://`` is refused
    unless ``allow_socks5`` is true; ``isolate=False`` turns off the
    random per-send credentials.
    """
    if not isinstance(url, str) or not url.strip():
        raise ProxyConfigError(
            "no proxy URL given; reports are never sent without a proxy "
            f"(Tor's is {DEFAULT_PROXY_URL})"
        )
    url = url.strip()
    if "://" not in url:
        raise ProxyConfigError(
            f"proxy URL {url!r} has no scheme; write it like "
            f"{DEFAULT_PROXY_URL}"
        )
    parts = _split(url, "proxy URL")
    scheme = parts.scheme.lower()
    shown = _redact_raw(parts)

    if scheme == "socks5":
        if not allow_socks5:
            raise ProxyConfigError(
                f"proxy {shown} is socks5://, which makes this device "
                "resolve the server's name itself: the DNS query leaks to "
                "the local resolver and the network, outside the proxy, "
                "and tells them which server this device reports to. Use "
                "socks5h:// so the proxy resolves the name, or allow "
                "socks5 explicitly if that leak is acceptable"
            )
        logger.warning(
            "proxy %s resolves names locally (socks5); server names leak "
            "to the local DNS resolver",
            shown,
        )
    elif scheme in ("socks4", "socks4a"):
        raise ProxyConfigError(
            f"proxy {shown} is SOCKS4, which has no IPv6, no login and "
            "(socks4) no remote DNS; use a socks5h:// proxy"
        )
    elif scheme in ("http", "https"):
        raise ProxyConfigError(
            f"proxy {shown} is an HTTP proxy; only SOCKS5 proxies with "
            "remote DNS (socks5h://) are supported, such as Tor's "
            f"{DEFAULT_PROXY_URL}"
        )
    elif scheme != "socks5h":
        raise ProxyConfigError(
            f"proxy {shown} has scheme {parts.scheme!r}; only socks5h:// "
            "is supported"
        )

    host = parts.hostname
    if not host:
        raise ProxyConfigError(f"proxy {shown} names no host")
    try:
        port = parts.port
    except ValueError as exc:
        raise ProxyConfigError(f"proxy {shown} has an invalid port") from exc
    if port is None or port == 0:
        raise ProxyConfigError(
            f"proxy {shown} names no port (Tor's is 9050, Tor Browser's 9150)"
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ProxyConfigError(
            f"proxy {shown} has a path, query or fragment; a proxy URL is "
            "scheme://[user:password@]host:port"
        )

    username = None if parts.username is None else unquote(parts.username)
    password = None if parts.password is None else unquote(parts.password)
    if (username is None) != (password is None) or username == "":
        raise ProxyConfigError(
            f"proxy {shown} has a user name without a password or the "
            "reverse; SOCKS5 login needs both"
        )
    for name, value in (("user name", username), ("password", password)):
        if value is not None and (
            len(value.encode("utf-8")) > _MAX_SOCKS_FIELD_BYTES
        ):
            raise ProxyConfigError(
                f"proxy {shown}: the {name} is longer than SOCKS5 allows "
                f"({_MAX_SOCKS_FIELD_BYTES} bytes)"
            )

    return ProxyConfig(
        host=host,
        port=port,
        remote_dns=scheme == "socks5h",
        username=username,
        password=password,
        isolate=isolate,
    )


def _redact_raw(parts: SplitResult) -> str:
    """Show a URL being parsed without its password, for error messages."""
    netloc = parts.netloc
    if "@" in netloc:
        login, _, where = netloc.rpartition("@")
        user = login.partition(":")[0]
        netloc = f"{user}:***@{where}" if ":" in login else f"{user}@{where}"
    return urlunsplit(parts._replace(netloc=netloc))


def is_onion_host(host: str) -> bool:
    """True when ``host`` is a valid v3 onion address (or a name under one).

    Checks the length, alphabet, version byte and checksum, so a typo is
    caught here rather than as an unreachable server later.
    """
    labels = host.lower().rstrip(".").split(".")
    if len(labels) < 2 or labels[-1] != "onion":
        return False
    label = labels[-2]
    if len(label) != _ONION_V3_LABEL_CHARS:
        return False
    try:
        raw = base64.b32decode(label.upper())
    except (binascii.Error, ValueError):
        return False
    public_key = raw[:_ONION_PUBLIC_KEY_BYTES]
    checksum = raw[_ONION_PUBLIC_KEY_BYTES : _ONION_PUBLIC_KEY_BYTES + 2]
    version = raw[-1]
    expected = hashlib.sha3_256(
        b".onion checksum" + public_key + bytes([version])
    ).digest()[:2]
    return version == _ONION_V3_VERSION and checksum == expected


def check_server_url(url: str, *, allow_insecure_http: bool = False) -> str:
    """Check a server (gateway) URL against the policy; return it cleaned.

    ``https://`` is always accepted; ``http://`` only for a v3 ``.onion``
    address (Tor encrypts and authenticates that end to end) or when
    ``allow_insecure_http`` is true. Raises ProxyConfigError otherwise.
    """
    if not isinstance(url, str) or not url.strip():
        raise ProxyConfigError("no server URL given")
    parts = _split(url.strip(), "server URL")
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise ProxyConfigError(
            f"server URL {url!r} must start with https:// (or http:// for "
            "an .onion address)"
        )
    host = parts.hostname
    if not host:
        raise ProxyConfigError(f"server URL {url!r} names no host")
    if parts.username is not None or parts.password is not None:
        raise ProxyConfigError(
            "server URL carries a user name or password; the gateway needs "
            "none, and they would travel with every report"
        )
    if parts.fragment:
        raise ProxyConfigError(f"server URL {url!r} has a #fragment")
    try:
        port = parts.port
    except ValueError as exc:
        raise ProxyConfigError(
            f"server URL {url!r} has an invalid port"
        ) from exc

    onion = host.endswith(".onion")
    if onion and not is_onion_host(host):
        raise ProxyConfigError(
            f"server host {host!r} is not a valid v3 onion address (56 "
            "base32 characters with a correct checksum)"
        )
    if scheme == "http" and not onion and not allow_insecure_http:
        raise ProxyConfigError(
            f"server URL {url!r} is plain http: without TLS the proxy's "
            "exit and every network after it can read and forge the "
            "gateway's answer (a forged success would drop the report). "
            "Use https://, an .onion address, or allow insecure http "
            "explicitly (for tests on loopback)"
        )

    netloc = f"[{host}]" if _is_ipv6(host) else host
    if port is not None:
        netloc = f"{netloc}:{port}"
    return urlunsplit((scheme, netloc, parts.path or "/", parts.query, ""))


def _is_ipv6(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).version == 6
    except ValueError:
        return False


def _split(url: str, what: str) -> SplitResult:
    """Split ``url``, turning the parser's ValueError into ours."""
    try:
        return urlsplit(url)
    except ValueError as exc:  # an unbalanced "[" in the host, say
        raise ProxyConfigError(f"{what} cannot be parsed: {exc}") from exc
