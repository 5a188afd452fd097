"""Runs locust headless against a URL and writes CSV stats, the HTML report and a PNG chart of
throughput and p50/p99 latency over time.

  python loadtest/run.py --host http://127.0.0.1:8000 --users 32 --duration 60s --out runs/load
Exits non-zero when any request failed (so it can gate a deploy or a CI job).
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def chart(history_csv: Path, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(history_csv, newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["Name"] == "Aggregated"]
    if not rows:
        return
    start = int(rows[0]["Timestamp"])
    t = [int(r["Timestamp"]) - start for r in rows]

    def col(name: str) -> list[float]:
        return [float(r[name]) if r[name] not in ("", "N/A") else 0.0 for r in rows]

    fig, (rps_ax, lat_ax) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    rps_ax.plot(t, col("Requests/s"), label="requests/s")
    rps_ax.plot(t, col("Failures/s"), label="failures/s")
    rps_ax.set(ylabel="per second", title="bert-serve under locust")
    lat_ax.plot(t, col("50%"), label="p50")
    lat_ax.plot(t, col("99%"), label="p99")
    lat_ax.set(xlabel="seconds", ylabel="latency (ms)")
    for ax in (rps_ax, lat_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=100)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--host", default="http://127.0.0.1:8000")
    p.add_argument("--users", type=int, default=32)
    p.add_argument("--spawn-rate", type=float, default=0, help="users/s (default: all at once)")
    p.add_argument("--duration", default="60s")
    p.add_argument("--out", type=Path, default=Path("runs/loadtest"))
    p.add_argument("--user-classes", nargs="*", default=[], help="e.g. EmbedUser FillMaskUser")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    prefix = args.out / "locust"
    cmd = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(HERE / "locustfile.py"),
        "--headless",
        "--host",
        args.host,
        "-u",
        str(args.users),
        "-r",
        str(args.spawn_rate or args.users),
        "-t",
        args.duration,
        "--csv",
        str(prefix),
        "--csv-full-history",
        "--html",
        str(args.out / "report.html"),
        "--only-summary",
        *args.user_classes,
    ]
    result = subprocess.run(cmd)
    chart(Path(f"{prefix}_stats_history.csv"), args.out / "throughput_latency.png")
    print(
        f"stats: {prefix}_stats.csv  report: {args.out / 'report.html'}  "
        f"chart: {args.out / 'throughput_latency.png'}"
    )
    return result.returncode


if __name__ == "__main__":
    raise SystemExit(main())
