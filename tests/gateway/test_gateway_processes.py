"""Two gateway processes sharing one SQLite file forward a report once."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from gateway_helpers import (
    CIMP_BODY,
    OTHER_REPORT_ID,
    REPORT_ID,
    Upstream,
    seal_report,
)
from gateway_process import GatewayProcess

from secure_store.transport.envelope import GatewayKey, Suite


@pytest.fixture(scope="module")
def key_pair(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[GatewayKey, Path]:
    key = GatewayKey.generate(Suite.PQ_HYBRID, key_id=31)
    path = tmp_path_factory.mktemp("keys") / "gateway.json"
    key.save(path)
    return key, path


@pytest.fixture
def two_gateways(
    key_pair: tuple[GatewayKey, Path], upstream: Upstream, tmp_path: Path
) -> Iterator[tuple[str, str]]:
    shared = str(tmp_path / "shared-replay.sqlite3")
    with (
        GatewayProcess([key_pair[1]], upstream.url, shared) as first,
        GatewayProcess([key_pair[1]], upstream.url, shared) as second,
    ):
        yield first.url, second.url


def post(url: str, envelope: bytes) -> int:
    with requests.Session() as session:
        session.trust_env = False
        answer = session.post(url + "/", data=envelope, timeout=20)
        return answer.status_code


def test_five_posts_alternating_between_processes_forward_once(
    two_gateways: tuple[str, str],
    key_pair: tuple[GatewayKey, Path],
    upstream: Upstream,
) -> None:
    key = key_pair[0]
    urls = [two_gateways[i % 2] for i in range(5)]

    statuses = [post(url, seal_report(key)) for url in urls]

    assert statuses == [204, 204, 204, 204, 204]
    assert upstream.bodies == [CIMP_BODY]


def test_eight_concurrent_posts_to_two_processes_forward_once(
    two_gateways: tuple[str, str],
    key_pair: tuple[GatewayKey, Path],
    upstream: Upstream,
) -> None:
    upstream.delay_s = 0.3
    key = key_pair[0]
    envelopes = [seal_report(key, report_id=OTHER_REPORT_ID) for _ in range(8)]
    barrier = threading.Barrier(8)
    statuses: list[int] = []

    def send(index: int) -> None:
        barrier.wait()
        statuses.append(post(two_gateways[index % 2], envelopes[index]))

    threads = [threading.Thread(target=send, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert statuses == [204] * 8
    assert upstream.bodies == [CIMP_BODY]


def test_a_report_forwarded_by_one_process_is_a_repeat_for_the_other(
    two_gateways: tuple[str, str],
    key_pair: tuple[GatewayKey, Path],
    upstream: Upstream,
) -> None:
    key = key_pair[0]
    first_url, second_url = two_gateways
    post(first_url, seal_report(key, report_id=REPORT_ID))
    upstream.status = 500  # a forward attempt would now fail with 502

    assert post(second_url, seal_report(key, report_id=REPORT_ID)) == 204
    assert len(upstream.requests) == 1
