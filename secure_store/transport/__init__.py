"""In transit: HPKE envelopes, the proxy policy and the sender."""

from __future__ import annotations

from secure_store.transport.envelope import (
    REPORT_ID_BYTES,
    Aead,
    GatewayKey,
    Kdf,
    KeyConfig,
    OpenedReport,
    Suite,
    new_report_id,
    open_envelope,
    seal,
)
from secure_store.transport.proxy import (
    DEFAULT_PROXY_URL,
    ProxyConfig,
    check_server_url,
    parse_proxy_url,
)
from secure_store.transport.sender import Sender

__all__ = [
    "DEFAULT_PROXY_URL",
    "REPORT_ID_BYTES",
    "Aead",
    "GatewayKey",
    "Kdf",
    "KeyConfig",
    "OpenedReport",
    "ProxyConfig",
    "Sender",
    "Suite",
    "check_server_url",
    "new_report_id",
    "open_envelope",
    "parse_proxy_url",
    "seal",
]
