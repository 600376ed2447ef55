from __future__ import annotations

import pytest

from app.delivery.dispatcher import Dispatcher
from app.deps import Runtime


@pytest.fixture
def dispatcher(runtime: Runtime) -> Dispatcher:
    """The in-process dispatcher, driven by the test (`drain`)."""
    return Dispatcher(runtime.sessions, runtime.settings, runtime.transports, runtime.metrics)
