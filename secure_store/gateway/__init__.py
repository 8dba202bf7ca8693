"""The operator's gateway: opens sealed reports and forwards them to a CIMP.

Run it with ``secure-store gateway serve`` (waitress), or under any WSGI
server: ``create_app(...)`` builds the app from Python objects and
``app_from_env()`` from environment variables, for example
``gunicorn 'secure_store.gateway:app_from_env()'``.
"""

from __future__ import annotations

from secure_store.gateway.app import (
    DEFAULT_THREADS,
    KEY_CONFIG_PATH,
    MAX_BODY_BYTES,
    RETRY_AFTER_S,
    UPSTREAM_TIMEOUT_S,
    GatewayApp,
    app_from_env,
    create_app,
    listen_url,
    load_cimp_schema,
    load_keys,
    make_server,
    serve,
)
from secure_store.gateway.replay import (
    DEFAULT_RETENTION_S,
    Claim,
    ClaimStatus,
    MemoryReplayCache,
    RedisReplayCache,
    ReplayCache,
    SQLiteReplayCache,
    default_replay_cache_path,
    open_replay_cache,
)

__all__ = [
    "DEFAULT_RETENTION_S",
    "DEFAULT_THREADS",
    "KEY_CONFIG_PATH",
    "MAX_BODY_BYTES",
    "RETRY_AFTER_S",
    "UPSTREAM_TIMEOUT_S",
    "Claim",
    "ClaimStatus",
    "GatewayApp",
    "MemoryReplayCache",
    "RedisReplayCache",
    "ReplayCache",
    "SQLiteReplayCache",
    "app_from_env",
    "create_app",
    "default_replay_cache_path",
    "listen_url",
    "load_cimp_schema",
    "load_keys",
    "make_server",
    "open_replay_cache",
    "serve",
]
