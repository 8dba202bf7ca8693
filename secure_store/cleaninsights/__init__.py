"""A faithful Python core of the Clean Insights SDK (no crypto, no proxies)."""

from __future__ import annotations

from .campaign import Campaign, EventAggregationRule
from .clean_insights import CleanInsights, ConsentRequestUi
from .configuration import Configuration
from .consents import (
    CampaignConsent,
    Consent,
    Consents,
    ConsentState,
    Feature,
    FeatureConsent,
)
from .datapoints import DataPoint, Event, Visit
from .insights import Insights
from .store import FileStore, MemoryStore, Store

__all__ = [
    "Campaign",
    "CampaignConsent",
    "CleanInsights",
    "Configuration",
    "Consent",
    "ConsentRequestUi",
    "ConsentState",
    "Consents",
    "DataPoint",
    "Event",
    "EventAggregationRule",
    "Feature",
    "FeatureConsent",
    "FileStore",
    "Insights",
    "MemoryStore",
    "Store",
    "Visit",
]
