"""A real Prometheus server (Debian's prometheus package) scrapes a running callbridge during a
simulated call, with the shipped scrape configuration and alert rules; callbridge_calls_active
and the response-latency histogram are read back through Prometheus's HTTP API."""

from __future__ import annotations

import asyncio
import math
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import aiohttp
import numpy as np
import pytest
import yaml

from bridge.settings import load_settings
from tests.conftest import load_wav
from tests.peers.asterisk import AsteriskCaller
from tests.servers import start_daemon

pytestmark = [
    pytest.mark.realtime,
    pytest.mark.skipif(shutil.which("prometheus") is None,
                       reason="prometheus not installed (Debian package prometheus; "
                              ".ci/system-deps installs it)"),
]

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "deploy" / "prometheus"
DEMO_NUMBER = "+5511999990001"
SCRAPE_SECONDS = 1
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_PHONE = re.compile(r"\+?\d{7,}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _prometheus_config(tmp_path: Path, target: str) -> Path:
    """The shipped configuration, pointed at this test's daemon and scraping every second."""
    config = yaml.safe_load((SHIPPED / "prometheus.yml").read_text())
    config["global"]["evaluation_interval"] = f"{SCRAPE_SECONDS}s"
    jobs = [job for job in config["scrape_configs"] if job["job_name"] == "callbridge"]
    assert len(jobs) == 1
    job = jobs[0]
    job["scrape_interval"] = f"{SCRAPE_SECONDS}s"
    job["scrape_timeout"] = f"{SCRAPE_SECONDS}s"
    job["static_configs"][0]["targets"] = [target]
    config["scrape_configs"] = [job]
    shutil.copy(SHIPPED / "alerts.yml", tmp_path / "alerts.yml")
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def _dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, expression) with Grafana's variables filled in as Grafana would."""
    import json

    dashboard = json.loads((REPO / "deploy" / "grafana" / "dashboards" / "callbridge.json").read_text())
    queries = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$__rate_interval", "1m").replace("$instance", ".*")
            queries.append((panel["title"], expr))
    return queries


class PrometheusServer:
    def __init__(self, config: Path, data: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = data.parent / "prometheus.log"
        self._process = subprocess.Popen(
            ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={data}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=self.log.open("wb"),
        )

    async def wait_ready(self, http: aiohttp.ClientSession, within: float = 30) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise AssertionError(f"prometheus exited: {self.log.read_text()[-2000:]}")
            try:
                async with http.get(f"{self.url}/-/ready") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
        raise AssertionError("prometheus did not become ready")

    async def query(self, http: aiohttp.ClientSession, expr: str) -> list[dict]:
        async with http.get(f"{self.url}/api/v1/query", params={"query": expr}) as response:
            body = await response.json()
        assert body["status"] == "success", body
        return body["data"]["result"]

    async def wait_value(
        self, http: aiohttp.ClientSession, expr: str, predicate, within: float = 20
    ) -> float:
        """Poll the query API (scrapes land once a second) until ``predicate`` holds."""
        deadline = time.monotonic() + within
        last: list[dict] = []
        while time.monotonic() < deadline:
            last = await self.query(http, expr)
            if last and predicate(float(last[0]["value"][1])):
                return float(last[0]["value"][1])
            await asyncio.sleep(0.25)
        raise AssertionError(f"{expr}: no satisfying value within {within} s (last {last})")

    def stop(self) -> None:
        self._process.terminate()
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


async def test_prometheus_scrapes_a_call(tmp_path, fixtures_dir):
    settings = load_settings(
        env_file=None, environ={},
        http={"host": "127.0.0.1", "port": 0}, audiosocket={"host": "127.0.0.1", "port": 0},
        agi={"host": "127.0.0.1", "port": 0},
        recording={"enabled": False, "directory": str(tmp_path / "rec")},
        metrics={"tenant_labels": True, "max_tenant_labels": 10},
    )
    app, stop, task = await start_daemon(settings)
    assert app.http is not None and app.agi is not None
    config = _prometheus_config(tmp_path, f"127.0.0.1:{app.http.port}")
    prometheus = PrometheusServer(config, tmp_path / "tsdb")
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            await prometheus.wait_ready(http)
            # The shipped alert rules load in the real server.
            async with http.get(f"{prometheus.url}/api/v1/rules") as response:
                groups = (await response.json())["data"]["groups"]
            rules = [rule for group in groups for rule in group["rules"]]
            assert len(rules) == 14 and all(rule["health"] != "err" for rule in rules)
            await prometheus.wait_value(http, 'up{job="callbridge"}', lambda v: v == 1)
            await prometheus.wait_value(http, "callbridge_ready", lambda v: v == 1)

            caller = AsteriskCaller(app.agi.port, DEMO_NUMBER)
            await caller.dial()
            await caller.connect_media()
            speech, rate = load_wav(fixtures_dir / "speech" / "real_cmu_8k.wav")
            assert rate == 8000
            silence = np.zeros(8000 * 4, dtype=np.int16)
            # Greeting, then the caller speaks; the simulator answers after the end of speech.
            audio = np.concatenate([silence[:8000 * 3], speech[:8000 * 3], silence])
            playing = asyncio.create_task(caller.play(audio))

            active = await prometheus.wait_value(http, "sum(callbridge_calls_active)", lambda v: v >= 1)
            assert active == 1
            await playing
            await caller.hang_up()
            await asyncio.wait_for(caller.agi_done.wait(), 10)
            await caller.close()
            assert caller.agi.variables.get("CALLBRIDGE_STATUS") == "DONE"

            count = await prometheus.wait_value(
                http, "sum(callbridge_response_latency_seconds_count)", lambda v: v >= 1)
            p95 = await prometheus.wait_value(
                http, "histogram_quantile(0.95, sum by (le) (callbridge_response_latency_seconds_bucket))",
                lambda v: not math.isnan(v))
            assert 0 < p95 <= 5.0, p95
            print(f"Prometheus read back: calls_active {active:g} during the call; "
                  f"{count:g} response(s), p95 response latency {p95 * 1000:.0f} ms")
            # The daemon's own registry agrees with what Prometheus stored.
            local = app.metrics.registry.get_sample_value(
                "callbridge_response_latency_seconds_count", {"transport": "audiosocket_fastagi"})
            assert local == count
            await prometheus.wait_value(http, "sum(callbridge_calls_active)", lambda v: v == 0)
            await prometheus.wait_value(
                http, 'sum(callbridge_calls_total{outcome="caller_hangup"})', lambda v: v == 1)
            await prometheus.wait_value(http, "sum(callbridge_calls_answered_total)", lambda v: v == 1)
            await prometheus.wait_value(
                http, 'callbridge_tenant_calls_total{tenant="demo",outcome="caller_hangup"}', lambda v: v == 1)
            await prometheus.wait_value(
                http, "sum(callbridge_pacer_lateness_seconds_count)", lambda v: v > 100)

            # Every dashboard query is valid PromQL for the real server, and the main panels have data.
            await asyncio.sleep(3 * SCRAPE_SECONDS)  # rate() needs two samples of the new series
            empty = []
            for title, expr in _dashboard_queries():
                result = await prometheus.query(http, expr)
                if not result:
                    empty.append(title)
            for must_have_data in ("Active calls", "Calls ended per minute by outcome",
                                   "Response latency (end of caller speech to first agent audio)",
                                   "Pacer lateness", "Event-loop lag", "Running versions"):
                assert must_have_data not in empty, f"panel {must_have_data!r} shows no data"

            # No series carries a call id or a phone number in any label.
            async with http.get(f"{prometheus.url}/api/v1/series",
                                params={"match[]": '{__name__=~"callbridge_.+"}'}) as response:
                series = (await response.json())["data"]
            assert len(series) > 50
            for labels in series:
                for name, value in labels.items():
                    if name in ("__name__", "instance"):
                        continue
                    assert not _UUID.search(value), labels
                    assert not _PHONE.fullmatch(value), labels
    finally:
        prometheus.stop()
        stop.set()
        await asyncio.wait_for(task, 30)
