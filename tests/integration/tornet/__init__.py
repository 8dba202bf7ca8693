"""A private, loopback-only Tor network for the integration tests."""

from __future__ import annotations

from .network import TorNetwork, TorNetworkError, running_network

__all__ = ["TorNetwork", "TorNetworkError", "running_network"]
