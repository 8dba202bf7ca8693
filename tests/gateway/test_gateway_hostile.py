"""10,000 hostile bodies get a 400 or 413, never a 500 or a traceback."""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from gateway_helpers import (
    CIMP_BODY,
    CIMP_REPORT,
    REPORT_ID,
    Upstream,
    call_app,
    running_upstream,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secure_store.gateway import GatewayApp, MemoryReplayCache, create_app
from secure_store.transport.envelope import GatewayKey, Suite, seal

# Four properties of 2,500 examples each: 10,000 bodies in all.
EXAMPLES_PER_PROPERTY = 2_500
MAX_BODY_BYTES = 8192

KEYS = [
    GatewayKey.generate(Suite.X25519, key_id=11),
    GatewayKey.generate(Suite.PQ_HYBRID, key_id=22),
]
VALID_ENVELOPES = [seal(k.key_config(), REPORT_ID, CIMP_BODY) for k in KEYS]

HOSTILE = settings(
    max_examples=EXAMPLES_PER_PROPERTY,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)


class ErrorRecords(logging.Handler):
    """Collects ERROR records: the gateway logs one for every 500 or bug."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def refusing_upstream() -> Iterator[Upstream]:
    # A payload that happens to be a valid report is forwarded; this
    # upstream refuses it, so every hostile body must end in 400 or 413.
    with running_upstream() as upstream:
        upstream.status = 400
        yield upstream


@pytest.fixture(scope="module")
def hostile_app(refusing_upstream: Upstream) -> Iterator[GatewayApp]:
    app = create_app(
        KEYS,
        refusing_upstream.url,
        replay_cache=MemoryReplayCache(),
        max_body_bytes=MAX_BODY_BYTES,
        upstream_timeout_s=5.0,
    )
    handler = ErrorRecords()
    logging.getLogger("secure_store").addHandler(handler)
    yield app
    logging.getLogger("secure_store").removeHandler(handler)
    assert handler.messages == []


def assert_refused(
    app: GatewayApp, body: bytes, content_length: str | None = "auto"
) -> None:
    answer = call_app(app, body, content_length=content_length)

    assert answer.status in (400, 413), answer.body
    document = answer.json()
    assert set(document) >= {"error", "message", "retry"}
    assert document["retry"] is False
    assert b"Traceback" not in answer.body


# -- strategies -----------------------------------------------------------

# Non-zero, so the payload check is reached (zeros mean "no report id").
report_ids = st.integers(1, 2**128 - 1).map(lambda n: n.to_bytes(16, "big"))

content_lengths = st.one_of(
    st.just("auto"),
    st.none(),
    st.text(max_size=12),
    st.integers(-(10**20), 10**20).map(str),
)


@st.composite
def mutated_envelopes(draw: st.DrawFn) -> bytes:
    envelope = bytearray(draw(st.sampled_from(VALID_ENVELOPES)))
    operations = st.tuples(
        st.sampled_from(["flip", "truncate", "insert", "delete", "header"]),
        st.integers(0, len(envelope) + 16),
        st.binary(min_size=1, max_size=16),
    )
    for operation, position, data in draw(
        st.lists(operations, min_size=1, max_size=4)
    ):
        position %= len(envelope) + 1
        if operation == "flip" and position < len(envelope):
            envelope[position] ^= data[0] or 0x80
        elif operation == "truncate":
            del envelope[position:]
        elif operation == "insert":
            envelope[position:position] = data
        elif operation == "delete":
            del envelope[position : position + len(data)]
        elif operation == "header":
            start = position % 11
            envelope[start : start + len(data)] = data
        if not envelope:
            envelope = bytearray(b"\x01")
    mutated = bytes(envelope)
    # Every mutation above changes the envelope, except flipping a byte
    # past the end; the valid original would rightly be forwarded.
    return mutated if mutated not in VALID_ENVELOPES else mutated + b"\0"


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def mutated_reports(draw: st.DrawFn) -> bytes:
    report: Any = copy.deepcopy(CIMP_REPORT)
    for _ in range(draw(st.integers(1, 3))):
        target: Any = report
        path = draw(
            st.sampled_from(
                [
                    (),
                    ("visits",),
                    ("events",),
                    ("visits", 0),
                    ("events", 0),
                ]
            )
        )
        for step in path:
            target = target[step] if _has(target, step) else target
        if isinstance(target, dict):
            choice = draw(st.sampled_from(["replace", "delete", "add"]))
            keys = sorted(target) or ["idsite"]
            name = draw(st.sampled_from(keys))
            if choice == "delete":
                target.pop(name, None)
            elif choice == "add":
                target[draw(st.text(max_size=10))] = draw(json_values)
            else:
                target[name] = draw(json_values)
        elif isinstance(target, list):
            target.append(draw(json_values))
    text = json.dumps(report, allow_nan=True)
    if draw(st.booleans()):
        # Also cut the JSON short or garble one character of it.
        cut = draw(st.integers(0, len(text)))
        text = text[:cut] + draw(st.text(max_size=3))
    return text.encode("utf-8", "surrogatepass")


def _has(target: Any, step: Any) -> bool:
    if isinstance(target, dict):
        return step in target
    return isinstance(target, list) and 0 <= step < len(target)


# -- properties -----------------------------------------------------------


@HOSTILE
@given(body=st.binary(max_size=MAX_BODY_BYTES + 512), length=content_lengths)
def test_random_bodies_are_refused(
    hostile_app: GatewayApp, body: bytes, length: str | None
) -> None:
    assert_refused(hostile_app, body, length)


@HOSTILE
@given(envelope=mutated_envelopes())
def test_mutated_envelopes_are_refused(
    hostile_app: GatewayApp, envelope: bytes
) -> None:
    assert_refused(hostile_app, envelope)


@HOSTILE
@given(
    payload=st.binary(max_size=2048) | st.text(max_size=200).map(str.encode),
    report_id=report_ids,
    key=st.sampled_from(KEYS),
)
def test_sealed_payloads_that_are_not_json_reports_are_refused(
    hostile_app: GatewayApp, payload: bytes, report_id: bytes, key: GatewayKey
) -> None:
    assert_refused(hostile_app, seal(key.key_config(), report_id, payload))


@HOSTILE
@given(
    payload=mutated_reports()
    | json_values.map(lambda v: json.dumps(v).encode()),
    report_id=report_ids,
    key=st.sampled_from(KEYS),
)
def test_sealed_mutated_reports_are_refused(
    hostile_app: GatewayApp, payload: bytes, report_id: bytes, key: GatewayKey
) -> None:
    assert_refused(hostile_app, seal(key.key_config(), report_id, payload))
