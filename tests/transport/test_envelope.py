"""Envelope format, key configs and gateway key files, as specified."""

from __future__ import annotations

import base64
import json
import os
import stat
import struct
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hpke
from hypothesis import given, settings
from hypothesis import strategies as st

from secure_store.errors import EnvelopeError, KeyConfigError
from secure_store.transport.envelope import (
    REPORT_ID_BYTES,
    Aead,
    GatewayKey,
    Kdf,
    KeyConfig,
    Suite,
    envelope_size,
    key_ring,
    new_report_id,
    open_envelope,
    padded_size,
    parse_header,
    seal,
)

REPORT_ID = bytes(range(16))
PAYLOAD = b'{"idsite": 1, "visits": []}'

# Written out from the format: header 11 bytes, enc (32 for X25519, 1120
# for ML-KEM-768 + X25519), padded plaintext, 16-byte AEAD tag.
X25519_1K_ENVELOPE_BYTES = 11 + 32 + 1024 + 16
HYBRID_1K_ENVELOPE_BYTES = 11 + 1120 + 1024 + 16


@pytest.fixture(scope="module")
def x25519_key() -> GatewayKey:
    return GatewayKey.generate(Suite.X25519, key_id=7)


@pytest.fixture(scope="module")
def hybrid_key() -> GatewayKey:
    return GatewayKey.generate(Suite.PQ_HYBRID, key_id=8)


def _key(suite: Suite, x25519_key: GatewayKey, hybrid_key: GatewayKey):
    return x25519_key if suite is Suite.X25519 else hybrid_key


def _seal_raw(config: KeyConfig, aead: Aead, plaintext: bytes) -> bytes:
    """Seal an arbitrary padded plaintext exactly as the format says."""
    header = struct.pack(
        ">BIHHH", 1, config.key_id, config.kem.kem_id, 1, aead
    )
    public = config._public
    kem = (
        hpke.KEM.X25519
        if config.kem is Suite.X25519
        else hpke.KEM.MLKEM768_X25519
    )
    aead_hpke = (
        hpke.AEAD.CHACHA20_POLY1305
        if aead is Aead.CHACHA20_POLY1305
        else hpke.AEAD.AES_256_GCM
    )
    suite = hpke.Suite(kem, hpke.KDF.HKDF_SHA256, aead_hpke)
    info = b"secure-store envelope\x00" + header
    return header + suite.encrypt(plaintext, public, info)


# -- round trips -------------------------------------------------------------


@pytest.mark.parametrize("aead", list(Aead))
@pytest.mark.parametrize("suite", list(Suite))
def test_every_suite_round_trips(
    suite: Suite,
    aead: Aead,
    x25519_key: GatewayKey,
    hybrid_key: GatewayKey,
) -> None:
    key = _key(suite, x25519_key, hybrid_key)

    envelope = seal(key.key_config(), REPORT_ID, PAYLOAD, aead=aead)
    opened = open_envelope(envelope, [key])

    assert opened.report_id == REPORT_ID
    assert opened.payload == PAYLOAD
    assert opened.key_id == key.key_id
    assert parse_header(envelope).aead_id == int(aead)


def test_empty_payload_round_trips(x25519_key: GatewayKey) -> None:
    envelope = seal(x25519_key.key_config(), REPORT_ID, b"")

    assert open_envelope(envelope, [x25519_key]).payload == b""


def test_default_suite_is_hybrid_with_chacha20() -> None:
    key = GatewayKey.generate()

    header = parse_header(seal(key.key_config(), REPORT_ID, PAYLOAD))

    assert (header.kem_id, header.kdf_id, header.aead_id) == (
        0x647A,
        0x0001,
        0x0003,
    )


def test_header_carries_version_key_id_and_registry_ids(
    x25519_key: GatewayKey,
) -> None:
    envelope = seal(
        x25519_key.key_config(), REPORT_ID, PAYLOAD, aead=Aead.AES_256_GCM
    )

    assert envelope[:11] == bytes.fromhex("0100000007002000010002")


def test_sealing_twice_gives_unrelated_envelopes(
    x25519_key: GatewayKey,
) -> None:
    first = seal(x25519_key.key_config(), REPORT_ID, PAYLOAD)
    second = seal(x25519_key.key_config(), REPORT_ID, PAYLOAD)

    assert first[:11] == second[:11]
    assert first[11:43] != second[11:43]
    assert first[43:] != second[43:]


def test_key_ring_mapping_opens_too(hybrid_key: GatewayKey) -> None:
    envelope = seal(hybrid_key.key_config(), REPORT_ID, PAYLOAD)

    opened = open_envelope(envelope, {8: hybrid_key})

    assert opened.payload == PAYLOAD


def test_new_report_ids_are_16_random_bytes() -> None:
    ids = {new_report_id() for _ in range(100)}

    assert len(ids) == 100
    assert {len(i) for i in ids} == {REPORT_ID_BYTES}


# -- refusals ----------------------------------------------------------------


@pytest.mark.parametrize("suite", list(Suite))
def test_every_flipped_bit_is_refused(
    suite: Suite, x25519_key: GatewayKey, hybrid_key: GatewayKey
) -> None:
    key = _key(suite, x25519_key, hybrid_key)
    envelope = seal(key.key_config(), REPORT_ID, b"")
    accepted = []

    for position in range(len(envelope)):
        for bit in range(8):
            altered = bytearray(envelope)
            altered[position] ^= 1 << bit
            try:
                open_envelope(bytes(altered), [key])
            except EnvelopeError:
                continue
            accepted.append((position, bit))

    assert accepted == []


def test_unknown_key_id_is_refused(
    x25519_key: GatewayKey, hybrid_key: GatewayKey
) -> None:
    envelope = seal(x25519_key.key_config(), REPORT_ID, PAYLOAD)

    with pytest.raises(EnvelopeError, match="key id 7, which this gateway"):
        open_envelope(envelope, [hybrid_key])


def test_other_key_under_the_same_id_is_refused(
    x25519_key: GatewayKey,
) -> None:
    impostor = GatewayKey.generate(Suite.X25519, key_id=7)
    envelope = seal(impostor.key_config(), REPORT_ID, PAYLOAD)

    with pytest.raises(EnvelopeError, match="failed to open"):
        open_envelope(envelope, [x25519_key])


def test_envelope_of_another_kem_is_refused(
    hybrid_key: GatewayKey,
) -> None:
    same_id_x25519 = GatewayKey.generate(Suite.X25519, key_id=8)
    envelope = seal(same_id_x25519.key_config(), REPORT_ID, PAYLOAD)

    with pytest.raises(EnvelopeError, match="KEM 0x0020 but key 8 is 0x647a"):
        open_envelope(envelope, [hybrid_key])


def test_aead_the_key_does_not_allow_is_refused() -> None:
    key = GatewayKey.generate(
        Suite.X25519,
        key_id=9,
        symmetric=[(Kdf.HKDF_SHA256, Aead.CHACHA20_POLY1305)],
    )
    # A client pinned a config that claims AES-256-GCM for this key.
    forged_config = KeyConfig(
        9,
        Suite.X25519,
        key.key_config().public_key,
        ((Kdf.HKDF_SHA256, Aead.AES_256_GCM),),
    )
    envelope = seal(forged_config, REPORT_ID, PAYLOAD)

    with pytest.raises(EnvelopeError, match="which key 9 does not allow"):
        open_envelope(envelope, [key])


@pytest.mark.parametrize("suite", list(Suite))
def test_every_truncation_is_refused(
    suite: Suite, x25519_key: GatewayKey, hybrid_key: GatewayKey
) -> None:
    key = _key(suite, x25519_key, hybrid_key)
    envelope = seal(key.key_config(), REPORT_ID, PAYLOAD)
    accepted = []

    for length in range(len(envelope)):
        try:
            open_envelope(envelope[:length], [key])
        except EnvelopeError:
            continue
        accepted.append(length)

    assert accepted == []


def test_appended_byte_is_refused(x25519_key: GatewayKey) -> None:
    envelope = seal(x25519_key.key_config(), REPORT_ID, PAYLOAD)

    with pytest.raises(EnvelopeError):
        open_envelope(envelope + b"\x00", [x25519_key])


def test_unknown_envelope_version_is_refused(x25519_key: GatewayKey) -> None:
    envelope = seal(x25519_key.key_config(), REPORT_ID, PAYLOAD)

    with pytest.raises(EnvelopeError, match="envelope version 2 is not"):
        open_envelope(b"\x02" + envelope[1:], [x25519_key])


def test_nonzero_padding_is_refused(x25519_key: GatewayKey) -> None:
    plaintext = bytearray(1024)
    plaintext[:16] = REPORT_ID
    plaintext[16:20] = struct.pack(">I", 3)
    plaintext[20:23] = b"abc"
    plaintext[1023] = 1
    config = x25519_key.key_config()
    envelope = _seal_raw(config, Aead.CHACHA20_POLY1305, bytes(plaintext))

    with pytest.raises(EnvelopeError, match="padding is not all zeros"):
        open_envelope(envelope, [x25519_key])


def test_length_beyond_the_plaintext_is_refused(
    x25519_key: GatewayKey,
) -> None:
    plaintext = bytearray(1024)
    plaintext[16:20] = struct.pack(">I", 1005)
    config = x25519_key.key_config()
    envelope = _seal_raw(config, Aead.CHACHA20_POLY1305, bytes(plaintext))

    with pytest.raises(EnvelopeError, match="claims a 1005-byte payload"):
        open_envelope(envelope, [x25519_key])


def test_payload_in_the_wrong_bucket_is_refused(
    x25519_key: GatewayKey,
) -> None:
    # 3 bytes belong in the 1 KiB bucket; a 2 KiB plaintext is off-format.
    plaintext = bytearray(2048)
    plaintext[16:20] = struct.pack(">I", 3)
    config = x25519_key.key_config()
    envelope = _seal_raw(config, Aead.CHACHA20_POLY1305, bytes(plaintext))

    with pytest.raises(EnvelopeError, match="not a 2048-byte one"):
        open_envelope(envelope, [x25519_key])


def test_report_id_of_wrong_length_is_refused(
    x25519_key: GatewayKey,
) -> None:
    with pytest.raises(EnvelopeError, match="16 bytes, not 15"):
        seal(x25519_key.key_config(), REPORT_ID[:15], PAYLOAD)


def test_payload_over_the_limit_is_refused(x25519_key: GatewayKey) -> None:
    too_big = bytes(16 * 1024 * 1024 - 20 + 1)

    with pytest.raises(EnvelopeError, match="exceeds"):
        seal(x25519_key.key_config(), REPORT_ID, too_big)


def test_sealing_with_an_aead_the_config_lacks_is_refused() -> None:
    key = GatewayKey.generate(
        Suite.X25519, symmetric=[(Kdf.HKDF_SHA256, Aead.AES_256_GCM)]
    )

    with pytest.raises(KeyConfigError, match="does not allow"):
        seal(key.key_config(), REPORT_ID, PAYLOAD, aead=Aead.CHACHA20_POLY1305)


# -- padding -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload_bytes", "bucket_bytes"),
    [
        (0, 1024),
        (1004, 1024),
        (1005, 2048),
        (2028, 2048),
        (2029, 4096),
        (32748, 32768),
        (32749, 65536),
        (65516, 65536),
        (65517, 131072),
        (131052, 131072),
        (131053, 196608),
    ],
)
def test_padded_size_buckets(payload_bytes: int, bucket_bytes: int) -> None:
    assert padded_size(payload_bytes) == bucket_bytes


@pytest.mark.parametrize(
    ("suite", "expected"),
    [
        (Suite.X25519, X25519_1K_ENVELOPE_BYTES),
        (Suite.PQ_HYBRID, HYBRID_1K_ENVELOPE_BYTES),
    ],
)
def test_payloads_one_byte_apart_in_a_bucket_have_equal_length(
    suite: Suite,
    expected: int,
    x25519_key: GatewayKey,
    hybrid_key: GatewayKey,
) -> None:
    config = _key(suite, x25519_key, hybrid_key).key_config()

    lengths = {
        n: len(seal(config, REPORT_ID, b"a" * n)) for n in (0, 1, 1003, 1004)
    }

    assert lengths == {
        0: expected,
        1: expected,
        1003: expected,
        1004: expected,
    }


@pytest.mark.parametrize(
    ("suite", "expected"),
    [(Suite.X25519, 11 + 32 + 2048 + 16), (Suite.PQ_HYBRID, 11 + 1120 + 2064)],
)
def test_one_byte_past_a_bucket_takes_the_next(
    suite: Suite,
    expected: int,
    x25519_key: GatewayKey,
    hybrid_key: GatewayKey,
) -> None:
    config = _key(suite, x25519_key, hybrid_key).key_config()

    envelope = seal(config, REPORT_ID, b"a" * 1005)

    assert len(envelope) == expected
    assert envelope_size(suite, 1005) == expected


# -- key configs -------------------------------------------------------------


@pytest.mark.parametrize("suite", list(Suite))
def test_key_config_round_trips_through_base64(
    suite: Suite, x25519_key: GatewayKey, hybrid_key: GatewayKey
) -> None:
    config = _key(suite, x25519_key, hybrid_key).key_config()

    assert KeyConfig.from_base64(config.to_base64()) == config


def test_key_config_binary_layout(x25519_key: GatewayKey) -> None:
    raw = base64.b64decode(x25519_key.key_config().to_base64())

    assert raw[:7] == bytes.fromhex("01000000070020")
    assert raw[7:39] == x25519_key.key_config().public_key
    assert raw[39:] == bytes.fromhex("00080001000300010002")


def test_hybrid_key_config_is_1233_bytes(hybrid_key: GatewayKey) -> None:
    raw = hybrid_key.key_config().to_bytes()

    # 7 header + 1184 ML-KEM-768 + 32 X25519 + 2 + 8 pair bytes.
    assert len(raw) == 1233


def test_key_config_accepts_url_safe_base64_and_whitespace(
    hybrid_key: GatewayKey,
) -> None:
    text = hybrid_key.key_config().to_base64()
    url_safe = text.replace("+", "-").replace("/", "_").rstrip("=")
    wrapped = "\n".join(url_safe[i : i + 64] for i in range(0, len(text), 64))

    assert KeyConfig.from_base64(wrapped) == hybrid_key.key_config()


def _config_bytes(
    kem_id: int, public: bytes, pairs: list[tuple[int, int]]
) -> bytes:
    pair_bytes = b"".join(struct.pack(">HH", k, a) for k, a in pairs)
    return (
        struct.pack(">BIH", 1, 5, kem_id)
        + public
        + struct.pack(">H", len(pair_bytes))
        + pair_bytes
    )


def test_key_config_with_unknown_kem_is_refused() -> None:
    raw = _config_bytes(0x0010, bytes(65), [(1, 3)])

    with pytest.raises(KeyConfigError, match="KEM 0x0010 is not supported"):
        KeyConfig.from_bytes(raw)


def test_key_config_with_no_usable_pair_is_refused(
    x25519_key: GatewayKey,
) -> None:
    public = x25519_key.key_config().public_key
    # HKDF-SHA384 with AES-128-GCM: valid HPKE, not one we support.
    raw = _config_bytes(0x0020, public, [(2, 1)])

    with pytest.raises(KeyConfigError, match="allows no KDF/AEAD pair"):
        KeyConfig.from_bytes(raw)


def test_key_config_skips_unknown_pairs_and_keeps_known_ones(
    x25519_key: GatewayKey,
) -> None:
    public = x25519_key.key_config().public_key
    raw = _config_bytes(0x0020, public, [(2, 1), (1, 2)])

    config = KeyConfig.from_bytes(raw)

    assert config.symmetric == ((Kdf.HKDF_SHA256, Aead.AES_256_GCM),)


def test_key_config_of_unknown_version_is_refused(
    x25519_key: GatewayKey,
) -> None:
    raw = b"\x02" + x25519_key.key_config().to_bytes()[1:]

    with pytest.raises(KeyConfigError, match="format version 2"):
        KeyConfig.from_bytes(raw)


@pytest.mark.parametrize("cut", [0, 3, 7, 20, 39, 40, 47])
def test_truncated_key_config_is_refused(
    cut: int, x25519_key: GatewayKey
) -> None:
    raw = x25519_key.key_config().to_bytes()

    with pytest.raises(KeyConfigError):
        KeyConfig.from_bytes(raw[:cut])


def test_key_config_with_trailing_bytes_is_refused(
    x25519_key: GatewayKey,
) -> None:
    raw = x25519_key.key_config().to_bytes() + b"\x00"

    with pytest.raises(KeyConfigError, match="should be 49 bytes"):
        KeyConfig.from_bytes(raw)


def test_key_config_that_is_not_base64_is_refused() -> None:
    with pytest.raises(KeyConfigError, match="not valid base64"):
        KeyConfig.from_base64("not*base64!")


def test_key_config_with_short_public_key_is_refused() -> None:
    with pytest.raises(KeyConfigError, match="1216 bytes, not 1215"):
        KeyConfig(1, Suite.PQ_HYBRID, bytes(1215))


def test_key_config_loads_from_text_str_path_and_pathlike(
    tmp_path: Path, hybrid_key: GatewayKey
) -> None:
    text = hybrid_key.key_config().to_base64()
    path = tmp_path / "gateway.keyconfig"
    path.write_text(text + "\n", encoding="ascii")

    assert KeyConfig.load(text) == hybrid_key.key_config()
    assert KeyConfig.load(str(path)) == hybrid_key.key_config()
    assert KeyConfig.load(path) == hybrid_key.key_config()


def test_key_config_from_missing_file_names_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.keyconfig"

    with pytest.raises(KeyConfigError, match=r"nope\.keyconfig"):
        KeyConfig.load(missing)


# -- gateway key files -------------------------------------------------------


@pytest.mark.parametrize("suite", list(Suite))
def test_saved_key_loads_and_opens_what_was_sealed_to_it(
    suite: Suite, tmp_path: Path
) -> None:
    key = GatewayKey.generate(suite, key_id=42)
    path = tmp_path / "gateway.key"
    envelope = seal(key.key_config(), REPORT_ID, PAYLOAD)

    key.save(path)
    loaded = GatewayKey.load(path)

    assert loaded.key_id == 42
    assert loaded.key_config() == key.key_config()
    assert open_envelope(envelope, [loaded]).payload == PAYLOAD


def test_saved_key_file_is_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "gateway.key"

    GatewayKey.generate(Suite.X25519).save(path)

    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_hybrid_key_file_holds_64_byte_seed_and_raw_x25519(
    tmp_path: Path,
) -> None:
    path = tmp_path / "gateway.key"
    GatewayKey.generate(Suite.PQ_HYBRID, key_id=3).save(path)

    document = json.loads(path.read_text())

    assert document["type"] == "secure-store gateway key"
    assert document["suite"] == "pq-hybrid"
    assert document["key_id"] == 3
    assert len(base64.b64decode(document["mlkem768_seed"])) == 64
    assert len(base64.b64decode(document["x25519_private"])) == 32


def test_saving_over_an_existing_key_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "keys"
    folder.mkdir()
    path = folder / "gateway.key"
    first = GatewayKey.generate(Suite.X25519, key_id=1)
    first.save(path)

    with pytest.raises(KeyConfigError, match="already exists"):
        GatewayKey.generate(Suite.X25519, key_id=2).save(path)
    assert GatewayKey.load(path).key_config() == first.key_config()
    assert [p.name for p in folder.iterdir()] == ["gateway.key"]


def test_saving_with_overwrite_replaces_the_key(tmp_path: Path) -> None:
    path = tmp_path / "gateway.key"
    GatewayKey.generate(Suite.X25519, key_id=1).save(path)
    second = GatewayKey.generate(Suite.X25519, key_id=2)

    second.save(path, overwrite=True)

    assert GatewayKey.load(path).key_id == 2


def test_key_file_with_edited_key_config_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "gateway.key"
    GatewayKey.generate(Suite.X25519, key_id=1).save(path)
    document = json.loads(path.read_text())
    document["key_config"] = (
        GatewayKey.generate(Suite.X25519, key_id=1).key_config().to_base64()
    )
    path.write_text(json.dumps(document))

    with pytest.raises(KeyConfigError, match="does not match"):
        GatewayKey.load(path)


def test_key_file_of_another_type_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "gateway.key"
    path.write_text('{"type": "something else"}')

    with pytest.raises(KeyConfigError, match="not a gateway key file"):
        GatewayKey.load(path)


def test_key_file_with_short_seed_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "gateway.key"
    GatewayKey.generate(Suite.PQ_HYBRID).save(path)
    document = json.loads(path.read_text())
    document["mlkem768_seed"] = base64.b64encode(bytes(32)).decode()
    path.write_text(json.dumps(document))

    with pytest.raises(KeyConfigError, match="expected 64 bytes, found 32"):
        GatewayKey.load(path)


def test_key_repr_shows_no_secret(hybrid_key: GatewayKey) -> None:
    assert repr(hybrid_key) == "GatewayKey(key_id=8, suite=pq-hybrid)"


def test_generated_key_ids_are_random_32_bit() -> None:
    ids = {GatewayKey.generate(Suite.X25519).key_id for _ in range(20)}

    assert len(ids) == 20
    assert all(0 <= i < 2**32 for i in ids)


def test_two_keys_with_one_id_are_refused() -> None:
    keys = [GatewayKey.generate(Suite.X25519, key_id=5) for _ in range(2)]

    with pytest.raises(KeyConfigError, match="share key id 5"):
        key_ring(keys)


def test_key_config_path_that_does_not_exist_says_so() -> None:
    with pytest.raises(KeyConfigError, match="neither an existing file"):
        KeyConfig.load("./missing/gateway.keyconfig")


@settings(max_examples=60, deadline=None)
@given(payload=st.binary(max_size=70_000))
def test_any_payload_round_trips_in_its_bucket(payload: bytes) -> None:
    key = _HYPOTHESIS_KEY

    envelope = seal(key.key_config(), REPORT_ID, payload)

    assert open_envelope(envelope, [key]).payload == payload
    assert len(envelope) == 11 + 32 + padded_size(len(payload)) + 16


_HYPOTHESIS_KEY = GatewayKey.generate(Suite.X25519, key_id=11)


def test_key_config_file_may_hold_keygen_comment_lines(tmp_path: Path) -> None:
    key = GatewayKey.generate(Suite.X25519)
    config = key.key_config().to_base64()
    path = tmp_path / "gateway.keyconfig"
    path.write_text(
        f"# private key written to gw.json\n# pin this\n{config}\n"
    )

    assert KeyConfig.load(path) == key.key_config()


def test_private_key_file_as_key_config_says_what_it_is(
    tmp_path: Path,
) -> None:
    path = tmp_path / "gw.json"
    GatewayKey.generate(Suite.X25519).save(path)

    with pytest.raises(KeyConfigError, match="looks like a gateway private"):
        KeyConfig.load(path)


def test_short_name_of_a_missing_file_is_not_read_as_base64() -> None:
    with pytest.raises(KeyConfigError, match="neither an existing file"):
        KeyConfig.load("nonexistent")


def test_published_key_config_list_as_key_config_says_what_to_pin(
    tmp_path: Path,
) -> None:
    config = GatewayKey.generate(Suite.X25519).key_config().to_base64()
    path = tmp_path / "well-known.json"
    path.write_text(json.dumps({"key_configs": [{"config": config}]}))

    with pytest.raises(KeyConfigError, match="pin one of them"):
        KeyConfig.load(path)
