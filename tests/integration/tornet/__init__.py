"""A private, loopback-only Tor network for the integration tests."""

from __future__ import annotations

from .network import LoneTor, TorNetwork, TorNetworkError

__all__ = ["LoneTor", "TorNetwork", "TorNetworkError"]
