"""Envelope seal and open per suite: hybrid (ML-KEM-768 + X25519) vs X25519.

Each payload is sealed to a fresh gateway key of each suite with each
AEAD the key config allows, then opened. Payloads are padded to their
size bucket before sealing (1 KiB pads to 2 KiB with the report id and
length), as in real use. The baseline is X25519 alone, same AEAD, same
payload.

Run: ``python -m bench.envelope [--quick]``
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

from secure_store.transport import envelope
from secure_store.transport.envelope import Aead, GatewayKey, Suite

from . import _common
from ._common import us

TARGET_RATIO = 2.0
KIB = 1024
PAYLOAD_BYTES = (KIB, 64 * KIB, 1024 * KIB)
QUICK_PAYLOAD_BYTES = (KIB, 64 * KIB)
AEADS = (Aead.CHACHA20_POLY1305, Aead.AES_256_GCM)
AEAD_LABELS = {
    Aead.CHACHA20_POLY1305: "chacha20",
    Aead.AES_256_GCM: "aes256gcm",
}
SUITES = (Suite.X25519, Suite.PQ_HYBRID)
# Each figure is the fastest of ROUNDS rounds of TIME_PER_ROUND_S each,
# the two suites taking turns.
ROUNDS = 15
QUICK_ROUNDS = 3
TIME_PER_ROUND_S = 0.05
QUICK_TIME_PER_ROUND_S = 0.02


def main(argv: Sequence[str] | None = None) -> int:
    """Measure, print the table and the ratio line; return 0."""
    args = _common.parse_args(__doc__ or "", argv)
    sizes = QUICK_PAYLOAD_BYTES if args.quick else PAYLOAD_BYTES
    rounds = QUICK_ROUNDS if args.quick else ROUNDS
    per_round_s = QUICK_TIME_PER_ROUND_S if args.quick else TIME_PER_ROUND_S
    _common.header("envelope: hybrid vs X25519 seal and open", args.quick)

    keys = {suite: GatewayKey.generate(suite) for suite in SUITES}
    report_id = envelope.new_report_id()
    rows: list[list[str]] = []
    ratios: list[tuple[str, float]] = []
    for size in sizes:
        payload = bytes(range(256)) * (size // 256)
        for aead in AEADS:
            lengths: dict[Suite, int] = {}
            seals: dict[str, Callable[[], object]] = {}
            opens: dict[str, Callable[[], object]] = {}
            for suite in SUITES:
                key = keys[suite]
                config = key.key_config()
                sealed = envelope.seal(config, report_id, payload, aead=aead)
                opened = envelope.open_envelope(sealed, [key])
                if opened.payload != payload:
                    raise RuntimeError(
                        "an envelope did not open to its payload"
                    )
                lengths[suite] = len(sealed)
                seals[suite.value] = functools.partial(
                    envelope.seal, config, report_id, payload, aead=aead
                )
                opens[suite.value] = functools.partial(
                    envelope.open_envelope, sealed, [key]
                )
            seal_by_name = _common.fastest_interleaved(
                seals, rounds, per_round_s
            )
            open_by_name = _common.fastest_interleaved(
                opens, rounds, per_round_s
            )
            seal_s = {suite: seal_by_name[suite.value] for suite in SUITES}
            open_s = {suite: open_by_name[suite.value] for suite in SUITES}
            label = f"{size // KIB}KiB/{AEAD_LABELS[aead]}"
            seal_ratio = seal_s[Suite.PQ_HYBRID] / seal_s[Suite.X25519]
            open_ratio = open_s[Suite.PQ_HYBRID] / open_s[Suite.X25519]
            ratios += [
                (f"seal@{label}", seal_ratio),
                (f"open@{label}", open_ratio),
            ]
            rows.append(
                [
                    f"{size // KIB} KiB",
                    AEAD_LABELS[aead],
                    us(seal_s[Suite.X25519]),
                    us(seal_s[Suite.PQ_HYBRID]),
                    f"{seal_ratio:.2f}",
                    us(open_s[Suite.X25519]),
                    us(open_s[Suite.PQ_HYBRID]),
                    f"{open_ratio:.2f}",
                    f"{lengths[Suite.X25519]:,}",
                    f"{lengths[Suite.PQ_HYBRID]:,}",
                ]
            )
    _common.print_table(
        [
            "payload",
            "AEAD",
            "x25519 seal us",
            "hybrid seal us",
            "ratio",
            "x25519 open us",
            "hybrid open us",
            "ratio",
            "x25519 bytes",
            "hybrid bytes",
        ],
        rows,
    )
    met = all(value <= TARGET_RATIO for _, value in ratios)
    _common.print_ratios(ratios, f"hybrid/x25519 <= {TARGET_RATIO}x", met)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
