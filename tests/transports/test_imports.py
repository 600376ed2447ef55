"""The transports sit below the web and database layers: importing them loads neither."""

from __future__ import annotations

import subprocess
import sys

import pytest

CHECK = (
    "import sys, {module}; "
    "loaded = sorted(name for name in ('fastapi', 'sqlalchemy') if name in sys.modules); "
    "print(' '.join(loaded))"
)


@pytest.mark.parametrize("module", ["app.transports.smtp", "app.transports.registry"])
def test_importing_the_transports_loads_no_fastapi_nor_sqlalchemy(module: str) -> None:
    # a fresh interpreter: this one has the whole app loaded already
    done = subprocess.run(
        [sys.executable, "-c", CHECK.format(module=module)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""
