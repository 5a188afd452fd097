"""Several models in one process: each route picks its model by `model`, unknown names are 404,
/v1/models and /info list every model, metrics are per model, and the model threads take the
models' calls in turns, so a flood on one model does not starve another."""

from __future__ import annotations

import asyncio
import re
import statistics
import threading
import time

import httpx
import numpy as np
import pytest

from bertserve.service.threads import ModelThreads
from tests.conftest import running_server, serve_command
from tests.fakes import CountingBackend, FakeBackend, fake_artifact, serve_models


@pytest.fixture
def three_models(tmp_path):
    """An embedder (the default), a cross-encoder (one label) and a 3-way classifier without
    MLM or NSP heads."""
    embedder = fake_artifact(tmp_path / "emb")
    cross = fake_artifact(tmp_path / "ce", labels=["score"])
    classifier = fake_artifact(tmp_path / "cls", mlm=False, nsp=False, labels=["a", "b", "c"])
    return [
        ("emb", embedder, CountingBackend(FakeBackend(embedder, seed=0))),
        ("ce", cross, CountingBackend(FakeBackend(cross, seed=1))),
        ("cls", classifier, CountingBackend(FakeBackend(classifier, seed=2))),
    ]


def test_each_route_answers_with_the_model_it_names(three_models):
    (_, _, emb), (_, _, ce), (_, _, cls) = three_models

    async def check(client: httpx.AsyncClient) -> None:
        calls = {name: backend.calls for name, _, backend in three_models}
        r = await client.post("/embed", json={"inputs": "a b"})  # no model: the default
        assert r.status_code == 200 and r.json()["model"] == "emb"
        default_vector = r.json()["data"][0]["embedding"]
        r = await client.post("/embed", json={"inputs": "a b", "model": "ce"})
        assert r.status_code == 200 and r.json()["model"] == "ce"
        assert not np.allclose(r.json()["data"][0]["embedding"], default_vector)
        r = await client.post("/v1/embeddings", json={"input": "a b", "model": "emb"})
        unit = np.asarray(default_vector) / np.linalg.norm(default_vector)  # OpenAI's: normalized
        assert np.allclose(r.json()["data"][0]["embedding"], unit, atol=1e-6)
        assert (emb.calls - calls["emb"], ce.calls - calls["ce"], cls.calls) == (2, 1, calls["cls"])

        r = await client.post("/classify", json={"inputs": "a b", "model": "cls"})
        assert r.status_code == 200 and r.json()["data"][0]["labels"][0]["label"] in "abc", r.text
        r = await client.post("/classify", json={"inputs": "a b"})
        assert r.status_code == 424  # the embedder has no classifier
        r = await client.post("/fill-mask", json={"inputs": "a [MASK]", "model": "cls"})
        assert r.status_code == 424 and r.json()["error"]["type"] == "missing_head"
        assert (await client.post("/fill-mask", json={"inputs": "a [MASK]"})).status_code == 200

        rerank = {"query": "a", "documents": ["a b", "c d", "e"]}
        r = await client.post("/v1/rerank", json={**rerank, "model": "ce"})
        assert r.status_code == 200 and r.json()["model"] == "ce"
        assert len(r.json()["results"]) == 3
        r = await client.post("/v1/rerank", json=rerank)  # the embedder: by cosine
        assert r.status_code == 200 and r.json()["model"] == "emb"
        r = await client.post("/v1/rerank", json={**rerank, "model": "cls"})
        assert r.status_code == 424  # three labels: neither a cross-encoder nor an embedder
        r = await client.post("/rerank", json={"query": "a", "texts": ["b"], "model": "ce"})
        assert r.status_code == 200 and len(r.json()) == 1
        body = {"inputs": {"source_sentence": "a", "sentences": ["a", "b"]}, "model": "ce"}
        r = await client.post("/similarity", json=body)
        assert r.status_code == 200 and r.json()[0] == pytest.approx(1.0, abs=1e-5)
        r = await client.post("/tokenize", json={"inputs": "a", "model": "cls"})
        assert r.status_code == 200
        body = {"pairs": [["a", "b"]], "model": "ce"}
        assert (await client.post("/next-sentence", json=body)).status_code == 200

    serve_models(three_models, check)


def test_an_unknown_model_is_404_naming_the_served_ones(three_models):
    async def check(client: httpx.AsyncClient) -> None:
        for path, body in [
            ("/embed", {"inputs": "a", "model": "embb"}),
            ("/v1/embeddings", {"input": "a", "model": "embb"}),
            ("/v1/rerank", {"query": "a", "documents": ["b"], "model": "embb"}),
        ]:
            r = await client.post(path, json=body)
            assert r.status_code == 404, (path, r.text)
            error = r.json()["error"]
            assert error["type"] == "model_not_found"
            assert (
                "'emb', 'ce', 'cls'" in error["message"]
                and "did you mean 'emb'" in error["message"]
            )
        r = await client.post("/embed", json={"inputs": "a", "model": ""})
        assert r.status_code == 404
        assert (await client.post("/embed", json={"inputs": "a"})).status_code == 200

    serve_models(three_models, check)


def test_v1_models_info_and_metrics_list_every_model(three_models):
    async def check(client: httpx.AsyncClient) -> None:
        listed = (await client.get("/v1/models")).json()
        assert listed["object"] == "list"
        assert [m["id"] for m in listed["data"]] == ["emb", "ce", "cls"]
        assert all(m["object"] == "model" and m["owned_by"] == "bertserve" for m in listed["data"])
        capabilities = {m["id"]: m["capabilities"] for m in listed["data"]}
        assert capabilities["emb"]["rerank"] and not capabilities["emb"]["classify"]
        assert capabilities["ce"]["classify"] and capabilities["ce"]["rerank"]
        assert not capabilities["cls"]["rerank"] and not capabilities["cls"]["fill_mask"]

        info = (await client.get("/info")).json()
        assert info["model"] == "emb"  # the default, at the top level as with one model
        assert [m["model"] for m in info["models"]] == ["emb", "ce", "cls"]
        assert info["models"][2]["labels"] == ["a", "b", "c"]
        assert info["models"][1]["limits"]["max_inputs"] == info["limits"]["max_inputs"]

        await client.post("/embed", json={"inputs": ["a", "b"], "model": "ce"})
        await client.post("/embed", json={"inputs": "a"})
        await client.post("/embed", json={"inputs": "a", "model": "nope"})  # 404: not counted
        metrics = (await client.get("/metrics")).text
        labels = set(re.findall(r'model="([^"]*)"', metrics))
        assert labels == {"emb", "ce", "cls"}  # bounded: the configured names only
        assert re.search(r'bertserve_tokens_total\{model="ce",route="/embed"\} [1-9]', metrics)
        assert re.search(r'bertserve_batch_size_count\{model="emb"\} [1-9]', metrics)
        for name in ("emb", "ce", "cls"):
            assert f'bertserve_model_info{{model="{name}",precision="fp32"' in metrics

    serve_models(three_models, check)


def test_model_threads_take_a_waiting_model_before_the_busy_model_s_next_call():
    """One thread; A's first call runs while A's second and then B's first wait: B goes
    next (A already had its turn), and a head job goes before either."""
    order: list[str] = []
    release = threading.Event()

    def call(name: str) -> None:
        if name == "A1":
            release.wait(5)
        order.append(name)

    async def main() -> None:
        threads = ModelThreads(1)
        a, b = object(), object()
        threads.hand_off(a, call, "A1")
        await asyncio.sleep(0.05)  # A1 is running
        threads.hand_off(a, call, "A2")
        threads.hand_off(b, call, "B1")
        head = asyncio.ensure_future(threads.run(call, "head"))
        await asyncio.sleep(0.05)
        release.set()
        await head
        await threads.shutdown()  # runs what is queued first

    asyncio.run(main())
    assert order == ["A1", "head", "B1", "A2"]


def _p99(latencies: list[float]) -> float:
    return statistics.quantiles(latencies, n=100)[98]


def test_a_flood_on_one_model_does_not_starve_another(tmp_path):
    """Under a saturating load on model A (its queue many calls deep), model B's single
    requests keep a p99 within 3x of their unloaded p99. One model thread and equal call
    times (10 ms): B waits for at most A's running call, never for A's queue."""
    first, second = fake_artifact(tmp_path / "a"), fake_artifact(tmp_path / "b")
    flooded, probed = CountingBackend(FakeBackend(first)), CountingBackend(FakeBackend(second))
    flooded.delay_s = probed.delay_s = 0.01
    deepest = 0

    async def check(client: httpx.AsyncClient) -> None:
        nonlocal deepest

        async def probe(count: int) -> list[float]:
            latencies = []
            for _ in range(count):
                started = time.perf_counter()
                request = client.post("/embed", json={"inputs": "b", "model": "b"})
                r = await asyncio.wait_for(request, 5)  # starved: a failure, not a hang
                assert r.status_code == 200
                latencies.append(time.perf_counter() - started)
            return latencies

        unloaded = _p99(await probe(60))
        stop = False

        async def flood() -> None:
            while not stop:  # each request: 4 calls of 8 (max_batch_size 8)
                await client.post("/embed", json={"inputs": ["a"] * 32, "model": "a"})

        async def watch_queue() -> None:
            nonlocal deepest
            while not stop:
                metrics = (await client.get("/metrics")).text
                depth = re.search(r'bertserve_queue_depth\{model="a"\} (\S+)', metrics)
                deepest = max(deepest, int(float(depth.group(1)))) if depth else deepest
                await asyncio.sleep(0.05)

        floods = [asyncio.create_task(flood()) for _ in range(6)]
        watcher = asyncio.create_task(watch_queue())
        await asyncio.sleep(0.3)
        loaded = _p99(await probe(60))
        stop = True
        await asyncio.gather(*floods, watcher)
        assert deepest >= 64, deepest  # A's queue held 8+ calls: saturated
        assert loaded <= 3 * unloaded, (loaded, unloaded)

    serve_models(
        [("a", first, flooded), ("b", second, probed)], check, max_batch_size=8, max_wait_ms=0
    )


def test_bert_serve_serves_named_models_from_flags_and_the_environment(tiny_artifact):
    command = serve_command(
        tiny_artifact, "--model", f"second={tiny_artifact}", "--precision", "fp32"
    )
    with running_server(command) as (url, _):
        listed = httpx.get(f"{url}/v1/models").json()
        default = listed["data"][0]["id"]
        assert [m["id"] for m in listed["data"]] == [default, "second"]
        vectors = [
            httpx.post(f"{url}/embed", json={"inputs": "hello world", "model": name}).json()
            for name in (default, "second")
        ]
        assert vectors[1]["model"] == "second"
        assert np.allclose(vectors[0]["data"][0]["embedding"], vectors[1]["data"][0]["embedding"])
        assert httpx.post(f"{url}/embed", json={"inputs": "a", "model": "x"}).status_code == 404
    bare = serve_command(tiny_artifact, "--precision", "fp32")
    bare = bare[: bare.index("--model")] + bare[bare.index("--model") + 2 :]
    env = {"BERTSERVE_MODELS": f"x={tiny_artifact},y={tiny_artifact}"}
    with running_server(bare, env=env) as (url, _):
        assert [m["id"] for m in httpx.get(f"{url}/v1/models").json()["data"]] == ["x", "y"]
