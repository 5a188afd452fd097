"""Load and server processes for bench/serve_throughput.py: free ports, starting, waiting for
and stopping servers, wrk (C, preferred) or an httpx client in its own process as the load
generator, and CPU accounting of the server and the generator.

The httpx client runs as `python bench/serve_load.py URL --sentences-file F --clients C
--per-request N --seconds S` and prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- load generators ---------------------------------------------------------------------------
async def load(
    url: str, sentences: list[str], clients: int, per_request: int, seconds: float
) -> dict[str, float]:
    import httpx

    latencies: list[float] = []
    done = 0
    failures = 0
    stop = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:

        async def worker(offset: int) -> None:
            nonlocal done, failures
            i = offset
            while time.perf_counter() < stop:
                batch = [sentences[(i + k) % len(sentences)] for k in range(per_request)]
                i += clients * per_request
                body = {"inputs": batch[0] if per_request == 1 else batch}
                start = time.perf_counter()
                response = await client.post("/embed", json=body)
                latencies.append(time.perf_counter() - start)
                if response.status_code == 200:
                    done += per_request
                else:
                    failures += 1

        started = time.perf_counter()
        await asyncio.gather(*[worker(c * per_request) for c in range(clients)])
        elapsed = time.perf_counter() - started
    lat = np.array(latencies)
    return {
        "sentences_per_s": done / elapsed,
        "p50_ms": float(np.percentile(lat, 50) * 1000),
        "p99_ms": float(np.percentile(lat, 99) * 1000),
        "requests": len(lat),
        "failures": failures,
    }


WRK_SCRIPT = r"""
local sentences = {}
for line in io.lines(os.getenv("BENCH_SENTENCES")) do table.insert(sentences, line) end
local per = tonumber(os.getenv("BENCH_PER_REQUEST"))
local path = os.getenv("BENCH_PATH")
local key = os.getenv("BENCH_KEY")
local extra = os.getenv("BENCH_EXTRA")
local i = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local function quote(s) return '"' .. s:gsub('\\', '\\\\'):gsub('"', '\\"') .. '"' end
request = function()
  local parts = {}
  for k = 1, per do
    i = i + 1
    parts[k] = quote(sentences[(i % #sentences) + 1])
  end
  local inputs = per == 1 and parts[1] or ("[" .. table.concat(parts, ",") .. "]")
  return wrk.format(nil, path, nil, '{"' .. key .. '": ' .. inputs .. extra .. '}')
end
"""


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def run_wrk(
    url: str,
    sentences_file: Path,
    clients: int,
    per_request: int,
    seconds: float,
    path: str = "/embed",
    key: str = "inputs",
    extra: str = "",
) -> dict[str, object]:
    """wrk (C, one thread) as the load generator: it needs little of the 2 cores we share."""
    script = sentences_file.parent / "load.lua"
    script.write_text(WRK_SCRIPT)
    out = subprocess.run(
        [
            "wrk",
            "-t",
            "1",
            "-c",
            str(clients),
            "-d",
            f"{int(seconds)}s",
            "--latency",
            "--timeout",
            "30s",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
        env={
            **os.environ,
            "BENCH_SENTENCES": str(sentences_file),
            "BENCH_PER_REQUEST": str(per_request),
            "BENCH_PATH": path,
            "BENCH_KEY": key,
            "BENCH_EXTRA": extra,
        },
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {
        "sentences_per_s": rps * per_request,
        "p50_ms": _ms(re.search(r"\s50%\s+(\S+)", out).group(1)),
        "p99_ms": _ms(re.search(r"\s99%\s+(\S+)", out).group(1)),
        "requests": float(re.search(r"(\d+) requests in", out).group(1)),
        "failures": float(bad.group(1)) if bad else 0.0,
        "socket_errors": errors.group(1) if errors else "",
        "generator": "wrk",
    }


def run_load(
    url: str, sentences_file: Path, clients: int, per_request: int, seconds: float
) -> dict[str, float]:
    if shutil.which("wrk"):
        return run_wrk(url, sentences_file, clients, per_request, seconds)  # type: ignore[return-value]
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            url,
            "--sentences-file",
            str(sentences_file),
            "--clients",
            str(clients),
            "--per-request",
            str(per_request),
            "--seconds",
            str(seconds),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- servers -----------------------------------------------------------------------------------
def wait_ready(url: str, proc: subprocess.Popen[bytes], path: str = "/ready") -> None:
    import httpx

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(url + path, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError("server did not become ready")


def start(cmd: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def process_cpu_s(pid: int, thread: int | None = None) -> float:
    """User + system CPU seconds of a live process, or of one of its threads (Linux /proc)."""
    stat = Path(f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat")
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def server_pids(pid: int) -> list[int]:
    """The server and its children (the workers of `bert-serve --workers N`)."""
    pids = [pid]
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if parent == pid:
            pids.append(int(stat.parent.name))
    return pids


def served(
    url: str, pid: int, sentences_file: Path, clients: int, per_request: int, seconds: float
) -> dict[str, object]:
    """run_load plus CPU accounting: the server's (every process's threads, and its event
    loops' threads alone) and the load generator's CPU ms per sentence (the generator, wrk or
    the httpx client, is a child process we wait for)."""
    pids = server_pids(pid)

    def server_cpu() -> float:
        return sum(process_cpu_s(p) for p in pids)

    def loops_cpu() -> float:  # each process's main thread runs its event loop
        return sum(process_cpu_s(p, thread=p) for p in pids)

    server_before, load_before, loop_before = server_cpu(), children_cpu_s(), loops_cpu()
    result = dict(run_load(url, sentences_file, clients, per_request, seconds))
    done = float(result["sentences_per_s"]) * seconds
    result["server_cpu_ms_per_sentence"] = (server_cpu() - server_before) * 1000 / done
    # the per-request work (HTTP, JSON, tokenizing, futures), without the model threads
    result["event_loop_cpu_ms_per_sentence"] = (loops_cpu() - loop_before) * 1000 / done
    result["processes"] = len(pids)
    result["load_cpu_ms_per_sentence"] = (children_cpu_s() - load_before) * 1000 / done
    return result


def main() -> None:
    p = argparse.ArgumentParser(description="the httpx load generator (when wrk is missing)")
    p.add_argument("url")
    p.add_argument("--sentences-file", type=Path, required=True)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--per-request", type=int, default=1)
    p.add_argument("--seconds", type=float, default=20)
    args = p.parse_args()
    sentences = args.sentences_file.read_text().splitlines()
    result = asyncio.run(load(args.url, sentences, args.clients, args.per_request, args.seconds))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
