"""DKIM signing alone, in-process: what signing adds to composing one message, per key type.

The end-to-end scenarios say whether delivery slows down, but on this shared 2-core machine their
spread is wider than the cost measured here; this times compose() with and without a signer on
the messages the dispatcher composes, so the share of the ~1 ms of CPU a delivered message costs
end to end (bench/RESULTS.md) can be stated. For reference it also times dkimpy's own `dkim.sign()`
on the same bytes (it parses the PEM each call and does RSA in pure Python), which is why the
signer does the private-key step with OpenSSL. Usage:

    .venv/bin/python bench/dkim_sign.py [--reps 2000]

Messages: `small` (the e2e bench's: one To, a short text), `group` (a BCC chunk of 50 with an
html part), `attachment` (a 100 kB PDF, base64). Each line: median and p90 microseconds per
message of compose alone and compose + sign, the difference, and CPU time per message.
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import dkim

from app.delivery.compose import compose
from app.delivery.grouping import Batch
from app.delivery.stored import StoredMessage
from app.dkim import keys
from app.dkim.signer import Signer

SENDER = {"email": "noreply@example.com", "name": "Example"}
DATE = datetime(2026, 12, 7, 9, 30, tzinfo=UTC)
GROUP = tuple(f"user{i:02}@example.org" for i in range(50))
RAW: dict[str, tuple[dict[str, Any], Batch]] = {
    "small": (
        {"subject": "bench", "text": "hello from the bench\n", "to": [{"email": "a@example.org"}]},
        Batch("visible", ("a@example.org",)),
    ),
    "group": (
        {
            "subject": "Monthly report: December",
            "text": "Your report is ready.\n" * 20,
            "html": "<p>Your report is <b>ready</b>.</p>\n" * 20,
            "group": [{"email": r} for r in GROUP],
        },
        Batch("undisclosed", GROUP),
    ),
    "attachment": (
        {
            "subject": "Invoice",
            "text": "Attached.\n",
            "to": [{"email": "a@example.org"}],
            "attachments": [
                {
                    "filename": "invoice.pdf",
                    "contentType": "application/pdf",
                    "content": base64.b64encode(bytes(range(256)) * 400).decode(),
                }
            ],
        },
        Batch("visible", ("a@example.org",)),
    ),
}


MESSAGES = {
    name: (StoredMessage.of({**payload, "from": SENDER}), batch)
    for name, (payload, batch) in RAW.items()
}


def timed(work: Callable[[], object], reps: int) -> tuple[list[float], float]:
    """Wall time of each call (µs), and CPU time per call (µs)."""
    for _ in range(min(reps, 50)):
        work()  # warm up
    walls: list[float] = []
    cpu_began = time.process_time()
    for _ in range(reps):
        began = time.perf_counter()
        work()
        walls.append((time.perf_counter() - began) * 1e6)
    return walls, (time.process_time() - cpu_began) / reps * 1e6


def p90(values: list[float]) -> float:
    return sorted(values)[int(0.9 * len(values))]


def measure(name: str, algorithm: keys.Algorithm, reps: int) -> dict[str, Any]:
    payload, batch = MESSAGES[name]
    key = keys.generate(algorithm)
    signer = Signer.through("smtp", "example.com", "s1", key)

    def plain() -> object:
        return compose(payload, batch=batch, message_id="<m@example.com>", date=DATE)

    def signed() -> object:
        return compose(
            payload,
            batch=batch,
            message_id="<m@example.com>",
            date=DATE,
            dkim=signer,
        )

    base, base_cpu = timed(plain, reps)
    with_dkim, dkim_cpu = timed(signed, reps)
    mime = compose(payload, batch=batch, message_id="<m@x>", date=DATE).mime
    pem = key.pem().encode() if algorithm == "rsa-sha256" else _raw_seed(key)
    dkimpy_reps = max(reps // 20, 20) if algorithm == "rsa-sha256" else reps
    dkimpy, _ = timed(
        lambda: dkim.sign(
            mime,
            b"s1",
            b"example.com",
            pem,
            signature_algorithm=algorithm.encode(),
            canonicalize=(b"relaxed", b"relaxed"),
        ),
        dkimpy_reps,
    )
    return {
        "message": name,
        "algorithm": algorithm,
        "bytes": len(mime),
        "compose_us": round(statistics.median(base), 1),
        "compose_signed_us": round(statistics.median(with_dkim), 1),
        "signing_us": round(statistics.median(with_dkim) - statistics.median(base), 1),
        "signing_p90_us": round(p90(with_dkim) - p90(base), 1),
        "signing_cpu_us": round(dkim_cpu - base_cpu, 1),
        "dkimpy_sign_us": round(statistics.median(dkimpy), 1),
    }


def _raw_seed(key: keys.DkimKey) -> bytes:
    """dkimpy takes an Ed25519 key as its base64 32-byte seed."""
    from cryptography.hazmat.primitives import serialization

    raw = key.private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return base64.b64encode(raw)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=2000)
    args = parser.parse_args()
    for name in MESSAGES:
        for algorithm in ("rsa-sha256", "ed25519-sha256"):
            print(json.dumps(measure(name, algorithm, args.reps)), flush=True)  # noqa: T201


if __name__ == "__main__":
    main()
