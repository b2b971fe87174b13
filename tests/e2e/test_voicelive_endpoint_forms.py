"""Every Voice Live endpoint form, reached by ``callbridge check`` at its real Azure host name:
the simulator serves those names over TLS on the loopback of a private network namespace
(tests/peers/azure_hosts.py), so the SDK's own URL building, name resolution and certificate
checks run as they do against Azure."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.timeout(120)

FORMS = {
    "https://contoso.services.ai.azure.com": "wss://contoso.services.ai.azure.com/voice-live/realtime",
    "https://contoso.cognitiveservices.azure.com/": "wss://contoso.cognitiveservices.azure.com/voice-live/realtime",
    "https://westus2.api.cognitive.microsoft.com": "wss://westus2.api.cognitive.microsoft.com/voice-live/realtime",
    # The Azure OpenAI host of an existing .env: the same resource's Cognitive Services host answers.
    "https://contoso.openai.azure.com": "wss://contoso.cognitiveservices.azure.com/voice-live/realtime",
}


def _namespaces_available() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    probe = subprocess.run(["unshare", "--mount", "--net", "true"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _namespaces_available(), reason="needs root with unshare and ip (network namespaces)")
def test_check_reaches_every_endpoint_form(tmp_path) -> None:
    proc = subprocess.run(
        ["unshare", "--mount", "--net", sys.executable, "-m", "tests.peers.azure_hosts", str(tmp_path), *FORMS],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=90,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = {r["endpoint"]: r for r in map(json.loads, proc.stdout.splitlines())}
    assert set(results) == set(FORMS)
    for endpoint, url in FORMS.items():
        result = results[endpoint]
        assert "failed" not in result, result
        assert result["ok"] == (f"azure_voicelive: session opened with model 'gpt-realtime' at {url} "
                                "(api-key, api-version 2025-10-01)")
        assert result["paths"] == ["/voice-live/realtime"] and result["auth"] == ["api-key"]
