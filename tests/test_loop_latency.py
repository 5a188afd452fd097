"""The event loop keeps answering the probes while clients repeat the largest valid requests
(issue 29: /health took 7 s under 200 x 19,900 characters, and Kubernetes' liveness probe waits
1 s by default). A real bert-serve; figures for every load: bench/loop_stall.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np

from tests.conftest import running_server, serve_command

# 4 clients repeating 200 x 19,900 characters (3.98 MB, under max_body_bytes) for `seconds`,
# from a process of their own, at a lower CPU priority: in this process they held the GIL the
# probe thread needs, and at the server's priority they took its cores (2 here); clients of a
# real server are on other machines. The probe measured them instead of the server.
LOAD = """
import sys, threading, time, httpx
TEXT = "The committee reviewed the proposal in detail and asked for a revised budget. "
body = ('{"inputs": [' + ",".join(['"' + (TEXT * 260)[:19_900] + '"'] * 200) + "]}").encode()
url, seconds = sys.argv[1], float(sys.argv[2])
stop, answered = time.monotonic() + seconds, []
def client():
    with httpx.Client(base_url=url, timeout=60) as http:
        while time.monotonic() < stop:
            answered.append(http.post("/embed", content=body,
                headers={"content-type": "application/json"}).status_code)
threads = [threading.Thread(target=client) for _ in range(4)]
[t.start() for t in threads]
[t.join() for t in threads]
print(" ".join(map(str, answered)))
"""


# the probe, from a fresh process too: in pytest's, after the rest of the suite, a garbage
# collection of its large heap paused the probing thread itself (p99 115 ms measured once)
PROBE = """
import json, sys, time, httpx
url, seconds = sys.argv[1], float(sys.argv[2])
latencies, stop = [], time.monotonic() + seconds
with httpx.Client(base_url=url, timeout=30) as probe:
    while time.monotonic() < stop and len(latencies) < 400:
        started = time.perf_counter()
        assert probe.get("/health").status_code == 200
        latencies.append(time.perf_counter() - started)
        time.sleep(0.02)
print(json.dumps(latencies))
"""


def test_health_answers_within_100_ms_under_large_requests(tiny_artifact):
    with running_server(serve_command(tiny_artifact)) as (url, _):
        load = subprocess.Popen(
            [sys.executable, "-c", LOAD, url, "9"],
            stdout=subprocess.PIPE,
            text=True,
            preexec_fn=lambda: os.nice(10),
        )
        time.sleep(1.5)  # the clients' first requests are in
        probe = subprocess.run(
            [sys.executable, "-c", PROBE, url, "7"], capture_output=True, text=True, check=True
        )
        latencies = json.loads(probe.stdout)
        answered = [int(s) for s in load.communicate(timeout=120)[0].split()]
    p99 = float(np.percentile(latencies, 99))
    assert answered and set(answered) <= {200, 429}, set(answered)
    assert answered.count(200) >= 4  # the load was real work, not refusals
    # before: seconds. Here clients, probe and server share 2 cores: p99 18-25 ms over 6 runs
    # (max 20-108 ms) once long texts are tokenized from a prefix; before, p99 10-63 ms with
    # stalls of 133-222 ms (the tokens of 19,900 characters, 7x those kept, were the work)
    assert p99 <= 0.1, f"/health p99 {p99 * 1000:.0f} ms over {len(latencies)} probes"
