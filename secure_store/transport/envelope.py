"""HPKE envelopes that seal one padded report to a gateway's key config."""

from __future__ import annotations

import base64
import binascii
import enum
import json
import logging
import os
import secrets
import struct
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

from cryptography.exceptions import InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

from secure_store.errors import EnvelopeError, KeyConfigError

__all__ = [
    "ENVELOPE_VERSION",
    "HEADER_BYTES",
    "KEY_CONFIG_VERSION",
    "MAX_PAYLOAD_BYTES",
    "REPORT_ID_BYTES",
    "Aead",
    "EnvelopeHeader",
    "GatewayKey",
    "Kdf",
    "KeyConfig",
    "OpenedReport",
    "Suite",
    "envelope_size",
    "key_ring",
    "new_report_id",
    "open_envelope",
    "padded_size",
    "parse_header",
    "seal",
]

logger = logging.getLogger(__name__)

#: Bytes of the random id that names one report across all its retries.
REPORT_ID_BYTES = 16
# The shortest key config (X25519, one KDF/AEAD pair) is 60 base64 chars.
MIN_KEY_CONFIG_CHARS = 60

#: The envelope format this module writes and reads.
ENVELOPE_VERSION = 1

#: The binary key config format this module writes and reads.
KEY_CONFIG_VERSION = 1

# version (1) | key id (4) | kem id (2) | kdf id (2) | aead id (2), big
# endian. Four bytes of key id let an operator pick ids at random without
# worrying about collisions between the keys a gateway holds at once.
_HEADER = struct.Struct(">BIHHH")
HEADER_BYTES = _HEADER.size

# Bound to every encapsulation together with the header, so an envelope
# cannot be reinterpreted as another protocol's HPKE ciphertext, nor have
# its header swapped, without failing to open.
_INFO_LABEL = b"secure-store envelope\x00"

# Report id, then the payload length, then the payload, then zeros.
_LENGTH = struct.Struct(">I")
_PREFIX_BYTES = REPORT_ID_BYTES + _LENGTH.size

#: Smallest padded plaintext: every report costs at least this much.
MIN_BUCKET_BYTES = 1024

#: Above this, buckets grow in steps of this size instead of doubling.
LARGE_BUCKET_STEP_BYTES = 64 * 1024

#: Largest padded plaintext this module seals or opens.
MAX_PADDED_BYTES = 16 * 1024 * 1024

#: Largest payload that fits the largest padded plaintext.
MAX_PAYLOAD_BYTES = MAX_PADDED_BYTES - _PREFIX_BYTES

# The AEAD tag both supported AEADs append.
_TAG_BYTES = 16

_X25519_KEY_BYTES = 32
_MLKEM768_PUBLIC_BYTES = 1184
_MLKEM768_SEED_BYTES = 64

# A key file names what it is, so a wrong file fails with a clear message.
_KEY_FILE_TYPE = "secure-store gateway key"
_KEY_FILE_VERSION = 1
_KEY_FILE_MODE = 0o600


class Suite(enum.Enum):
    """The KEM an operator's key uses (RFC 9180 / draft-ietf-hpke-pq ids)."""

    #: DHKEM(X25519, HKDF-SHA256), KEM id 0x0020.
    X25519 = "x25519"
    #: ML-KEM-768 + X25519 (X-Wing), KEM id 0x647A: secure while either
    #: part holds, so a future quantum computer cannot read old reports.
    PQ_HYBRID = "pq-hybrid"

    @property
    def kem_id(self) -> int:
        """The KEM's id in the HPKE registry."""
        return _KEM_IDS[self]

    @property
    def public_key_bytes(self) -> int:
        """Length of an encoded public key of this KEM."""
        return _PUBLIC_KEY_BYTES[self]

    @property
    def enc_bytes(self) -> int:
        """Length of the encapsulated key in every envelope."""
        return int(_HPKE_KEMS[self].enc_length())

    @classmethod
    def from_kem_id(cls, kem_id: int) -> Suite:
        """Return the suite with KEM id ``kem_id``; KeyConfigError if none."""
        for suite, known in _KEM_IDS.items():
            if known == kem_id:
                return suite
        raise KeyConfigError(
            f"KEM {kem_id:#06x} is not supported (supported: "
            f"{_describe_kems()})"
        )


class Kdf(enum.IntEnum):
    """KDFs an envelope may use, by HPKE registry id."""

    HKDF_SHA256 = 0x0001


class Aead(enum.IntEnum):
    """AEADs an envelope may use, by HPKE registry id."""

    AES_256_GCM = 0x0002
    CHACHA20_POLY1305 = 0x0003


_KEM_IDS: dict[Suite, int] = {Suite.X25519: 0x0020, Suite.PQ_HYBRID: 0x647A}
_PUBLIC_KEY_BYTES: dict[Suite, int] = {
    Suite.X25519: _X25519_KEY_BYTES,
    Suite.PQ_HYBRID: _MLKEM768_PUBLIC_BYTES + _X25519_KEY_BYTES,
}
_HPKE_KEMS = {
    Suite.X25519: hpke.KEM.X25519,
    Suite.PQ_HYBRID: hpke.KEM.MLKEM768_X25519,
}
_HPKE_KDFS = {Kdf.HKDF_SHA256: hpke.KDF.HKDF_SHA256}
_HPKE_AEADS = {
    Aead.AES_256_GCM: hpke.AEAD.AES_256_GCM,
    Aead.CHACHA20_POLY1305: hpke.AEAD.CHACHA20_POLY1305,
}

_KDF_IDS = frozenset(int(kdf) for kdf in Kdf)
_AEAD_IDS = frozenset(int(aead) for aead in Aead)

SymmetricPair: TypeAlias = tuple[Kdf, Aead]

#: The (KDF, AEAD) pairs a new key offers, the preferred one first.
DEFAULT_SYMMETRIC: tuple[SymmetricPair, ...] = (
    (Kdf.HKDF_SHA256, Aead.CHACHA20_POLY1305),
    (Kdf.HKDF_SHA256, Aead.AES_256_GCM),
)

_PublicKey: TypeAlias = "x25519.X25519PublicKey | hpke.MLKEM768X25519PublicKey"
_PrivateKey: TypeAlias = (
    "x25519.X25519PrivateKey | hpke.MLKEM768X25519PrivateKey"
)


def _describe_kems() -> str:
    return ", ".join(
        f"{kem_id:#06x} {suite.value}" for suite, kem_id in _KEM_IDS.items()
    )


def _check_key_id(key_id: int, error: type[Exception]) -> None:
    if (
        isinstance(key_id, bool)
        or not isinstance(key_id, int)
        or not 0 <= key_id <= 0xFFFFFFFF
    ):
        raise error(f"key id must be an integer 0..4294967295, not {key_id!r}")


def _parse_public_key(suite: Suite, raw: bytes) -> _PublicKey:
    """Build the HPKE public key of ``suite`` from its encoding."""
    if len(raw) != suite.public_key_bytes:
        raise KeyConfigError(
            f"a {suite.value} public key is {suite.public_key_bytes} bytes, "
            f"not {len(raw)}"
        )
    try:
        if suite is Suite.X25519:
            return x25519.X25519PublicKey.from_public_bytes(raw)
        # X-Wing order: the ML-KEM key first, then the X25519 key.
        return hpke.MLKEM768X25519PublicKey(
            mlkem.MLKEM768PublicKey.from_public_bytes(
                raw[:_MLKEM768_PUBLIC_BYTES]
            ),
            x25519.X25519PublicKey.from_public_bytes(
                raw[_MLKEM768_PUBLIC_BYTES:]
            ),
        )
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise KeyConfigError(
            f"the {suite.value} public key is not a valid key: {exc}"
        ) from exc


def _hpke_suite(suite: Suite, kdf: Kdf, aead: Aead) -> hpke.Suite:
    return hpke.Suite(_HPKE_KEMS[suite], _HPKE_KDFS[kdf], _HPKE_AEADS[aead])


def _known_pairs(
    pairs: Iterable[tuple[int, int]],
) -> tuple[SymmetricPair, ...]:
    """Keep the (KDF, AEAD) pairs this module can use, in their order."""
    known: list[SymmetricPair] = []
    for kdf_id, aead_id in pairs:
        if kdf_id in _KDF_IDS and aead_id in _AEAD_IDS:
            pair = (Kdf(kdf_id), Aead(aead_id))
            if pair not in known:
                known.append(pair)
        else:
            logger.debug(
                "skipping unsupported suite kdf=%#06x aead=%#06x",
                kdf_id,
                aead_id,
            )
    return tuple(known)


# -- padding -----------------------------------------------------------------


def padded_size(payload_bytes: int) -> int:
    """Return the padded plaintext size for a payload of this many bytes.

    The report id and length prefix count towards the size. Sizes are the
    powers of two from 1 KiB to 64 KiB, then multiples of 64 KiB.
    """
    if payload_bytes < 0:
        raise ValueError(f"a payload cannot be {payload_bytes} bytes long")
    content = _PREFIX_BYTES + payload_bytes
    if content <= MIN_BUCKET_BYTES:
        return MIN_BUCKET_BYTES
    if content <= LARGE_BUCKET_STEP_BYTES:
        return 1 << (content - 1).bit_length()
    steps = -(-content // LARGE_BUCKET_STEP_BYTES)
    return steps * LARGE_BUCKET_STEP_BYTES


def envelope_size(suite: Suite, payload_bytes: int) -> int:
    """Return the length of the envelope that carries this many bytes."""
    return (
        HEADER_BYTES
        + suite.enc_bytes
        + padded_size(payload_bytes)
        + _TAG_BYTES
    )


def _pad(report_id: bytes, payload: bytes) -> bytes:
    size = padded_size(len(payload))
    padded = bytearray(size)
    padded[:REPORT_ID_BYTES] = report_id
    padded[REPORT_ID_BYTES:_PREFIX_BYTES] = _LENGTH.pack(len(payload))
    padded[_PREFIX_BYTES : _PREFIX_BYTES + len(payload)] = payload
    return bytes(padded)


def _unpad(padded: bytes) -> tuple[bytes, bytes]:
    """Split a padded plaintext into report id and payload, strictly."""
    if len(padded) < MIN_BUCKET_BYTES:
        raise EnvelopeError(
            f"the sealed report is {len(padded)} bytes, shorter than the "
            f"smallest size bucket ({MIN_BUCKET_BYTES} bytes)"
        )
    (length,) = _LENGTH.unpack_from(padded, REPORT_ID_BYTES)
    if length > len(padded) - _PREFIX_BYTES:
        raise EnvelopeError(
            f"the sealed report claims a {length}-byte payload but holds "
            f"only {len(padded) - _PREFIX_BYTES} bytes"
        )
    # A sender that pads differently stands out; refuse rather than guess.
    if padded_size(length) != len(padded):
        raise EnvelopeError(
            f"a {length}-byte payload belongs in a {padded_size(length)}-"
            f"byte bucket, not a {len(padded)}-byte one"
        )
    end = _PREFIX_BYTES + length
    if padded[end:].count(0) != len(padded) - end:
        raise EnvelopeError("the sealed report's padding is not all zeros")
    return padded[:REPORT_ID_BYTES], padded[_PREFIX_BYTES:end]


# -- key configs -------------------------------------------------------------


@dataclass(frozen=True)
class KeyConfig:
    """The public half of a gateway key, as a client pins it.

    Binary form (all integers big endian): format version (1 byte), key id
    (4), KEM id (2), public key (length fixed by the KEM), length in bytes
    of the pair list (2), then (KDF id (2), AEAD id (2)) pairs, preferred
    first. Text form: standard base64 of that.
    """

    key_id: int
    kem: Suite
    public_key: bytes = field(repr=False)
    symmetric: tuple[SymmetricPair, ...] = DEFAULT_SYMMETRIC
    _public: _PublicKey = field(
        init=False, repr=False, compare=False, hash=False
    )

    def __post_init__(self) -> None:
        _check_key_id(self.key_id, KeyConfigError)
        if not isinstance(self.kem, Suite):
            raise KeyConfigError(f"unknown KEM {self.kem!r}")
        pairs = _known_pairs(self.symmetric)
        if not pairs:
            raise KeyConfigError(
                f"key config {self.key_id} allows no KDF/AEAD pair this "
                "client supports (HKDF-SHA256 with ChaCha20-Poly1305 or "
                "AES-256-GCM)"
            )
        object.__setattr__(self, "symmetric", pairs)
        object.__setattr__(
            self,
            "_public",
            _parse_public_key(self.kem, bytes(self.public_key)),
        )

    @property
    def preferred(self) -> SymmetricPair:
        """The (KDF, AEAD) pair a client uses unless told otherwise."""
        return self.symmetric[0]

    def to_bytes(self) -> bytes:
        """Encode this key config in its binary form."""
        pairs = b"".join(struct.pack(">HH", k, a) for k, a in self.symmetric)
        return b"".join(
            [
                struct.pack(
                    ">BIH", KEY_CONFIG_VERSION, self.key_id, self.kem.kem_id
                ),
                self.public_key,
                struct.pack(">H", len(pairs)),
                pairs,
            ]
        )

    def to_base64(self) -> str:
        """Encode this key config as base64 text for clients to pin."""
        return base64.b64encode(self.to_bytes()).decode("ascii")

    @classmethod
    def from_bytes(cls, data: bytes) -> KeyConfig:
        """Decode the binary form; raise KeyConfigError on any flaw."""
        head = struct.Struct(">BIH")
        if len(data) < head.size:
            raise KeyConfigError(
                f"key config is {len(data)} bytes, too short to hold even "
                "its header"
            )
        version, key_id, kem_id = head.unpack_from(data)
        if version != KEY_CONFIG_VERSION:
            raise KeyConfigError(
                f"key config format version {version} is not supported "
                f"(this client reads version {KEY_CONFIG_VERSION})"
            )
        kem = Suite.from_kem_id(kem_id)
        offset = head.size
        public_key = data[offset : offset + kem.public_key_bytes]
        offset += kem.public_key_bytes
        if len(data) < offset + 2:
            raise KeyConfigError(
                f"key config {key_id} is truncated inside its public key"
            )
        (pairs_bytes,) = struct.unpack_from(">H", data, offset)
        offset += 2
        if pairs_bytes == 0 or pairs_bytes % 4:
            raise KeyConfigError(
                f"key config {key_id} has a {pairs_bytes}-byte KDF/AEAD "
                "list; it must be a non-empty multiple of 4 bytes"
            )
        if len(data) != offset + pairs_bytes:
            raise KeyConfigError(
                f"key config {key_id} should be {offset + pairs_bytes} "
                f"bytes long but is {len(data)}"
            )
        pairs = [
            struct.unpack_from(">HH", data, at)
            for at in range(offset, offset + pairs_bytes, 4)
        ]
        return cls(key_id, kem, public_key, _known_pairs(pairs))

    @classmethod
    def from_base64(cls, text: str) -> KeyConfig:
        """Decode base64 text (standard or URL-safe alphabet)."""
        compact = "".join(text.split())
        if not compact:
            raise KeyConfigError("key config is empty")
        if "-" in compact or "_" in compact:
            compact = compact.replace("-", "+").replace("_", "/")
        compact += "=" * (-len(compact) % 4)
        try:
            data = base64.b64decode(compact, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise KeyConfigError(
                f"key config is not valid base64: {exc}"
            ) from exc
        return cls.from_bytes(data)

    @classmethod
    def load(cls, value: str | os.PathLike[str]) -> KeyConfig:
        """Read a key config from base64 text or from a file holding it.

        A ``PathLike`` is always a file. A string naming an existing file
        is read as one; any other string is decoded as base64.
        """
        if isinstance(value, os.PathLike) or (
            isinstance(value, str) and value and _names_a_file(value)
        ):
            path = Path(value)
            try:
                text = path.read_text(encoding="ascii")
            except (OSError, UnicodeDecodeError) as exc:
                raise KeyConfigError(
                    f"cannot read key config file {path}: {exc}"
                ) from exc
            if text.lstrip().startswith("{"):
                raise KeyConfigError(_json_file_hint(path, text))
            # Lines starting with "#" are comments, as keygen prints them.
            lines = text.splitlines()
            text = "\n".join(
                x for x in lines if not x.lstrip().startswith("#")
            )
            try:
                return cls.from_base64(text)
            except KeyConfigError as exc:
                raise KeyConfigError(f"{path}: {exc}") from exc
        if not isinstance(value, str):
            raise KeyConfigError(
                f"a key config is base64 text or a path, not {value!r}"
            )
        try:
            return cls.from_base64(value)
        except KeyConfigError as exc:
            # A key config is 60 or more characters of base64, which never
            # holds a dot or a slash: this was probably a file name.
            looks_like_path = len(value) < MIN_KEY_CONFIG_CHARS or any(
                c in value for c in "./\\"
            )
            if looks_like_path:
                raise KeyConfigError(
                    f"key config {value!r} is neither an existing file nor "
                    f"valid base64: {exc}"
                ) from exc
            raise


# -- gateway keys ------------------------------------------------------------


class GatewayKey:
    """A gateway's private key: opens envelopes sealed to its key config."""

    def __init__(
        self,
        key_id: int,
        suite: Suite,
        x25519_key: x25519.X25519PrivateKey,
        mlkem_key: mlkem.MLKEM768PrivateKey | None = None,
        symmetric: Iterable[tuple[int, int]] = DEFAULT_SYMMETRIC,
    ) -> None:
        _check_key_id(key_id, KeyConfigError)
        if (suite is Suite.PQ_HYBRID) != (mlkem_key is not None):
            raise KeyConfigError(
                f"a {suite.value} gateway key needs "
                + ("an" if suite is Suite.PQ_HYBRID else "no")
                + " ML-KEM-768 part"
            )
        self.key_id = key_id
        self.suite = suite
        self._x25519 = x25519_key
        self._mlkem = mlkem_key
        self._private: _PrivateKey = (
            x25519_key
            if mlkem_key is None
            else hpke.MLKEM768X25519PrivateKey(mlkem_key, x25519_key)
        )
        # Building the config checks the pairs and the public key once.
        self._config = KeyConfig(
            key_id, suite, self._public_bytes(), _known_pairs(symmetric)
        )

    def __repr__(self) -> str:
        return f"GatewayKey(key_id={self.key_id}, suite={self.suite.value})"

    @classmethod
    def generate(
        cls,
        suite: Suite = Suite.PQ_HYBRID,
        key_id: int | None = None,
        symmetric: Iterable[tuple[int, int]] = DEFAULT_SYMMETRIC,
    ) -> GatewayKey:
        """Make a fresh key; a random key id unless one is given."""
        if key_id is None:
            key_id = secrets.randbits(32)
        mlkem_key = (
            mlkem.MLKEM768PrivateKey.generate()
            if suite is Suite.PQ_HYBRID
            else None
        )
        return cls(
            key_id,
            suite,
            x25519.X25519PrivateKey.generate(),
            mlkem_key,
            symmetric,
        )

    def key_config(self) -> KeyConfig:
        """Return the public key config clients pin."""
        return self._config

    @property
    def private_key(self) -> _PrivateKey:
        """The HPKE private key (for opening envelopes)."""
        return self._private

    def _public_bytes(self) -> bytes:
        x_public = self._x25519.public_key().public_bytes_raw()
        if self._mlkem is None:
            return x_public
        return self._mlkem.public_key().public_bytes_raw() + x_public

    def to_json(self) -> str:
        """Serialise the private key (secret material: keep it 0600)."""
        document: dict[str, Any] = {
            "type": _KEY_FILE_TYPE,
            "version": _KEY_FILE_VERSION,
            "key_id": self.key_id,
            "suite": self.suite.value,
            "symmetric": [[int(k), int(a)] for k, a in self._config.symmetric],
            "x25519_private": _b64(self._x25519.private_bytes_raw()),
        }
        if self._mlkem is not None:
            document["mlkem768_seed"] = _b64(self._mlkem.private_bytes_raw())
        document["key_config"] = self._config.to_base64()
        return json.dumps(document, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> GatewayKey:
        """Parse what :meth:`to_json` wrote; KeyConfigError on any flaw."""
        try:
            document = json.loads(text)
        except ValueError as exc:
            raise KeyConfigError(
                f"gateway key is not valid JSON: {exc}"
            ) from exc
        if not isinstance(document, dict):
            raise KeyConfigError("gateway key is not a JSON object")
        if document.get("type") != _KEY_FILE_TYPE:
            raise KeyConfigError(
                f"not a gateway key file (type {document.get('type')!r})"
            )
        if document.get("version") != _KEY_FILE_VERSION:
            raise KeyConfigError(
                f"gateway key file version {document.get('version')!r} is "
                f"not supported (this version reads {_KEY_FILE_VERSION})"
            )
        try:
            suite = Suite(document["suite"])
            key_id = document["key_id"]
            symmetric = [
                (int(kdf), int(aead)) for kdf, aead in document["symmetric"]
            ]
            x25519_key = x25519.X25519PrivateKey.from_private_bytes(
                _unb64(document["x25519_private"], _X25519_KEY_BYTES)
            )
            mlkem_key = None
            if suite is Suite.PQ_HYBRID:
                mlkem_key = mlkem.MLKEM768PrivateKey.from_seed_bytes(
                    _unb64(document["mlkem768_seed"], _MLKEM768_SEED_BYTES)
                )
        except KeyError as exc:
            raise KeyConfigError(
                f"gateway key file lacks the field {exc.args[0]!r}"
            ) from exc
        except (TypeError, ValueError, UnsupportedAlgorithm) as exc:
            raise KeyConfigError(
                f"gateway key file is invalid: {exc}"
            ) from exc
        key = cls(key_id, suite, x25519_key, mlkem_key, symmetric)
        written = document.get("key_config")
        if written is not None and written != key._config.to_base64():
            raise KeyConfigError(
                "gateway key file's key_config does not match its private "
                "key; the file was edited or mixed up"
            )
        return key

    def save(
        self, path: str | os.PathLike[str], *, overwrite: bool = False
    ) -> None:
        """Write the key to ``path`` as JSON, mode 0600, atomically.

        An existing file is kept unless ``overwrite`` is true: replacing a
        key by accident would make every report sealed to it unreadable.
        """
        target = Path(path)
        folder = target.parent
        try:
            fd, temp_name = tempfile.mkstemp(
                prefix=f".{target.name}.", suffix=".tmp", dir=folder
            )
        except OSError as exc:
            raise KeyConfigError(
                f"cannot write gateway key to {target}: {exc}"
            ) from exc
        temp = Path(temp_name)
        try:
            os.fchmod(fd, _KEY_FILE_MODE)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(self.to_json())
                handle.flush()
                os.fsync(handle.fileno())
            if overwrite:
                os.replace(temp, target)
            else:
                # link() refuses to replace an existing file, atomically.
                os.link(temp, target)
                temp.unlink()
            _fsync_folder(folder)
        except FileExistsError as exc:
            raise KeyConfigError(
                f"{target} already exists; refusing to overwrite a gateway "
                "key (pass overwrite=True to replace it)"
            ) from exc
        except OSError as exc:
            raise KeyConfigError(
                f"cannot write gateway key to {target}: {exc}"
            ) from exc
        finally:
            temp.unlink(missing_ok=True)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> GatewayKey:
        """Read a key file written by :meth:`save`."""
        target = Path(path)
        try:
            text = target.read_text(encoding="utf-8")
            mode = target.stat().st_mode & 0o777
        except (OSError, UnicodeDecodeError) as exc:
            raise KeyConfigError(
                f"cannot read gateway key file {target}: {exc}"
            ) from exc
        if os.name == "posix" and mode & 0o077:
            logger.warning(
                "gateway key file %s has mode %o; others may read it "
                "(expected 600)",
                target,
                mode,
            )
        try:
            return cls.from_json(text)
        except KeyConfigError as exc:
            raise KeyConfigError(f"{target}: {exc}") from exc


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _unb64(text: object, length: int) -> bytes:
    if not isinstance(text, str):
        raise ValueError(f"expected base64 text, found {type(text).__name__}")
    raw = base64.b64decode(text, validate=True)
    if len(raw) != length:
        raise ValueError(f"expected {length} bytes, found {len(raw)}")
    return raw


def _fsync_folder(folder: Path) -> None:
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def key_ring(
    keys: Mapping[int, GatewayKey] | Iterable[GatewayKey],
) -> dict[int, GatewayKey]:
    """Index gateway keys by key id; KeyConfigError on a repeated id."""
    if isinstance(keys, Mapping):
        ring: dict[int, GatewayKey] = {}
        for key_id, key in keys.items():
            if key.key_id != key_id:
                raise KeyConfigError(
                    f"gateway key {key.key_id} is filed under key id {key_id}"
                )
            ring[key_id] = key
        return ring
    ring = {}
    for key in keys:
        if key.key_id in ring:
            raise KeyConfigError(
                f"two gateway keys share key id {key.key_id}; give each "
                "key its own id"
            )
        ring[key.key_id] = key
    return ring


# -- envelopes ---------------------------------------------------------------


@dataclass(frozen=True)
class EnvelopeHeader:
    """The clear-text header that starts every envelope."""

    version: int
    key_id: int
    kem_id: int
    kdf_id: int
    aead_id: int

    def to_bytes(self) -> bytes:
        """Encode the header as it appears on the wire."""
        return _HEADER.pack(
            self.version, self.key_id, self.kem_id, self.kdf_id, self.aead_id
        )


@dataclass(frozen=True)
class OpenedReport:
    """What an envelope held, and which gateway key opened it."""

    report_id: bytes
    payload: bytes = field(repr=False)
    key_id: int


def new_report_id() -> bytes:
    """Return a fresh random report id."""
    return secrets.token_bytes(REPORT_ID_BYTES)


def parse_header(envelope: bytes) -> EnvelopeHeader:
    """Read an envelope's header without opening it; EnvelopeError if bad."""
    if len(envelope) < HEADER_BYTES:
        raise EnvelopeError(
            f"envelope is {len(envelope)} bytes, shorter than its "
            f"{HEADER_BYTES}-byte header"
        )
    header = EnvelopeHeader(*_HEADER.unpack_from(envelope))
    if header.version != ENVELOPE_VERSION:
        raise EnvelopeError(
            f"envelope version {header.version} is not supported (this "
            f"gateway reads version {ENVELOPE_VERSION})"
        )
    return header


def seal(
    key_config: KeyConfig,
    report_id: bytes,
    payload: bytes,
    *,
    aead: Aead | None = None,
) -> bytes:
    """Seal ``payload`` with its report id to ``key_config``.

    Uses the key config's preferred KDF/AEAD pair, or ``aead`` when given
    (it must be one the key config allows). Each call encapsulates afresh,
    so sealing the same report twice gives unrelated envelopes.
    """
    if len(report_id) != REPORT_ID_BYTES:
        raise EnvelopeError(
            f"a report id is {REPORT_ID_BYTES} bytes, not {len(report_id)}"
        )
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise EnvelopeError(
            f"payload of {len(payload)} bytes exceeds the {MAX_PAYLOAD_BYTES}"
            "-byte limit"
        )
    kdf, chosen = key_config.preferred
    if aead is not None:
        allowed = [a for k, a in key_config.symmetric if k is kdf]
        if aead not in allowed:
            raise KeyConfigError(
                f"key config {key_config.key_id} does not allow {aead.name}"
            )
        chosen = aead
    header = EnvelopeHeader(
        ENVELOPE_VERSION,
        key_config.key_id,
        key_config.kem.kem_id,
        kdf,
        chosen,
    ).to_bytes()
    suite = _hpke_suite(key_config.kem, kdf, chosen)
    sealed = suite.encrypt(
        _pad(report_id, payload),
        key_config._public,
        _INFO_LABEL + header,
    )
    return header + sealed


def open_envelope(
    envelope: bytes,
    keys: Mapping[int, GatewayKey] | Iterable[GatewayKey],
) -> OpenedReport:
    """Open an envelope with whichever of ``keys`` it was sealed to.

    Raises EnvelopeError when the envelope is malformed, names a key or
    suite we lack, was altered, or is padded wrongly.
    """
    header = parse_header(envelope)
    ring = key_ring(keys)
    key = ring.get(header.key_id)
    if key is None:
        raise EnvelopeError(
            f"envelope is sealed to key id {header.key_id}, which this "
            "gateway does not hold"
        )
    if header.kem_id != key.suite.kem_id:
        raise EnvelopeError(
            f"envelope names KEM {header.kem_id:#06x} but key "
            f"{key.key_id} is {key.suite.kem_id:#06x} ({key.suite.value})"
        )
    pair = (header.kdf_id, header.aead_id)
    if pair not in key.key_config().symmetric:
        raise EnvelopeError(
            f"envelope uses KDF {header.kdf_id:#06x} with AEAD "
            f"{header.aead_id:#06x}, which key {key.key_id} does not allow"
        )
    body = envelope[HEADER_BYTES:]
    shortest = key.suite.enc_bytes + MIN_BUCKET_BYTES + _TAG_BYTES
    if len(body) < shortest:
        raise EnvelopeError(
            f"envelope is truncated: {len(envelope)} bytes, the smallest "
            f"{key.suite.value} envelope is {HEADER_BYTES + shortest}"
        )
    if len(body) > key.suite.enc_bytes + MAX_PADDED_BYTES + _TAG_BYTES:
        raise EnvelopeError(
            f"envelope of {len(envelope)} bytes exceeds the size limit"
        )
    suite = _hpke_suite(key.suite, Kdf(header.kdf_id), Aead(header.aead_id))
    try:
        padded = suite.decrypt(
            body, key.private_key, _INFO_LABEL + header.to_bytes()
        )
    except (InvalidTag, ValueError) as exc:
        raise EnvelopeError(
            "envelope failed to open: it was altered, truncated, or sealed "
            f"to a different key than key id {key.key_id}"
        ) from exc
    report_id, payload = _unpad(padded)
    return OpenedReport(report_id, payload, key.key_id)


def _names_a_file(value: str) -> bool:
    """Tell whether ``value`` names an existing file (base64 text, being
    longer than a file name may be, names none)."""
    try:
        return Path(value).is_file()
    except OSError:
        return False


def _json_file_hint(path: Path, text: str) -> str:
    """Say what a JSON file given as a key config is, and what to pin."""
    if '"key_configs"' in text:
        return (
            f"{path} is the gateway's list of published key configs "
            "(/.well-known/secure-store-key-config); pin one of them: "
            'the base64 text of its "config" field'
        )
    return (
        f"{path} looks like a gateway private key (JSON), not a key "
        "config; pin what `secure-store gateway key-config --key-file` "
        "prints instead, and keep the key secret"
    )
