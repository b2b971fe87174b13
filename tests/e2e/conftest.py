from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from bridge.simulator import SimulatorServer
from tests.conftest import MODEL_DIALECT
from tests.e2e.host_stalls import HostStallWatch


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.definition.get_closest_marker("both_dialects") is not None:
        metafunc.fixturenames.append("model_dialect")
        metafunc.parametrize("model_dialect", ["openai", "voicelive"])


@pytest.fixture(autouse=True)
def _model_dialect(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Daemons started by the test run the built-in simulator in the test's dialect; a test run
    in both checks that its calls really reached the simulator in that dialect."""
    if "model_dialect" not in request.fixturenames:
        yield
        return
    dialect = request.getfixturevalue("model_dialect")
    accepted: list[bool] = []
    accept = SimulatorServer._accept

    async def observed(self: SimulatorServer, req: Any, *, voice_live: bool) -> Any:
        accepted.append(voice_live)
        return await accept(self, req, voice_live=voice_live)

    monkeypatch.setattr(SimulatorServer, "_accept", observed)
    MODEL_DIALECT["dialect"] = dialect
    try:
        yield
    finally:
        MODEL_DIALECT["dialect"] = "openai"
    assert accepted, "no model session was opened"
    assert set(accepted) == {dialect == "voicelive"}, f"sessions in the wrong dialect for {dialect}"


@pytest.fixture
async def host_stalls() -> AsyncIterator[HostStallWatch]:
    """Records when the host kept this process from running (see ``tests.e2e.host_stalls``)."""
    watch = HostStallWatch()
    watch.start()
    yield watch
    await watch.stop()
