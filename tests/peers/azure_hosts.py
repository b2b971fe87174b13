"""Voice Live's real host names served by the simulator, inside a private network and mount
namespace (``unshare --mount --net``): the namespace's own loopback, an /etc/hosts naming the Azure
hosts at 127.0.0.1 (bind-mounted over the file in this mount namespace only), the simulator on
127.0.0.1:443 with a TLS certificate for those names from a test CA that ``SSL_CERT_FILE`` makes
trusted. Then ``callbridge check``'s model check runs for each configured endpoint form, with
the daemon's own code and the real SDK (its URL building, TLS and name resolution untouched).

Run as ``unshare --mount --net python -m tests.peers.azure_hosts WORKDIR ENDPOINT...``; prints
one JSON line per endpoint: the check's outcome and what the simulator saw.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

HOSTS = (
    "contoso.services.ai.azure.com",
    "contoso.cognitiveservices.azure.com",
    "westus2.api.cognitive.microsoft.com",
)
KEY = "azure-hosts-key"


def _namespace(work: Path) -> None:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    hosts = work / "hosts"
    hosts.write_text("127.0.0.1 localhost\n" + "".join(f"127.0.0.1 {h}\n" for h in HOSTS), encoding="utf-8")
    subprocess.run(["mount", "--bind", str(hosts), "/etc/hosts"], check=True)


async def _check_all(work: Path, endpoints: list[str]) -> None:
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert(*HOSTS)
    bundle = work / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    os.environ["SSL_CERT_FILE"] = str(bundle)  # before aiohttp builds its default TLS context

    import ssl

    from bridge.cli.check import CheckFailed, check_model
    from bridge.settings import load_settings
    from bridge.simulator import SimulatorServer

    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_context)
    async with SimulatorServer("127.0.0.1", 443, api_key=KEY, ssl_context=server_context) as sim:
        for endpoint in endpoints:
            seen = len(sim.sessions)
            settings = load_settings(env_file=None, environ={
                "AZURE_VOICELIVE_ENDPOINT": endpoint, "AZURE_VOICELIVE_API_KEY": KEY})
            try:
                result = {"ok": await check_model(settings)}
            except CheckFailed as exc:
                result = {"failed": str(exc)}
            sessions = sim.sessions[seen:]
            result["paths"] = [s.path for s in sessions]
            result["auth"] = [s.auth for s in sessions]
            print(json.dumps({"endpoint": endpoint, **result}), flush=True)


def main() -> None:
    work = Path(sys.argv[1])
    _namespace(work)
    asyncio.run(_check_all(work, sys.argv[2:]))


if __name__ == "__main__":
    main()
