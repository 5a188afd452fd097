"""CI smoke of the load test: 20 locust users for 30 s against a tiny model, no failures, and
/metrics counted every request."""

from __future__ import annotations

import csv
import importlib.util
import re
import subprocess
import sys

import httpx
import pytest

from tests.conftest import REPO, running_server, serve_command

# never import locust here: it monkey-patches the whole process with gevent
if importlib.util.find_spec("locust") is None:
    pytest.skip("locust is not installed", allow_module_level=True)


def test_locust_smoke_has_no_failures_and_metrics_count_every_request(tiny_artifact, tmp_path):
    command = serve_command(tiny_artifact, "--threads", "1")
    with running_server(command) as (url, _):
        result = subprocess.run(
            [
                sys.executable,
                "loadtest/run.py",
                "--host",
                url,
                "--users",
                "20",
                "--duration",
                "30s",
                "--out",
                str(tmp_path),
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        with open(tmp_path / "locust_stats.csv", newline="") as handle:
            rows = list(csv.DictReader(handle))
        total = next(r for r in rows if r["Name"] == "Aggregated")
        assert int(total["Failure Count"]) == 0, result.stdout[-2000:] + result.stderr[-2000:]
        assert result.returncode == 0
        routes = ("/embed", "/fill-mask", "/v1/embeddings")
        requests = sum(int(r["Request Count"]) for r in rows if r["Name"] in routes)
        assert requests > 100
        assert {r["Name"] for r in rows} >= {*routes, "/info"}
        assert "/classify" not in {r["Name"] for r in rows}  # the tiny model has no classifier
        metrics = httpx.get(f"{url}/metrics").text
    served = sum(
        float(m.group(2))
        for m in re.finditer(
            r'^bertserve_requests_total\{route="([^"]+)",status="200"\} (\S+)', metrics, re.M
        )
        if m.group(1) in routes
    )
    # every request locust saw was counted; locust stops counting a moment before its
    # users stop, so the server may have served a few percent more than locust recorded
    assert requests <= served <= requests * 1.05
    assert (tmp_path / "report.html").is_file()
    assert (tmp_path / "throughput_latency.png").stat().st_size > 1000
