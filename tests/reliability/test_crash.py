"""The short form of the crash tests (checks 2, 3 and 18) on SQLite; the full form runs on demand:
`python -m tests.reliability.crash` (add `--pg postgresql+asyncpg://...` for PostgreSQL)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability import crash
from tests.reliability.conftest import Report

pytestmark = pytest.mark.processes


def test_crash_quick(tmp_path: Path, report: Report) -> None:
    results = crash.run(quick=True, workdir=tmp_path, seed=7)
    ack, dispatch, stop = results.ack, results.dispatch, results.stop
    assert ack is not None
    assert dispatch is not None
    assert stop is not None

    trials = len(ack.trials)
    report(
        2,
        f"kill -9 during POST bursts: lost {ack.lost} in {trials} trials "
        f"({[t['acknowledged'] for t in ack.trials]} acknowledged before the kills)",
    )
    assert ack.ok, ack

    done = dispatch.statuses.get("sent", 0) + dispatch.statuses.get("failed", 0)
    report(
        3,
        f"kill -9 x{len(dispatch.in_flight)} during dispatch: {done}/{dispatch.accepted} sent or "
        f"failed, {dispatch.statuses.get('sending', 0)} in `sending`, {dispatch.duplicates} "
        f"duplicates <= {sum(dispatch.in_flight)} in flight at the kills, {dispatch.lost} lost; "
        f"rows left in `sending` back within {dispatch.sending_cleared_after:.1f} s of the kill "
        f"(restart {dispatch.restart:.1f} + lease {dispatch.lease:g} + sweep {dispatch.sweep:g})",
    )
    assert dispatch.ok, dispatch

    report(
        18,
        f"SIGSTOP past a {stop.lease:g} s lease: redelivered after {stop.redelivered_after:.1f} s, "
        f"stale finish dropped ({stop.stale_dropped}), {stop.status}, attempt rows "
        f"{stop.attempt_numbers}, {stop.copies} copies",
    )
    assert stop.ok, stop
