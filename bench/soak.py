"""Does memory stay flat under hours of ordinary traffic with large requests mixed in? A real
bert-serve, run as deploy/kubernetes.yaml runs it (MALLOC_ARENA_MAX=2, default limits), under
wrk repeating small /embed requests, plus one large request every `--every-s` seconds from
another client (cycling: /embed 200 x 19,900 chars, /embed token vectors, /tokenize 200 x 19,900
chars, /fill-mask 64 inputs x 10 [MASK] x top_k 20), while /health is probed every 100 ms.

    python bench/soak.py --artifact runs/minilm [--minutes 30] [--warmup-minutes 5]

Prints the server's RSS every minute and, after the warm-up: RSS min / max / last of samples
every 5 s (they include large requests in flight, which hold their own memory), and of the RSS
just before each large request (the memory between them, which a leak would make grow): its
spread (max / min - 1), the farthest sample from their median (target: within 10%), and drift
(mean of the last half / first half - 1);
the answers by status (no 5xx), the large requests' statuses, and the probe's p99. Writes the
samples with --json.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loop_stall import MIXED, WRK_LUA, Probe, cpu_flags, json_body, rss_mib, text_of
from serve_load import free_port, start, stop, wait_ready


def large_requests(fill_mask: bool) -> list[tuple[str, bytes]]:
    mask = "[MASK]"
    return [
        ("/embed", json_body({"inputs": [text_of(19_900)] * 200})),
        ("/embed", json_body({"inputs": [text_of(2_000 + i) for i in range(8)],
                              "output": "tokens"})),
        ("/tokenize", json_body({"inputs": [text_of(19_900)] * 200})),
        (
            "/fill-mask",
            json_body({"inputs": [f" {mask} ".join([text_of(40 + i)] * 11) for i in range(64)],
                       "top_k": 20}),
        ),
    ][: 4 if fill_mask else 3]  # fmt: skip


class Large(threading.Thread):
    """One large request every `every_s` seconds, in turn, on its own connection."""

    def __init__(
        self, port: int, pid: int, requests: list[tuple[str, bytes]], every_s: float
    ) -> None:
        super().__init__(daemon=True)
        self.port, self.pid, self.requests, self.every_s = port, pid, requests, every_s
        self.answers: dict[str, int] = {}
        # (seconds since the first, RSS MiB) just before each large request: the server's
        # memory between large requests, which a leak would make grow
        self.baseline: list[tuple[float, float]] = []
        self.first: float | None = None
        self.stopping = threading.Event()

    def run(self) -> None:
        i = 0
        while not self.stopping.wait(self.every_s if i else 1.0):
            path, body = self.requests[i % len(self.requests)]
            now = time.monotonic()
            self.first = now if self.first is None else self.first
            self.baseline.append((now - self.first, rss_mib(self.pid)))
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
            try:
                conn.request("POST", path, body, {"Content-Type": "application/json"})
                response = conn.getresponse()
                response.read()
                key = f"{path} {response.status}"
            except (OSError, http.client.HTTPException) as exc:
                key = f"{path} {type(exc).__name__}"
            finally:
                conn.close()
            self.answers[key] = self.answers.get(key, 0) + 1
            i += 1


def http_get(port: int, path: str) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("GET", path)
    text = conn.getresponse().read().decode()
    conn.close()
    return text


def all_statuses(port: int) -> dict[str, float]:
    text = http_get(port, "/metrics")
    counts: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("bertserve_requests_total{"):
            status = line.split('status="')[1].split('"')[0]
            counts[status] = counts.get(status, 0) + float(line.rsplit(" ", 1)[1])
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifact", type=Path, required=True)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--warmup-minutes", type=float, default=5.0)
    parser.add_argument("--every-s", type=float, default=20.0, help="between large requests")
    parser.add_argument("--connections", type=int, default=8, help="wrk's, small requests")
    parser.add_argument("--malloc-arena-max", default="2", help="as the manifest; '' unsets it")
    parser.add_argument("--json", type=Path, help="also write the samples here")
    args = parser.parse_args()
    print(f"CPU flags: {cpu_flags()}; {os.cpu_count()} cores", flush=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    if args.malloc_arena_max:  # deploy/kubernetes.yaml sets 2
        os.environ["MALLOC_ARENA_MAX"] = args.malloc_arena_max
    command = [sys.executable, "-m", "bertserve.service", "--model", str(args.artifact)]
    server = start([*command, "--port", str(port), "--log-level", "warning"])
    samples: list[tuple[float, float]] = []
    try:
        wait_ready(url, server)
        info = json.loads(http_get(port, "/info"))
        fill_mask = bool(info["capabilities"]["fill_mask"])
        with tempfile.TemporaryDirectory() as tmp:
            script = Path(tmp) / "post.lua"
            script.write_text(WRK_LUA)
            body_file = Path(tmp) / "body.json"
            body_file.write_bytes(
                json_body({"inputs": [text_of(60 + i, MIXED) for i in range(16)]})
            )
            wrk = subprocess.Popen(
                ["wrk", "-t", "1", "-c", str(args.connections), "-d", f"{args.minutes * 60:.0f}s",
                 "--timeout", "60s", "-s", str(script), url + "/embed"],
                stdout=subprocess.PIPE, text=True,
                env={**os.environ, "BENCH_BODY": str(body_file)},
            )  # fmt: skip
            large = Large(port, server.pid, large_requests(fill_mask), args.every_s)
            large_started = time.monotonic()
            probe = Probe(port)
            probe.start()
            large.start()
            started = time.monotonic()
            next_print = 0.0
            while wrk.poll() is None:
                elapsed = time.monotonic() - started
                samples.append((elapsed, rss_mib(server.pid)))
                if elapsed >= next_print:
                    print(f"{elapsed / 60:5.1f} min  RSS {samples[-1][1]:7.0f} MiB", flush=True)
                    next_print += 60
                time.sleep(5)
            large.stopping.set()
            probe.stopping.set()
            large.join()
            probe.join()
            wrk_out = wrk.stdout.read() if wrk.stdout else ""
        statuses = all_statuses(port)
    finally:
        stop(server)
    after = np.array([rss for t, rss in samples if t >= args.warmup_minutes * 60])
    base = np.array([rss for t, rss in large.baseline if t >= args.warmup_minutes * 60])
    half = len(base) // 2
    lat = np.array(probe.latencies) * 1000
    result = {
        "minutes": args.minutes,
        "warmup_minutes": args.warmup_minutes,
        "rss_min_mib": float(after.min()),
        "rss_max_mib": float(after.max()),
        "rss_last_mib": float(after[-1]),
        "rss_spread": float(after.max() / after.min() - 1),
        # between large requests: the spread, and the mean of the last half over the first
        "baseline_min_mib": float(base.min()),
        "baseline_max_mib": float(base.max()),
        "baseline_spread": float(base.max() / base.min() - 1),
        "baseline_drift": float(base[half:].mean() / base[:half].mean() - 1),
        # the farthest sample from the median: "flat within 10%" is this under 0.1
        "baseline_max_deviation": float(np.abs(base / np.median(base) - 1).max()),
        "baseline": large.baseline,
        "statuses": statuses,
        "large_answers": large.answers,
        "probe_p99_ms": float(np.percentile(lat, 99)),
        "probe_max_ms": float(lat.max()),
        "probe_failures": probe.failures,
        # when the slowest probe began, in seconds after the first large request
        "probe_max_at_s": float(probe.started[int(lat.argmax())] - large_started),
        "wrk": " ".join(line.strip() for line in wrk_out.splitlines() if "Requests/sec" in line),
        "samples": samples,
    }
    print(
        f"after {args.warmup_minutes:g} min warm-up, every 5 s: RSS min {result['rss_min_mib']:.0f}"
        f", max {result['rss_max_mib']:.0f}, last {result['rss_last_mib']:.0f} MiB (a large "
        "request in flight holds its own memory)"
    )
    print(
        f"between large requests ({len(base)}): RSS min {result['baseline_min_mib']:.0f}, max "
        f"{result['baseline_max_mib']:.0f} MiB, spread {result['baseline_spread'] * 100:.1f}%, "
        f"every sample within {result['baseline_max_deviation'] * 100:.1f}% of the median "
        f"(target: 10%), drift (last half / first half) {result['baseline_drift'] * 100:+.1f}%"
    )
    print(f"answers by status: {statuses}")
    print(f"large requests: {large.answers}")
    print(
        f"/health p99 {result['probe_p99_ms']:.1f} ms, max {result['probe_max_ms']:.1f} ms, "
        f"failed {probe.failures} (slowest {result['probe_max_at_s']:.0f} s after the first large "
        f"request); wrk {result['wrk']}"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
