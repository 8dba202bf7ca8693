"""secure-store: an encrypted, Tor-routed Store for Clean Insights."""

from __future__ import annotations

from .cleaninsights import (
    Campaign,
    CampaignConsent,
    CleanInsights,
    Configuration,
    Consent,
    ConsentRequestUi,
    Consents,
    ConsentState,
    DataPoint,
    Event,
    EventAggregationRule,
    Feature,
    FeatureConsent,
    FileStore,
    Insights,
    MemoryStore,
    Store,
    Visit,
)
from .errors import (
    ConfigurationError,
    EnvelopeError,
    KeyConfigError,
    KeyMissingError,
    KeyringLockedError,
    KeyringUnavailableError,
    ProxyConfigError,
    SecureStoreError,
    SendError,
    StoreFileError,
    StoreLockedError,
)
from .secure_store import SecureStore
from .transport.envelope import GatewayKey, KeyConfig, Suite

__version__ = "0.1.0"

__all__ = [
    "Campaign",
    "CampaignConsent",
    "CleanInsights",
    "Configuration",
    "ConfigurationError",
    "Consent",
    "ConsentRequestUi",
    "ConsentState",
    "Consents",
    "DataPoint",
    "EnvelopeError",
    "Event",
    "EventAggregationRule",
    "Feature",
    "FeatureConsent",
    "FileStore",
    "GatewayKey",
    "Insights",
    "KeyConfig",
    "KeyConfigError",
    "KeyMissingError",
    "KeyringLockedError",
    "KeyringUnavailableError",
    "MemoryStore",
    "ProxyConfigError",
    "SecureStore",
    "SecureStoreError",
    "SendError",
    "Store",
    "StoreFileError",
    "StoreLockedError",
    "Suite",
    "Visit",
]
