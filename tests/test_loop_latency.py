"""The event loop keeps answering the probes while clients repeat the largest valid requests
(issue 29: /health took 7 s under 200 x 19,900 characters, and Kubernetes' liveness probe waits
1 s by default). A real bert-serve; figures for every load: bench/loop_stall.py."""

from __future__ import annotations

import threading
import time

import httpx
import numpy as np

from tests.conftest import running_server, serve_command

TEXT = "The committee reviewed the proposal in detail and asked for a revised budget. "


def test_health_answers_within_100_ms_under_large_requests(tiny_artifact):
    body = {"inputs": [(TEXT * 260)[:19_900]] * 200}  # 3.98 MB, under max_body_bytes
    with running_server(serve_command(tiny_artifact)) as (url, _):
        stop = time.monotonic() + 8
        answered: list[int] = []

        def client() -> None:
            with httpx.Client(base_url=url, timeout=60) as http:
                while time.monotonic() < stop:
                    answered.append(http.post("/embed", json=body).status_code)

        clients = [threading.Thread(target=client) for _ in range(4)]
        for thread in clients:
            thread.start()
        time.sleep(1)  # the clients' first requests are in
        latencies = []
        with httpx.Client(base_url=url, timeout=30) as probe:
            while time.monotonic() < stop:
                started = time.perf_counter()
                assert probe.get("/health").status_code == 200
                latencies.append(time.perf_counter() - started)
                time.sleep(0.02)
        for thread in clients:
            thread.join()
    p99 = float(np.percentile(latencies, 99))
    assert answered and set(answered) <= {200, 429}, set(answered)
    assert answered.count(200) >= 4  # the load was real work, not refusals
    # before: seconds. Here the clients and the server share 2 cores with pytest and the tiny
    # model answers fast (so tokenizing never stops): measured p99 100-145 ms; with wrk in C
    # and MiniLM (bench/loop_stall.py) 26 ms. The bound leaves that margin, well under the
    # 2 s probe timeout of deploy/kubernetes.yaml.
    assert p99 <= 0.25, f"/health p99 {p99 * 1000:.0f} ms over {len(latencies)} probes"
