"""Peak memory of one encoder call, as the server makes it (OnnxBackend: ORT's arena off, glibc
mapping buffers over 4 MiB on their own), each shape in a fresh process over a warm session:
the figures service/memory.py's `call_bytes` must stay above (tests/test_memory_bounds.py).

    python bench/call_memory.py --artifact runs/minilm [--precision int8]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np

SHAPES = [(32, 512), (64, 256), (128, 128), (8, 512)]


def rss_mib() -> float:
    fields = Path("/proc/self/status").read_text().split("VmRSS:")[1].split()
    return int(fields[0]) / 1024


def one_call(artifact: Path, precision: str, rows: int, length: int) -> dict[str, float]:
    from bertserve.service.artifact import load_artifact
    from bertserve.service.backend import OnnxBackend
    from bertserve.service.memory import MINILM, call_bytes

    backend = OnnxBackend(load_artifact(artifact), "cpu", precision, threads=1, workers=1)
    backend.warm_up()
    warm = rss_mib()
    ids = np.ones((rows, length), dtype=np.int64)  # (B, T)
    backend.hidden_states(ids, np.ones_like(ids), np.zeros_like(ids))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    estimate = call_bytes(rows * length, length, MINILM) / 1024**2
    return {"rows": rows, "length": length, "warm_mib": warm, "call_peak_mib": peak - warm,
            "call_bytes_mib": estimate}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifact", type=Path, required=True)
    parser.add_argument("--precision", default="int8")
    parser.add_argument("--one", nargs=2, type=int, help=argparse.SUPPRESS)  # the child's shape
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_call(args.artifact, args.precision, *args.one)))
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from loop_stall import cpu_flags

    print(f"CPU flags: {cpu_flags()}; {args.precision}")
    for rows, length in SHAPES:
        child = subprocess.run(
            [sys.executable, __file__, "--artifact", str(args.artifact), "--precision",
             args.precision, "--one", str(rows), str(length)],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        row = json.loads(child.stdout.splitlines()[-1])
        peak, estimate = row["call_peak_mib"], row["call_bytes_mib"]
        print(f"({rows:3d}, {length:3d})  call peak {peak:6.0f} MiB  call_bytes {estimate:6.0f} "
              f"MiB  ({estimate / peak:.2f}x)")  # fmt: skip


if __name__ == "__main__":
    main()
