"""Memory follows the limits: the shipped Kubernetes manifest's settings keep the worst case
(service/memory.py) under its memory limit, and each in-flight bound answers 429 or 413."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import httpx

from bertserve.service.memory import MIB, MINILM, call_bytes, worst_case_bytes
from bertserve.service.settings import Settings
from tests.fakes import CountingBackend, serve_fake

MANIFEST = Path(__file__).resolve().parent.parent / "deploy" / "kubernetes.yaml"


def _manifest() -> tuple[dict[str, str], int, int]:
    text = MANIFEST.read_text()
    env = dict(re.findall(r"\{name: (BERTSERVE_\w+), value: \"?([^\"}]+)\"?\}", text))
    limits = re.search(r"limits: \{cpu: \"(\d+)\", memory: (\d+)Gi\}", text)
    assert limits is not None
    return env, int(limits.group(1)), int(limits.group(2)) * 1024 * MIB


def test_the_shipped_manifest_holds_the_worst_case_of_its_settings():
    env, cores, limit = _manifest()
    settings = Settings(**{k.removeprefix("BERTSERVE_").lower(): v for k, v in env.items()})
    worst = worst_case_bytes(settings, MINILM, cores)
    assert worst["total"] <= limit, {k: v // MIB for k, v in worst.items()}
    # the defaults alone would not fit: the manifest's settings are what makes it hold
    defaults = worst_case_bytes(Settings(model=Path("m")), MINILM, cores)
    assert defaults["total"] > limit
    # two workers: each loads the model and holds its own budgets, so the same settings don't
    two = worst_case_bytes(settings.model_copy(update={"workers": 2}), MINILM, cores)
    assert two["total"] > limit and two["model calls"] == worst["model calls"]


def test_call_bytes_is_above_the_measured_peaks():
    # (rows, sequence length) -> peak MiB measured over a warm MiniLM session (memory.py)
    for (rows, length), measured in {(32, 512): 816, (64, 256): 432, (128, 128): 312,
                                     (8, 512): 204}.items():  # fmt: skip
        estimate = call_bytes(rows * length, length, MINILM) / MIB
        assert measured <= estimate <= 1.35 * measured, (rows, length, estimate)


def test_answers_over_max_response_bytes_are_413_before_the_work(tmp_path):
    async def check(client: httpx.AsyncClient, backend: CountingBackend) -> None:
        calls = backend.calls
        body = {"inputs": ["the [MASK] river " * 6] * 8, "top_k": 100}
        r = await client.post("/fill-mask", json=body)
        assert r.status_code == 413 and "max_response_bytes 65536" in r.text, r.text
        r = await client.post("/embed", json={"inputs": ["the river"] * 8, "output": "tokens"})
        assert r.status_code == 413 and "max_response_bytes" in r.text, r.text
        assert backend.calls == calls  # refused before the model ran
        r = await client.post("/embed", json={"inputs": ["the river"] * 8})
        assert r.status_code == 200

    serve_fake(tmp_path, check, max_response_bytes=65536)


def test_answers_in_flight_are_bounded(tmp_path):
    async def check(client: httpx.AsyncClient, backend: CountingBackend) -> None:
        backend.delay_s = 0.3  # the first answer is in flight while the second asks
        body = {"inputs": ["the river"] * 8, "output": "tokens"}
        first = asyncio.create_task(client.post("/embed", json=body))
        await asyncio.sleep(0.1)
        second = await client.post("/embed", json=body)
        assert second.status_code == 429 and "max_response_bytes_in_flight" in second.text
        assert second.headers["retry-after"] == "1"
        assert (await first).status_code == 200
        # once the first is sent its bytes are given back
        assert (await client.post("/embed", json=body)).status_code == 200

    serve_fake(tmp_path, check, max_response_bytes_in_flight=70_000)


def test_request_bodies_in_flight_are_bounded(tmp_path):
    async def check(client: httpx.AsyncClient, backend: CountingBackend) -> None:
        backend.delay_s = 0.3
        body = {"inputs": ["the river " * 100] * 4}  # ~4 KB
        first = asyncio.create_task(client.post("/embed", json=body))
        await asyncio.sleep(0.1)
        second = await client.post("/embed", json=body)
        assert second.status_code == 429 and "max_body_bytes_in_flight 6000" in second.text
        assert (await first).status_code == 200
        assert (await client.post("/embed", json=body)).status_code == 200

    serve_fake(tmp_path, check, max_body_bytes_in_flight=6000)
