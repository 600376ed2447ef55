"""Schemathesis against openapi/openapi.json and a live `postroom serve`, with Basic auth and every
check (ignored_auth included): checks 20 and 29. 0 failures.

Short here (a few examples per operation); `POSTROOM_RELIABILITY_FULL=1` runs 200 per operation.
By hand:

    SCHEMATHESIS_HOOKS=tests.reliability.schemathesis_hooks .venv/bin/st \\
      --config-file tests/reliability/schemathesis.toml run openapi/openapi.json \\
      --url http://127.0.0.1:8000 -a admin:PASSWORD --checks all --max-examples 200

The service runs with egress limited to loopback (so fuzzed SMTP hosts and provider URLs reach
nothing else) and the failed-login throttle raised (ignored_auth sends wrong credentials on
purpose; the throttle itself is check 21).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.reliability import crash
from tests.reliability.conftest import FULL, Report

pytestmark = pytest.mark.processes

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
PHASES = os.environ.get("POSTROOM_SCHEMATHESIS_PHASES", "examples,fuzzing,stateful")
"""The short run leaves out the coverage phase (its ~3,000 boundary cases take a minute here);
the full run has every phase."""


def test_schemathesis_finds_no_failure(tmp_path: Path, report: Report) -> None:
    examples = 200 if FULL else 15
    place = crash.Place(tmp_path / "data")
    place.data_dir.mkdir(parents=True)
    service = crash.Service(
        place,
        "schemathesis",
        dispatcher=True,
        egress_allow="127.0.0.0/8,::1/128",
        login_failures_per_minute=1_000_000,
    )
    service.start()
    try:
        completed = subprocess.run(
            [
                str(Path(sys.executable).parent / "st"),
                "--config-file",
                str(HERE / "schemathesis.toml"),
                "run",
                str(ROOT / "openapi" / "openapi.json"),
                "--url",
                service.url,
                "--auth",
                f"{crash.ADMIN[0]}:{crash.ADMIN[1]}",
                "--checks",
                "all",
                "--max-examples",
                str(examples),
                "--seed",
                "20261123",
                "--request-timeout",
                "30",
                "--workers",
                "2",
                "--no-color",
                *([] if FULL else ["--phases", PHASES]),
            ],
            cwd=tmp_path,  # its cache (.schemathesis/) goes there, not into the repository
            env={
                **os.environ,
                "SCHEMATHESIS_HOOKS": "tests.reliability.schemathesis_hooks",
                "PYTHONPATH": str(ROOT),
            },
            capture_output=True,
            text=True,
            timeout=1800,
            check=False,
        )
        server_log = service.process.output() if service.process else ""
    finally:
        service.stop()
        crash.cleanup()
    output = completed.stdout + completed.stderr
    (tmp_path / "schemathesis.txt").write_text(output)
    generated = re.search(r"(\d+) generated", output)
    assert completed.returncode == 0, output[-8000:]
    assert "unhandled error" not in server_log, server_log[-4000:]
    summary = [line for line in output.splitlines() if "generated" in line or " in " in line]
    report(
        29,
        f"schemathesis, every check incl. ignored_auth, {examples} examples per operation: "
        f"{generated.group(1) if generated else '?'} test cases, 0 failures, 0 server errors "
        f"logged ({summary[-1].strip('= ') if summary else ''})",
    )
    report(20, "schemathesis ignored_auth: 0 failures (same run as check 29)")
