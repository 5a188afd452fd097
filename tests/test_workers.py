"""`bert-serve --workers N`: several processes on one port, one /metrics, supervised."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
from conftest import REPO, running_server, serve_command

from bertserve.service.settings import Settings
from bertserve.service.workers import share, worker_settings


def _sample(text: str, name: str, labels: str = "") -> float:
    match = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.M)
    assert match, f"{name}{labels} not in /metrics"
    return float(match.group(1))


AUTH = {"Authorization": "Bearer k"}  # the key of the test that sets one; ignored without


def _series(text: str) -> set[str]:
    return {line.rsplit(" ", 1)[0] for line in text.splitlines() if line.startswith("bertserve_")}


def _worker_pid(url: str) -> int:
    # a fresh connection each time: the kernel hands it to whichever worker accepts first
    with httpx.Client() as client:
        return int(client.get(f"{url}/info", headers=AUTH).json()["worker"]["pid"])


def _pids_seen(url: str, want: int, tries: int = 400) -> set[int]:
    """Worker pids that answered /info, from concurrent fresh connections."""
    seen: set[int] = set()
    lock = threading.Lock()

    def ask() -> None:
        for _ in range(tries // 8):
            try:
                pid = _worker_pid(url)
            except httpx.TransportError:  # queued at a worker that is stopping: reset
                continue
            with lock:
                seen.add(pid)
                if len(seen) >= want:
                    return

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return seen


def _wait(predicate, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"{what} within {seconds} s"
        time.sleep(0.1)


def test_threads_and_model_calls_are_divided_among_workers():
    assert [share(5, 2, i) for i in range(2)] == [3, 2]
    assert [share(2, 4, i) for i in range(4)] == [1, 1, 1, 1]  # at least one each
    settings = Settings(model=["m"], threads=4, model_workers=4, workers=2)
    parts = [worker_settings(settings, 2, i) for i in range(2)]
    assert [p["threads"] for p in parts] == [2, 2]
    assert [p["model_workers"] for p in parts] == [2, 2]
    assert all(p["workers"] == 1 and p["model"] == ["m"] for p in parts)
    assert Settings(model=["m"], workers="auto").workers == "auto"
    for bad in ("0", "many", "65"):
        with pytest.raises(ValueError, match="workers"):
            Settings(model=["m"], workers=bad)


def test_two_workers_answer_and_share_one_metrics(tiny_artifact, tmp_path):
    env = {"TMPDIR": str(tmp_path), "BERTSERVE_API_KEY": "k"}  # TMPDIR: the metrics folder
    with running_server(serve_command(tiny_artifact, "--workers", "2"), env=env) as (url, proc):
        assert httpx.post(f"{url}/embed", json={"inputs": "x"}).status_code == 401  # per worker
        folders = list(tmp_path.glob("bertserve-metrics-*"))
        assert len(folders) == 1 and any(folders[0].iterdir())
        info = httpx.get(f"{url}/info", headers=AUTH).json()
        assert info["workers"] == 2 and info["worker"]["index"] in (0, 1)
        pids = _pids_seen(url, 2)
        assert len(pids) == 2 and proc.pid not in pids  # two workers, not the supervisor
        sent = 0
        for i in range(40):
            with httpx.Client() as client:  # spread over both workers
                r = client.post(f"{url}/embed", json={"inputs": [f"text {i}", "two"]}, headers=AUTH)
                assert r.status_code == 200
                sent += 1
        text = httpx.get(f"{url}/metrics").text
        assert _sample(text, "bertserve_workers") == 2
        assert _sample(text, "bertserve_ready") == 1
        embeds = '{route="/embed",status="200"}'
        assert _sample(text, "bertserve_requests_total", embeds) == sent
        # the same sum from either worker: every scrape merges both
        for _ in range(10):
            again = httpx.Client().get(f"{url}/metrics").text
            assert _sample(again, "bertserve_requests_total", embeds) == sent
        name = info["model"]
        assert _sample(text, "bertserve_tokens_total", f'{{model="{name}",route="/embed"}}') > 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=40) == 0
    assert not list(tmp_path.glob("bertserve-metrics-*"))  # removed at exit


def test_a_killed_worker_is_restarted_and_the_others_keep_serving(tiny_artifact, tmp_path):
    command = serve_command(tiny_artifact, "--workers", "2", "--log-level", "info")
    with running_server(command, env={"TMPDIR": str(tmp_path)}) as (url, proc):
        pids = _pids_seen(url, 2)
        assert len(pids) == 2
        victim, survivor = sorted(pids)
        os.kill(victim, signal.SIGKILL)
        # every request after the kill is answered (by the survivor, then by either)
        for i in range(30):
            with httpx.Client() as client:
                r = client.post(f"{url}/embed", json={"inputs": f"after {i}"})
            assert r.status_code == 200
        _wait(lambda: httpx.get(f"{url}/ready").status_code == 200, 60, "ready again")
        now = _pids_seen(url, 2)
        assert survivor in now and victim not in now and len(now) == 2
        text = httpx.get(f"{url}/metrics").text
        assert _sample(text, "bertserve_workers") == 2  # the dead one's live gauge is gone
        series_before = _series(text)
        # SIGTERM to one worker alone: a restart, not a shutdown
        os.kill(survivor, signal.SIGTERM)
        _wait(lambda: survivor not in _pids_seen(url, 2), 60, "the survivor replaced")
        assert proc.poll() is None
        _wait(lambda: httpx.get(f"{url}/ready").status_code == 200, 60, "ready again")
        # a second restart adds no series: nothing is labelled by process
        assert _series(httpx.get(f"{url}/metrics").text) == series_before
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=40) == 0
        log = proc.stderr.read().decode()
    assert f"(pid {victim}) was killed by SIGKILL; restarting in 0.5 s" in log
    assert f"(pid {survivor}) exited with code 0; restarting" in log
    assert "is serving again" in log
    assert "Traceback" not in log


def test_sigterm_drains_every_worker(tiny_artifact, tmp_path):
    """A request in flight at SIGTERM is answered; the supervisor exits 0."""
    long_texts = ["word " * 4000] * 64
    with running_server(
        serve_command(tiny_artifact, "--workers", "2"), env={"TMPDIR": str(tmp_path)}
    ) as (url, proc):
        answers: list[int] = []

        def slow() -> None:
            r = httpx.post(f"{url}/embed", json={"inputs": long_texts}, timeout=60)
            answers.append(r.status_code)

        clients = [threading.Thread(target=slow) for _ in range(4)]
        for c in clients:
            c.start()
        time.sleep(0.3)  # the requests are being read, tokenized or run
        proc.send_signal(signal.SIGTERM)
        for c in clients:
            c.join(timeout=60)
        assert proc.wait(timeout=40) == 0
        assert answers == [200] * 4
    assert not list(tmp_path.glob("bertserve-metrics-*"))


def test_a_bad_artifact_with_workers_is_one_line_and_exit_2(tiny_artifact, tmp_path):
    import shutil

    copy = tmp_path / "art"
    shutil.copytree(tiny_artifact, copy)
    (copy / "tokenizer.json").write_text((copy / "tokenizer.json").read_text() + " ")
    result = subprocess.run(
        [*serve_command(copy, "--workers", "2"), "--port", "0"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("bert-serve: error:") and "does not match its sha256" in lines[0]
    assert not list(tmp_path.glob("bertserve-metrics-*"))


def test_workers_on_a_taken_port_exit_3(tiny_artifact):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [*serve_command(tiny_artifact, "--workers", "2"), "--port", str(port)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 3
    assert result.stderr.strip().splitlines() == [
        f"bert-serve: error: cannot listen on 127.0.0.1:{port} (Address already in use)"
    ]


def test_no_orphans_when_the_supervisor_is_killed(tiny_artifact, tmp_path):
    """SIGKILL to the supervisor: its workers drain and exit (they would hold the port)."""
    with running_server(
        serve_command(tiny_artifact, "--workers", "2"), env={"TMPDIR": str(tmp_path)}
    ) as (url, proc):
        pids = _pids_seen(url, 2)
        proc.kill()
        proc.wait()

        def running(pid: int) -> bool:  # a zombie waiting for its new parent has exited
            status = Path(f"/proc/{pid}/status")
            try:
                return "\nState:\tZ" not in status.read_text()
            except FileNotFoundError:
                return False

        assert len(pids) == 2 and all(running(pid) for pid in pids)
        _wait(lambda: not any(running(pid) for pid in pids), 40, "workers exited")
