"""secure-store: an encrypted, Tor-routed Store for Clean Insights."""

__version__ = "0.1.0"
