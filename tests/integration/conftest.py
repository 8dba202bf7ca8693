"""Fixtures that start Tor on 127.0.0.1: a private network and a lone tor."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator

import pytest

try:  # tests/integration as a package, or as a plain rootdir folder
    from .tornet import LoneTor, TorNetwork
except ImportError:
    from tornet import LoneTor, TorNetwork  # type: ignore[no-redef]

log = logging.getLogger(__name__)
# stem logs every closed control socket at INFO; a failure's report
# would drown in them.
logging.getLogger("stem").setLevel(logging.WARNING)


def _require_tor() -> None:
    if shutil.which("tor") is None or shutil.which("tor-gencert") is None:
        pytest.fail("tor and tor-gencert are needed: apt-get install tor")


@pytest.fixture(scope="session")
def tor_network(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[TorNetwork]:
    """A private Tor network (3 authorities, 2 relays, 1 exit, a client,
    an onion-service host) on a free port block of 127.0.0.1, ready: the
    client is bootstrapped and an onion service answered through it.

    Started once per session (~25 s); every tor is stopped by PID after
    the session, also when the start fails half-way.
    """
    _require_tor()
    network = TorNetwork(tmp_path_factory.mktemp("tornet"))
    try:
        network.start()
        log.info("tornet started: %s", network.times.as_dict())
        yield network
    finally:
        network.stop()


@pytest.fixture
def lone_tor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoneTor]:
    """One real tor client whose only (fake) authority is a closed port
    on 127.0.0.1: real SocksPort and ControlPort, never bootstrapped."""
    if shutil.which("tor") is None:
        pytest.skip("tor is not installed")
    tor = LoneTor(tmp_path_factory.mktemp("lonetor"))
    try:
        tor.start()
        yield tor
    finally:
        tor.stop()


def pytest_configure(config: pytest.Config) -> None:
    # stem 1.8 still calls Thread.setDaemon(); nothing we can change.
    config.addinivalue_line(
        "filterwarnings", "ignore:setDaemon:DeprecationWarning:stem.*"
    )
