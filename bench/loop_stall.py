"""Does a big request stall the event loop? /health and /ready latency while wrk repeats large
valid (or correctly refused) requests against a real bert-serve, one load at a time: the loads
of issue 29, the worst an ordinary client sends within the default limits.

    python bench/loop_stall.py --artifact runs/minilm [--seconds 15] [--loads embed,burst]

Prints, per load: the probe's p50/p99/max in ms (one keep-alive connection, a GET every 20 ms,
/health and /ready in turn), the load's answers by status, and the server's RSS at the end of the
load and 60 s after the last one (memory given back after a burst). Target: p99 <= 100 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import free_port, start, stop, wait_ready

# English for the large loads (200 x 19,900 characters is 3.98 MB: under max_body_bytes only
# at one byte a character), English and Chinese for the burst
ENGLISH = "The committee reviewed the proposal in detail and asked for a revised budget. "
MIXED = ENGLISH + "河流从山上流下来，经过村庄，最后汇入大海。"


def text_of(chars: int, text: str = ENGLISH) -> str:
    return (text * (chars // len(text) + 1))[:chars]


def json_body(payload: object) -> bytes:
    return json.dumps(payload, ensure_ascii=False).encode()  # escapes would be 6 bytes a char


def loads() -> dict[str, tuple[str, bytes, int]]:
    """name -> (path, body, wrk connections)."""
    return {
        "embed 200 x 19,900 chars": (
            "/embed",
            json_body({"inputs": [text_of(19_900)] * 200}),
            4,
        ),
        "tokenize 200 x 19,900 chars": (
            "/tokenize",
            json_body({"inputs": [text_of(19_900)] * 200}),
            4,
        ),
        "embed chunk 256 x 15,000 chars (413)": (
            "/embed",
            json_body({"inputs": [text_of(15_000)] * 256, "long_inputs": "chunk"}),
            4,
        ),
        "2 MB of 10^6 integers (413)": (
            "/embed",
            b'{"inputs": [' + b",".join([b"1"] * 1_000_000) + b"]}",
            4,
        ),
        "burst: 500 requests at once x 64 sentences": (
            "/embed",
            json_body({"inputs": [text_of(100 + i, MIXED) for i in range(64)]}),
            -500,  # negative: one request per connection, all sent at once, once
        ),
        "flood: 500 connections x 64 sentences": (
            "/embed",
            json_body({"inputs": [text_of(100 + i, MIXED) for i in range(64)]}),
            500,
        ),
    }


WRK_LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = io.open(os.getenv("BENCH_BODY"), "rb")
wrk.body = f:read("*a")
f:close()
"""


class Probe(threading.Thread):
    """GET /health and /ready in turn every 20 ms on one keep-alive connection."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.latencies: list[float] = []
        self.started: list[float] = []  # time.monotonic() at each answered probe's start
        self.failures = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        paths = ["/health", "/ready"]
        i = 0
        while not self.stopping.is_set():
            started = time.perf_counter()
            try:
                conn.request("GET", paths[i % 2])
                response = conn.getresponse()
                response.read()
                ok = response.status == 200
            except (OSError, http.client.HTTPException):
                ok = False
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            elapsed = time.perf_counter() - started
            if ok:
                self.latencies.append(elapsed)
                self.started.append(time.monotonic() - elapsed)
            else:
                self.failures += 1
            i += 1
            time.sleep(max(0.0, 0.02 - elapsed))


async def _burst(port: int, path: str, body: bytes, count: int) -> None:
    """`count` connections, each sending one request at once; waits for every answer."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()

    async def one() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(head + body)
        await writer.drain()
        await reader.read()
        writer.close()

    await asyncio.gather(*[one() for _ in range(count)])


def burst(port: int, path: str, body_file: str, count: int) -> None:
    asyncio.run(_burst(port, path, Path(body_file).read_bytes(), count))


def statuses(port: int, path: str) -> dict[str, float]:
    """bertserve_requests_total of `path` by status, from /metrics."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    pattern = rf'bertserve_requests_total{{route="{re.escape(path)}",status="(\d+)"}} (\S+)'
    return {status: float(count) for status, count in re.findall(pattern, text)}


def rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmRSS:\s+(\d+) kB", status)
    return int(match.group(1)) / 1024 if match else float("nan")


def cpu_flags() -> str:
    flags = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags = line
            break
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "avx_vnni")
    return " ".join(f for f in wanted if re.search(rf"\b{f}\b", flags))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifact", type=Path, required=True)
    parser.add_argument("--seconds", type=float, default=15.0, help="each load's duration")
    parser.add_argument("--loads", default="", help="comma-separated name prefixes (default all)")
    parser.add_argument("--settle-s", type=float, default=60.0, help="wait before the last RSS")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    print(f"CPU flags: {cpu_flags()}; {os.cpu_count()} cores")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "bertserve.service", "--model", str(args.artifact)]
    server = start([*command, "--port", str(port), "--log-level", "warning"])
    results = []
    try:
        wait_ready(url, server)
        idle = Probe(port)
        idle.start()
        time.sleep(3)
        idle.stopping.set()
        idle.join()
        print(f"idle: /health+/ready p99 {np.percentile(idle.latencies, 99) * 1000:.1f} ms")
        print(f"RSS after start: {rss_mib(server.pid):.0f} MiB")
        wanted = [p.strip() for p in args.loads.split(",") if p.strip()]
        with tempfile.TemporaryDirectory() as tmp:
            script = Path(tmp) / "post.lua"
            script.write_text(WRK_LUA)
            for name, (path, body, connections) in loads().items():
                if wanted and not any(name.startswith(w) for w in wanted):
                    continue
                body_file = Path(tmp) / "body.json"
                body_file.write_bytes(body)
                probe = Probe(port)
                probe.start()
                before = statuses(port, path)
                wrk_flags = ["-t", "1", "-c", str(connections), "-d", f"{args.seconds:g}s"]
                if connections < 0:  # a burst, from a process of its own
                    code = (
                        "import sys; sys.path.insert(0, sys.argv[1]); import loop_stall; "
                        "loop_stall.burst(int(sys.argv[2]), sys.argv[3], sys.argv[4], "
                        "int(sys.argv[5]))"
                    )
                    here = str(Path(__file__).resolve().parent)
                    client = [sys.executable, "-c", code, here, str(port), path]
                    subprocess.run([*client, str(body_file), str(-connections)], check=True)
                else:
                    subprocess.run(
                        ["wrk", *wrk_flags, "--timeout", "60s", "-s", str(script), url + path],
                        capture_output=True,
                        text=True,
                        env={**os.environ, "BENCH_BODY": str(body_file)},
                    )
                probe.stopping.set()
                probe.join()
                lat = np.array(probe.latencies) * 1000
                time.sleep(2)  # answers still in flight when wrk stopped
                after = statuses(port, path)
                answers = {k: int(v - before.get(k, 0)) for k, v in after.items()}
                row = {
                    "load": name,
                    "body_bytes": len(body),
                    "connections": connections,
                    "probe_p50_ms": float(np.percentile(lat, 50)) if len(lat) else None,
                    "probe_p99_ms": float(np.percentile(lat, 99)) if len(lat) else None,
                    "probe_max_ms": float(lat.max()) if len(lat) else None,
                    "probe_failures": probe.failures,
                    "answers": {k: v for k, v in answers.items() if v},
                    "rss_mib": rss_mib(server.pid),
                }
                results.append(row)
                print(
                    f"{name:40s} probe p50 {row['probe_p50_ms']:7.1f}  p99 "
                    f"{row['probe_p99_ms']:7.1f}  max {row['probe_max_ms']:7.1f} ms  "
                    f"failed {probe.failures}  answers {row['answers']}  "
                    f"RSS {row['rss_mib']:.0f} MiB",
                    flush=True,
                )
                time.sleep(1)  # let the queue drain between loads
        time.sleep(args.settle_s)
        settled = rss_mib(server.pid)
        print(f"RSS {args.settle_s:g} s after the last load: {settled:.0f} MiB")
    finally:
        stop(server)
    if args.json:
        args.json.write_text(json.dumps({"loads": results, "rss_settled_mib": settled}, indent=1))


if __name__ == "__main__":
    main()
