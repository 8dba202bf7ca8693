"""The gateway answers every case with the status a client can act on."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from gateway_helpers import (
    CIMP_BODY,
    CIMP_REPORT,
    OTHER_REPORT_ID,
    REPORT_ID,
    Upstream,
    call_app,
    seal_report,
)

from secure_store.demo.socks import free_port
from secure_store.errors import ReplayCacheError
from secure_store.gateway import (
    KEY_CONFIG_PATH,
    Claim,
    GatewayApp,
    MemoryReplayCache,
    SQLiteReplayCache,
    app_from_env,
    create_app,
)
from secure_store.transport.envelope import GatewayKey, Suite


@pytest.fixture
def http() -> Iterator[requests.Session]:
    session = requests.Session()
    session.trust_env = False
    yield session
    session.close()


def post(
    http: requests.Session, url: str, envelope: bytes
) -> requests.Response:
    return http.post(
        url + "/",
        data=envelope,
        headers={"Content-Type": "application/octet-stream"},
        timeout=10,
    )


# -- success --------------------------------------------------------------


def test_a_report_is_forwarded_and_answered_204(
    served: str,
    http: requests.Session,
    upstream: Upstream,
    x25519_key: GatewayKey,
) -> None:
    answer = post(http, served, seal_report(x25519_key))

    assert answer.status_code == 204
    assert answer.content == b""
    assert upstream.bodies == [CIMP_BODY]


def test_upstream_gets_the_json_with_the_cimp_content_type(
    served: str,
    http: requests.Session,
    upstream: Upstream,
    hybrid_key: GatewayKey,
) -> None:
    post(http, served, seal_report(hybrid_key))

    (request,) = upstream.requests
    assert request.path == "/cimp"
    assert request.headers["Content-Type"] == (
        "application/json; charset=UTF-8"
    )
    assert json.loads(request.body) == CIMP_REPORT


def test_a_repeated_report_id_is_answered_204_and_not_forwarded_again(
    served: str,
    http: requests.Session,
    upstream: Upstream,
    x25519_key: GatewayKey,
) -> None:
    statuses = [
        post(http, served, seal_report(x25519_key)).status_code
        for _ in range(5)
    ]

    assert statuses == [204, 204, 204, 204, 204]
    assert len(upstream.requests) == 1


def test_reports_with_different_ids_are_each_forwarded(
    served: str,
    http: requests.Session,
    upstream: Upstream,
    x25519_key: GatewayKey,
) -> None:
    post(http, served, seal_report(x25519_key, report_id=REPORT_ID))
    post(http, served, seal_report(x25519_key, report_id=OTHER_REPORT_ID))

    assert len(upstream.requests) == 2


def test_eight_concurrent_posts_of_one_report_forward_it_once(
    served: str, upstream: Upstream, hybrid_key: GatewayKey
) -> None:
    # Upstream is slow, so the eight requests overlap while the first
    # one is still forwarding.
    upstream.delay_s = 0.3
    envelopes = [seal_report(hybrid_key) for _ in range(8)]
    barrier = threading.Barrier(8)
    statuses: list[int] = []

    def send(envelope: bytes) -> None:
        with requests.Session() as session:
            session.trust_env = False
            barrier.wait()
            statuses.append(post(session, served, envelope).status_code)

    threads = [threading.Thread(target=send, args=(e,)) for e in envelopes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert statuses == [204] * 8
    assert len(upstream.requests) == 1


# -- upstream trouble -----------------------------------------------------


def test_upstream_4xx_is_answered_400_do_not_retry(
    served: str,
    http: requests.Session,
    upstream: Upstream,
    x25519_key: GatewayKey,
) -> None:
    upstream.status = 422

    answer = post(http, served, seal_report(x25519_key))

    assert answer.status_code == 400
    assert answer.json()["error"] == "upstream-rejected"
    assert answer.json()["retry"] is False
    assert answer.json()["upstream_status"] == 422
    assert "from upstream" not in answer.text


def test_upstream_5xx_is_answered_502_with_retry_after(
    served: str,
    http: requests.Session,
    upstream: Upstream,
    x25519_key: GatewayKey,
) -> None:
    upstream.status = 500

    answer = post(http, served, seal_report(x25519_key))

    assert answer.status_code == 502
    assert answer.headers["Retry-After"] == "17"
    assert answer.json()["retry"] is True


def test_after_upstream_5xx_the_retry_is_forwarded(
    served: str,
    http: requests.Session,
    upstream: Upstream,
    x25519_key: GatewayKey,
) -> None:
    upstream.status = 503
    first = post(http, served, seal_report(x25519_key))
    upstream.status = 200

    retry = post(http, served, seal_report(x25519_key))

    assert (first.status_code, retry.status_code) == (502, 204)
    assert upstream.bodies == [CIMP_BODY, CIMP_BODY]


def test_after_upstream_4xx_the_id_is_not_marked_forwarded(
    served: str,
    http: requests.Session,
    upstream: Upstream,
    x25519_key: GatewayKey,
) -> None:
    upstream.status = 400
    post(http, served, seal_report(x25519_key))
    upstream.status = 204

    again = post(http, served, seal_report(x25519_key))

    assert again.status_code == 204
    assert len(upstream.requests) == 2


def test_upstream_429_is_answered_503_with_retry_after(
    served: str,
    http: requests.Session,
    upstream: Upstream,
    x25519_key: GatewayKey,
) -> None:
    upstream.status = 429

    answer = post(http, served, seal_report(x25519_key))

    assert answer.status_code == 503
    assert answer.headers["Retry-After"] == "17"


def test_upstream_timeout_is_answered_503_and_the_retry_is_a_repeat(
    served: str,
    http: requests.Session,
    upstream: Upstream,
    x25519_key: GatewayKey,
) -> None:
    # Upstream may have recorded the report before timing out, so the
    # retry must not forward it again (at most once).
    upstream.delay_s = 1.5  # the app's upstream timeout is 1 s
    first = post(http, served, seal_report(x25519_key))
    upstream.delay_s = 0.0

    retry = post(http, served, seal_report(x25519_key))

    assert first.status_code == 503
    assert first.headers["Retry-After"] == "17"
    assert first.json()["error"] == "ambiguous"
    assert first.json()["retry"] is True
    assert retry.status_code == 204
    assert len(upstream.requests) == 1


def test_refused_upstream_is_answered_503_with_retry_after(
    x25519_key: GatewayKey, replay_cache: SQLiteReplayCache
) -> None:
    app = create_app(
        [x25519_key],
        f"http://127.0.0.1:{free_port()}/cimp",
        replay_cache=replay_cache,
        retry_after_s=17,
    )

    answer = call_app(app, seal_report(x25519_key))

    assert answer.status == 503
    assert answer.headers["Retry-After"] == "17"
    assert answer.json()["error"] == "upstream-unavailable"


def test_after_refused_upstream_the_report_id_is_not_marked(
    x25519_key: GatewayKey, upstream: Upstream
) -> None:
    cache = MemoryReplayCache()
    down = create_app(
        [x25519_key], f"http://127.0.0.1:{free_port()}/", replay_cache=cache
    )
    up = create_app([x25519_key], upstream.url, replay_cache=cache)

    call_app(down, seal_report(x25519_key))
    answer = call_app(up, seal_report(x25519_key))

    assert answer.status == 204
    assert upstream.bodies == [CIMP_BODY]


# -- bad requests ---------------------------------------------------------


def test_a_body_over_the_limit_is_answered_413_from_content_length(
    x25519_key: GatewayKey, upstream: Upstream
) -> None:
    app = create_app(
        [x25519_key],
        upstream.url,
        replay_cache=MemoryReplayCache(),
        max_body_bytes=1000,
    )

    class Unreadable:
        def read(self, size: int = -1) -> bytes:
            raise AssertionError("the body was read")

    environ: dict[str, Any] = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/",
        "CONTENT_LENGTH": "1001",
        "wsgi.input": Unreadable(),
    }
    started: list[str] = []

    def start_response(status: str, headers: Any, *_: Any) -> Any:
        started.append(status)

    body = b"".join(app(environ, start_response))

    assert started == ["413 Content Too Large"]
    assert json.loads(body)["max_body_bytes"] == 1000


def test_a_body_without_length_over_the_limit_is_answered_413(
    x25519_key: GatewayKey, upstream: Upstream
) -> None:
    app = create_app(
        [x25519_key],
        upstream.url,
        replay_cache=MemoryReplayCache(),
        max_body_bytes=1000,
    )

    answer = call_app(app, b"x" * 5000, content_length=None)

    assert answer.status == 413


def test_a_sealed_report_without_length_is_forwarded(
    app: GatewayApp, upstream: Upstream, x25519_key: GatewayKey
) -> None:
    answer = call_app(app, seal_report(x25519_key), content_length=None)

    assert answer.status == 204
    assert upstream.bodies == [CIMP_BODY]


def test_waitress_refuses_a_chunked_body_over_the_limit_with_413(
    served: str, http: requests.Session, upstream: Upstream
) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(20):
            yield b"x" * 65536

    answer = http.post(served + "/", data=chunks(), timeout=10)

    assert answer.status_code == 413
    assert upstream.requests == []


def test_a_content_length_that_is_no_number_is_answered_400(
    app: GatewayApp,
) -> None:
    answer = call_app(app, b"abc", content_length="-3")

    assert answer.status == 400
    assert answer.json()["error"] == "bad-length"


def test_an_empty_body_is_answered_400(app: GatewayApp) -> None:
    answer = call_app(app, b"")

    assert answer.status == 400
    assert answer.json()["error"] == "empty"


def test_an_envelope_that_does_not_open_is_answered_400_do_not_retry(
    served: str, http: requests.Session, x25519_key: GatewayKey
) -> None:
    envelope = bytearray(seal_report(x25519_key))
    envelope[-1] ^= 0x01

    answer = post(http, served, bytes(envelope))

    assert answer.status_code == 400
    assert answer.json()["error"] == "undecryptable"
    assert answer.json()["retry"] is False
    assert "do not retry" in answer.json()["message"]


def test_an_envelope_without_report_id_is_answered_400(
    app: GatewayApp, x25519_key: GatewayKey, upstream: Upstream
) -> None:
    answer = call_app(app, seal_report(x25519_key, report_id=bytes(16)))

    assert answer.status == 400
    assert answer.json()["error"] == "no-report-id"
    assert upstream.requests == []


def test_a_payload_that_is_not_json_is_answered_400(
    app: GatewayApp, x25519_key: GatewayKey
) -> None:
    answer = call_app(app, seal_report(x25519_key, b"idsite=7&secret=1"))

    assert answer.status == 400
    assert answer.json()["error"] == "not-json"
    assert b"secret" not in answer.body


def test_a_payload_with_a_repeated_key_is_answered_400(
    app: GatewayApp, x25519_key: GatewayKey
) -> None:
    payload = b'{"idsite":7,"idsite":8,"visits":[],"events":[]}'

    answer = call_app(app, seal_report(x25519_key, payload))

    assert answer.status == 400
    assert answer.json()["error"] == "not-json"


def test_a_payload_with_an_infinite_number_is_answered_400(
    app: GatewayApp, x25519_key: GatewayKey
) -> None:
    payload = (
        b'{"idsite":7,"visits":[],"events":[{"category":"c","action":"a",'
        b'"value":1e999,"period_start":1,"period_end":2,"times":1}]}'
    )

    answer = call_app(app, seal_report(x25519_key, payload))

    assert answer.status == 400
    assert answer.json()["error"] == "not-json"


def test_a_payload_with_nan_is_answered_400(
    app: GatewayApp, x25519_key: GatewayKey
) -> None:
    payload = (
        b'{"idsite":7,"visits":[],"events":[{"category":"c","action":"a",'
        b'"value":NaN,"period_start":1,"period_end":2,"times":1}]}'
    )

    answer = call_app(app, seal_report(x25519_key, payload))

    assert answer.status == 400
    assert answer.json()["error"] == "not-json"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"idsite": 0}, "$.idsite fails minimum 1"),
        ({"idsite": "7"}, '$.idsite fails type "integer"'),
        ({"idsite": True}, '$.idsite fails type "integer"'),
        ({"visits": {}}, '$.visits fails type "array"'),
        ({"ua": 5}, '$.ua fails type "string"'),
        ({"secret": "Main/Settings"}, "$ fails additionalProperties false"),
    ],
)
def test_a_payload_that_is_not_cimp_is_answered_400_naming_the_place(
    app: GatewayApp,
    x25519_key: GatewayKey,
    change: dict[str, Any],
    message: str,
) -> None:
    payload = json.dumps({**CIMP_REPORT, **change}).encode()

    answer = call_app(app, seal_report(x25519_key, payload))

    assert answer.status == 400
    assert answer.json()["error"] == "not-cimp"
    assert answer.json()["message"] == (
        f"the payload is not a CIMP report: {message}; "
        "do not retry this request unchanged"
    )


def test_a_visit_without_times_is_answered_400(
    app: GatewayApp, x25519_key: GatewayKey
) -> None:
    visit = dict(CIMP_REPORT["visits"][0])
    del visit["times"]
    payload = json.dumps({**CIMP_REPORT, "visits": [visit]}).encode()

    answer = call_app(app, seal_report(x25519_key, payload))

    assert answer.status == 400
    assert answer.json()["message"].startswith(
        "the payload is not a CIMP report: $.visits[0] fails required"
    )


def test_an_event_with_a_string_value_is_answered_400(
    app: GatewayApp, x25519_key: GatewayKey
) -> None:
    event = {**CIMP_REPORT["events"][0], "value": "12.5"}
    payload = json.dumps({**CIMP_REPORT, "events": [event]}).encode()

    answer = call_app(app, seal_report(x25519_key, payload))

    assert answer.status == 400
    assert answer.json()["message"].startswith(
        "the payload is not a CIMP report: $.events[0].value fails type"
    )


def test_a_report_without_lang_ua_or_items_is_forwarded(
    app: GatewayApp, x25519_key: GatewayKey, upstream: Upstream
) -> None:
    payload = b'{"idsite":1,"visits":[],"events":[]}'

    answer = call_app(app, seal_report(x25519_key, payload))

    assert answer.status == 204
    assert upstream.bodies == [payload]


def test_get_on_the_report_path_is_answered_405(app: GatewayApp) -> None:
    answer = call_app(app, b"", method="GET")

    assert answer.status == 405
    assert answer.headers["Allow"] == "POST"


# -- key configs and rotation ---------------------------------------------


def test_the_well_known_path_serves_every_key_config(
    served: str,
    http: requests.Session,
    x25519_key: GatewayKey,
    hybrid_key: GatewayKey,
) -> None:
    answer = http.get(served + KEY_CONFIG_PATH, timeout=10)

    assert answer.status_code == 200
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.json() == {
        "key_configs": [
            {"key_id": 11, "config": x25519_key.key_config().to_base64()},
            {"key_id": 22, "config": hybrid_key.key_config().to_base64()},
        ]
    }


def test_post_to_the_well_known_path_is_answered_405(
    app: GatewayApp,
) -> None:
    answer = call_app(app, b"x", path=KEY_CONFIG_PATH)

    assert answer.status == 405
    assert answer.headers["Allow"] == "GET, HEAD"


def test_envelopes_to_old_and_new_key_both_open_while_both_are_loaded(
    upstream: Upstream,
) -> None:
    old = GatewayKey.generate(Suite.X25519, key_id=1)
    new = GatewayKey.generate(Suite.PQ_HYBRID, key_id=2)
    app = create_app(
        [old, new], upstream.url, replay_cache=MemoryReplayCache()
    )

    to_old = call_app(app, seal_report(old, report_id=REPORT_ID))
    to_new = call_app(app, seal_report(new, report_id=OTHER_REPORT_ID))

    assert (to_old.status, to_new.status) == (204, 204)
    assert len(upstream.requests) == 2


def test_after_the_old_key_is_removed_its_envelopes_get_unknown_key_id(
    upstream: Upstream,
) -> None:
    old = GatewayKey.generate(Suite.X25519, key_id=1)
    new = GatewayKey.generate(Suite.PQ_HYBRID, key_id=2)
    app = create_app([new], upstream.url, replay_cache=MemoryReplayCache())

    answer = call_app(app, seal_report(old))

    assert answer.status == 400
    assert answer.json()["error"] == "undecryptable"
    assert "unknown key id" in answer.json()["message"]
    assert upstream.requests == []


def test_two_keys_with_one_key_id_are_refused(upstream: Upstream) -> None:
    from secure_store.errors import GatewayError

    with pytest.raises(GatewayError, match="key id 5"):
        create_app(
            [
                GatewayKey.generate(Suite.X25519, key_id=5),
                GatewayKey.generate(Suite.X25519, key_id=5),
            ],
            upstream.url,
            replay_cache=MemoryReplayCache(),
        )


@pytest.mark.parametrize(
    "url", ["ftp://127.0.0.1/", "127.0.0.1:8080", "http:///x"]
)
def test_an_upstream_url_that_is_not_http_is_refused(
    x25519_key: GatewayKey, url: str
) -> None:
    from secure_store.errors import GatewayError

    with pytest.raises(GatewayError, match="upstream URL"):
        create_app([x25519_key], url, replay_cache=MemoryReplayCache())


# -- failures inside the gateway ------------------------------------------


class BrokenCache:
    """A replay cache whose backing store fails as told."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def claim(self, report_id: bytes, lease_s: float) -> Claim:
        raise self.error

    def mark_forwarded(self, claim: Claim) -> None:
        raise self.error

    def release(self, claim: Claim) -> None:
        raise self.error

    def close(self) -> None:
        pass


def test_an_unavailable_replay_cache_is_answered_503_and_not_forwarded(
    x25519_key: GatewayKey, upstream: Upstream
) -> None:
    app = create_app(
        [x25519_key],
        upstream.url,
        replay_cache=BrokenCache(ReplayCacheError("disk full")),
        retry_after_s=17,
    )

    answer = call_app(app, seal_report(x25519_key))

    assert answer.status == 503
    assert answer.headers["Retry-After"] == "17"
    assert answer.json()["error"] == "replay-cache-unavailable"
    assert upstream.requests == []


def test_an_unexpected_error_is_answered_500_without_details(
    x25519_key: GatewayKey, upstream: Upstream
) -> None:
    app = create_app(
        [x25519_key],
        upstream.url,
        replay_cache=BrokenCache(RuntimeError("secret detail at line 3")),
    )

    answer = call_app(app, seal_report(x25519_key))

    assert answer.status == 500
    assert answer.json() == {
        "error": "internal",
        "message": "internal error",
        "retry": True,
    }


def test_a_report_in_flight_elsewhere_is_answered_503_after_the_wait(
    x25519_key: GatewayKey, upstream: Upstream
) -> None:
    cache = MemoryReplayCache()
    cache.claim(REPORT_ID, lease_s=60)
    app = create_app(
        [x25519_key],
        upstream.url,
        replay_cache=cache,
        in_flight_wait_s=0.1,
        retry_after_s=17,
    )

    answer = call_app(app, seal_report(x25519_key))

    assert answer.status == 503
    assert answer.json()["error"] == "in-flight"
    assert upstream.requests == []


# -- logging --------------------------------------------------------------


def test_each_request_logs_one_line_without_payload_or_address(
    app: GatewayApp,
    x25519_key: GatewayKey,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="secure_store.gateway")

    call_app(app, seal_report(x25519_key))

    lines = [
        r.getMessage()
        for r in caplog.records
        if r.getMessage().startswith("request ")
    ]
    assert len(lines) == 1
    assert lines[0].startswith(
        "request method=POST status=204 outcome=forwarded "
        "size_bucket=2048 key_id=11 latency_ms="
    )
    everything = "\n".join(r.getMessage() for r in caplog.records)
    assert "127.0.0.1" not in everything
    assert "Main/Settings" not in everything
    assert "music" not in everything


def test_a_refused_payload_is_logged_without_its_content(
    app: GatewayApp,
    x25519_key: GatewayKey,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    payload = json.dumps({**CIMP_REPORT, "idsite": "Main/Settings"})

    call_app(app, seal_report(x25519_key, payload.encode()))

    everything = "\n".join(r.getMessage() for r in caplog.records)
    assert "not a CIMP report: $.idsite fails type" in everything
    assert "Main/Settings" not in everything


# -- building from the environment ----------------------------------------


def test_app_from_env_loads_keys_upstream_and_replay_cache(
    tmp_path: Path, upstream: Upstream, x25519_key: GatewayKey
) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    x25519_key.save(keys / "current.json")
    app = app_from_env(
        {
            "SECURE_STORE_GATEWAY_UPSTREAM": upstream.url,
            "SECURE_STORE_GATEWAY_KEY_DIR": str(keys),
            "SECURE_STORE_GATEWAY_REPLAY_CACHE": str(tmp_path / "r.sqlite3"),
            "SECURE_STORE_GATEWAY_MAX_BODY_BYTES": "4096",
        }
    )

    answer = call_app(app, seal_report(x25519_key))

    assert answer.status == 204
    assert app.max_body_bytes == 4096
    assert (tmp_path / "r.sqlite3").exists()
    app.close()


def test_app_from_env_without_upstream_names_the_variable() -> None:
    from secure_store.errors import GatewayError

    with pytest.raises(GatewayError, match="SECURE_STORE_GATEWAY_UPSTREAM"):
        app_from_env({})
