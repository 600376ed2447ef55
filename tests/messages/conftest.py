from __future__ import annotations

import pytest

from app.delivery.dispatcher import Dispatcher
from app.wiring import Core


@pytest.fixture
def dispatcher(runtime: Core) -> Dispatcher:
    """The in-process dispatcher, driven by the test (`drain`)."""
    return Dispatcher(
        runtime.sessions, runtime.settings, runtime.transports, runtime.metrics, runtime.ledger
    )
