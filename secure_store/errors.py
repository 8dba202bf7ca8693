"""The exception hierarchy of secure-store, rooted at SecureStoreError."""

from __future__ import annotations


class SecureStoreError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigurationError(SecureStoreError, ValueError):
    """A Clean Insights configuration or a constructor argument is invalid.

    The message names the key and what is wrong with it, for example
    ``campaigns.feature1.end is before start``.
    """


# -- at rest -----------------------------------------------------------------


class StorageError(SecureStoreError):
    """The sealed store could not be read or written."""


class KeyringError(StorageError):
    """The OS keyring could not give or keep a store's keyset."""


class KeyringUnavailableError(KeyringError):
    """No usable keyring backend exists on this machine."""


class InsecureKeyringError(KeyringUnavailableError):
    """The keyring backend keeps secrets in plaintext and was not allowed."""


class KeyringLockedError(KeyringError):
    """The keyring is locked or did not answer within its deadline."""


class KeyMissingError(KeyringError):
    """The keyring answered, but holds no key for this store or key id."""


class StoreFileError(StorageError):
    """A sealed store file is damaged, foreign or of an unknown version."""


class StoreLockedError(StorageError):
    """Another process holds the store's write lock past the deadline."""


class StoreConflictError(StorageError):
    """Another process changed the store file since this one loaded it."""


# -- in transit --------------------------------------------------------------


class TransportError(SecureStoreError):
    """Sealing or sending a report failed."""


class KeyConfigError(TransportError):
    """A gateway key config is malformed or names nothing we can use."""


class EnvelopeError(TransportError):
    """An envelope is malformed, forged, or sealed to a key we lack."""


class ProxyConfigError(TransportError, ValueError):
    """A proxy URL or server URL breaks the transport policy."""


class SendError(TransportError):
    """A report was not delivered; ``status`` is the HTTP status, if any.

    The message of an HTTP failure starts with ``HTTP Error <status>: ``,
    as the Clean Insights server test expects.
    """

    retryable: bool = True

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ProxyUnreachableError(SendError):
    """Nothing answered on the proxy's address."""


class ProxyRefusedError(SendError):
    """The proxy answered but refused the connection or our credentials."""


class ServerUnreachableError(SendError):
    """The proxy could not reach the server."""


class SendTimeoutError(SendError):
    """The send did not finish within its deadline."""


class RejectedError(SendError):
    """The server answered 4xx: the report must not be retried as is."""

    retryable = False


class ServerFailureError(SendError):
    """The server answered 5xx or 429, also after retries."""


# -- gateway -----------------------------------------------------------------


class GatewayError(SecureStoreError):
    """The gateway could not be set up or could not forward a report."""


class ReplayCacheError(GatewayError):
    """The replay cache could not be read or written."""
