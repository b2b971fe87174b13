from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.e2e.host_stalls import HostStallWatch


@pytest.fixture
async def host_stalls() -> AsyncIterator[HostStallWatch]:
    """Records when the host kept this process from running (see ``tests.e2e.host_stalls``)."""
    watch = HostStallWatch()
    watch.start()
    yield watch
    await watch.stop()
