"""bert-serve: batching invariants, every route, bad input, overload, faults, metrics, CLI."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from bertserve.service.artifact import load_artifact
from bertserve.service.backend import OnnxBackend
from bertserve.service.batcher import Pending, RequestState, split_by_padding, take_batch
from bertserve.service.pooling import pool, pool_one
from tests.conftest import REPO, running_server, serve_command, sts_sentences
from tests.fakes import CountingBackend, serve_app


def serve(
    artifact_dir: Path,
    test: Callable[[httpx.AsyncClient, CountingBackend], Awaitable[None]],
    **overrides: Any,
) -> None:
    """Runs `test` against the app over the real ONNX backend of `artifact_dir` (fp32 unless
    `precision` is given)."""
    artifact = load_artifact(artifact_dir)
    precision = overrides.get("precision", "fp32")
    # one model thread unless asked: some tests count on calls running in order
    workers = overrides.setdefault("model_workers", 1)
    backend = CountingBackend(OnnxBackend(artifact, "cpu", precision, 2, workers=workers))
    serve_app(artifact, backend, test, **overrides)


# -- take_batch, a pure function ----------------------------------------------------------------
def _pending(
    length: int, enqueued: float = 0.0, deadline: float = 100.0, state: RequestState | None = None
) -> Pending:
    loop = asyncio.new_event_loop()
    future = loop.create_future()
    loop.close()
    return Pending(
        np.zeros(length, np.int64),
        np.zeros(length, np.int64),
        enqueued,
        deadline,
        state or RequestState(),
        future,
    )


def test_take_batch_respects_budget_and_size_and_keeps_order():
    queue = [_pending(n) for n in (10, 50, 12, 11, 48, 9, 30)]
    batch, rest, dropped = take_batch(queue, max_tokens=48, max_size=3, now=1.0)
    assert batch[0] is queue[0]  # the oldest always goes
    assert len(batch) <= 3 and max(p.length for p in batch) * len(batch) <= 48
    assert [queue.index(p) for p in batch] == sorted(queue.index(p) for p in batch)
    assert {p.length for p in batch} == {10, 11, 9}  # closest in length to the oldest
    assert [queue.index(p) for p in rest] == sorted(queue.index(p) for p in rest)
    assert len(batch) + len(rest) == len(queue) and not dropped


def test_take_batch_skips_cancelled_and_expired():
    cancelled = RequestState(cancelled=True)
    queue = [_pending(5, state=cancelled), _pending(6, deadline=0.5), _pending(7), _pending(8)]
    batch, rest, dropped = take_batch(queue, max_tokens=1000, max_size=8, now=1.0)
    assert [p.length for p in batch] == [7, 8] and not rest
    assert [p.length for p in dropped] == [5, 6]


def test_take_batch_runs_an_oversized_sequence_alone():
    queue = [_pending(300), _pending(4)]
    batch, rest, _ = take_batch(queue, max_tokens=256, max_size=8, now=0.0)
    assert [p.length for p in batch] == [300] and [p.length for p in rest] == [4]


def test_split_by_padding_bounds_padding_and_keeps_every_sequence():
    lengths = [5, 40, 6, 38, 7, 12, 40, 5]
    groups = split_by_padding(lengths, max_padding=0.2)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    for group in groups:
        sizes = [lengths[i] for i in group]
        assert len(group) == 1 or 1 - sum(sizes) / (max(sizes) * len(sizes)) <= 0.2
    assert [sorted(lengths[i] for i in g) for g in groups] == [[5, 5, 6, 7], [12], [38, 40, 40]]
    assert split_by_padding(lengths, max_padding=1.0) == [
        sorted(range(8), key=lambda i: lengths[i])
    ]


# -- batching invariants ------------------------------------------------------------------------
@pytest.mark.parametrize(("precision", "workers"), [("fp32", 1), ("int8", 1), ("int8", 2)])
def test_batched_embeddings_equal_single_ones(tiny_artifact, precision, workers):
    sentences = sts_sentences(50)

    async def check(client: httpx.AsyncClient, backend: CountingBackend) -> None:
        calls_before = backend.calls
        responses = await asyncio.gather(
            *[client.post("/embed", json={"inputs": s, "normalize": False}) for s in sentences]
        )
        assert all(r.status_code == 200 for r in responses)
        assert backend.calls - calls_before < len(sentences)  # requests shared batches
        engine_text = app_text(tiny_artifact)
        for sentence, response in zip(sentences, responses, strict=True):
            got = np.array(response.json()["data"][0]["embedding"], dtype=np.float32)
            tokens = engine_text.tokenize([sentence])[0]
            hidden, _ = backend.inner.hidden_states(
                tokens.ids[None], np.ones((1, len(tokens.ids)), np.int64), tokens.type_ids[None]
            )
            alone = pool(hidden, np.ones((1, len(tokens.ids)), np.int64), "mean")[0]
            assert np.abs(got - alone).max() <= 1e-5

    assert load_artifact(tiny_artifact).variants[precision].batch_invariant
    serve(tiny_artifact, check, max_wait_ms=20, precision=precision, model_workers=workers)


def app_text(artifact_dir: Path) -> Any:
    from bertserve.service.text import TextTokenizer

    artifact = load_artifact(artifact_dir)
    return TextTokenizer(artifact.tokenizer_json, artifact.max_seq_len)


# -- every route --------------------------------------------------------------------------------
def test_every_route_happy_path(tiny_artifact):
    async def check(client: httpx.AsyncClient, backend: CountingBackend) -> None:
        r = await client.post(
            "/embed",
            json={"inputs": ["the door opened.", "北京"], "output": "both", "dimensions": 16},
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["usage"]["prompt_tokens"] > 0 and len(body["data"]) == 2
        first = body["data"][0]
        assert first["index"] == 0 and first["truncated"] is False
        assert len(first["embedding"]) == 16
        # the artifact's default (a bertserve checkpoint: not normalized) applies when the
        # request does not say; "normalize": true gives unit vectors
        assert load_artifact(tiny_artifact).normalize is False
        assert abs(np.linalg.norm(first["embedding"]) - 1) > 1e-3
        r = await client.post("/embed", json={"inputs": "the door opened.", "normalize": True})
        assert abs(np.linalg.norm(r.json()["data"][0]["embedding"]) - 1) < 1e-5
        assert first["tokens"][0]["token"] == "[CLS]"
        assert [t["token"] for t in body["data"][1]["tokens"]][1:3] == ["北", "京"]
        assert (
            body["data"][1]["tokens"][1]["start"] == 0 and body["data"][1]["tokens"][2]["end"] == 2
        )

        r = await client.post(
            "/embed", json={"inputs": "word " * 400, "truncation_direction": "left"}
        )
        assert r.status_code == 200 and r.json()["data"][0]["truncated"] is True

        r = await client.post(
            "/embed", json={"inputs": "abc", "encoding_format": "base64", "pooling": "cls"}
        )
        raw = base64.b64decode(r.json()["data"][0]["embedding"])
        assert len(np.frombuffer(raw, "<f4")) == 128

        r = await client.post("/fill-mask", json={"inputs": "the old [MASK] opened the door."})
        assert r.status_code == 200, r.text
        candidates = r.json()
        assert len(candidates) == 5 and set(candidates[0]) == {
            "score",
            "token",
            "token_str",
            "sequence",
        }
        assert candidates[0]["score"] >= candidates[-1]["score"]
        assert "[MASK]" not in candidates[0]["sequence"]

        r = await client.post(
            "/fill-mask", json={"inputs": ["a [MASK] and a [MASK].", "[MASK]"], "top_k": 2}
        )
        several, single = r.json()
        assert len(several) == 2 and all(len(mask) == 2 for mask in several)
        assert len(single) == 2 and isinstance(single[0], dict)

        r = await client.post(
            "/fill-mask", json={"inputs": "the [MASK].", "targets": ["and", "the"]}
        )
        assert {c["token_str"] for c in r.json()} == {"and", "the"}, r.text

        r = await client.post(
            "/next-sentence", json={"pairs": [["he opened the door.", "he went in."]]}
        )
        assert r.status_code == 200 and 0 <= r.json()["data"][0]["is_next"] <= 1

        served = (await client.get("/info")).json()["model"]
        r = await client.post("/v1/embeddings", json={"input": ["hello", "world"], "model": served})
        body = r.json()
        assert body["object"] == "list" and body["data"][1]["object"] == "embedding"
        assert body["model"] == served and body["usage"]["total_tokens"] > 0
        r = await client.post("/v1/embeddings", json={"input": "hello"})  # the default model
        assert r.status_code == 200 and r.json()["model"] == served

        r = await client.post("/tokenize", json={"inputs": "hello world"})
        assert r.json()[0]["tokens"][0] == "[CLS]" and len(r.json()[0]["offsets"]) == len(
            r.json()[0]["ids"]
        )

        for path in ("/health", "/ready"):
            assert (await client.get(path)).status_code == 200
        info = (await client.get("/info")).json()
        assert info["capabilities"] == {
            "embed": True,
            "pooler": True,
            "fill_mask": True,
            "next_sentence": True,
            "classify": False,
            "rerank": True,  # by cosine: no classifier
        }
        assert info["limits"]["max_inputs"] == 256 and info["precision"] == "fp32"
        assert info["batch_invariant"] is True
        assert info["model_workers"] == backend.workers == 1  # serve()'s default here
        assert info["variants"]["int8"] == {"rejected": False, "batch_invariant": True}
        assert (await client.get("/docs")).status_code == 200

    serve(tiny_artifact, check)


# -- overload and faults ------------------------------------------------------------------------
def test_overload_gets_429_with_retry_after_and_accepted_requests_succeed(tiny_artifact):
    async def check(client: httpx.AsyncClient, backend: CountingBackend) -> None:
        backend.delay_s = 0.05
        responses = await asyncio.gather(
            *[
                client.post("/embed", json={"inputs": f"sentence number {i} of the burst"})
                for i in range(40)
            ]
        )
        codes = [r.status_code for r in responses]
        assert 429 in codes and 200 in codes and set(codes) <= {200, 429}
        for r in responses:
            if r.status_code == 429:
                assert int(r.headers["retry-after"]) >= 1
                assert "max_queued_tokens 40" in r.json()["error"]["message"]
            else:
                assert len(r.json()["data"][0]["embedding"]) == 128
        metrics = (await client.get("/metrics")).text
        assert re.search(r'bertserve_rejected_total\{model="[^"]+",reason="queue_full"\}', metrics)
        # a request larger than the whole queue can never be admitted: 413, not 429
        r = await client.post("/embed", json={"inputs": ["one more sentence"] * 8})
        assert r.status_code == 413 and "retry-after" not in r.headers

    serve(tiny_artifact, check, max_queued_tokens=40, max_wait_ms=0)


def test_a_failing_batch_fails_only_its_requests(tiny_artifact):
    async def check(client: httpx.AsyncClient, backend: CountingBackend) -> None:
        backend.fail_next = 1
        r = await client.post("/embed", json={"inputs": ["a", "b"]})
        assert r.status_code == 500 and "injected fault" in r.json()["error"]["message"]
        assert (await client.get("/health")).status_code == 200
        r = await client.post("/embed", json={"inputs": ["a", "b"]})
        assert r.status_code == 200

    serve(tiny_artifact, check)


def test_expired_sequences_get_504(tiny_artifact):
    async def check(client: httpx.AsyncClient, backend: CountingBackend) -> None:
        backend.delay_s = 0.3
        calls_before = backend.calls
        responses = await asyncio.gather(
            client.post("/embed", json={"inputs": "one"}),
            client.post("/embed", json={"inputs": "another, queued behind the first to arrive"}),
        )
        # whichever arrives first runs (0.3 s); the other, handed to the model thread behind it,
        # is past its 0.2 s deadline when its turn comes and is dropped without compute
        ran, late = sorted(responses, key=lambda r: r.status_code)
        assert ran.status_code == 200
        assert late.status_code == 504 and "request_timeout_s" in late.json()["error"]["message"]
        assert backend.calls == calls_before + 1

    serve(tiny_artifact, check, request_timeout_s=0.2, max_wait_ms=0, max_batch_size=1)


# -- metrics ------------------------------------------------------------------------------------
METRIC_NAMES = [
    "bertserve_requests_total",
    "bertserve_request_duration_seconds",
    "bertserve_queue_duration_seconds",
    "bertserve_inference_duration_seconds",
    "bertserve_queue_depth",
    "bertserve_queue_tokens",
    "bertserve_batch_size",
    "bertserve_batch_tokens",
    "bertserve_batch_padding_ratio",
    "bertserve_tokens_total",
    "bertserve_rejected_total",
    "bertserve_ready",
    "bertserve_model_info",
]


def _sample(text: str, name: str, labels: str = "") -> float:
    for line in text.splitlines():
        if line.startswith(name + (labels if labels else " ")) or (
            not labels and line.startswith(name + "{")
        ):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_expose_every_documented_name_and_move(tiny_artifact):
    async def check(client: httpx.AsyncClient, backend: CountingBackend) -> None:
        before = (await client.get("/metrics")).text
        for name in METRIC_NAMES:
            assert f"# TYPE {name.removesuffix('_total')}" in before, name
        await asyncio.gather(
            *[client.post("/embed", json={"inputs": f"text {i}"}) for i in range(5)]
        )
        after = (await client.get("/metrics")).text
        label = '{route="/embed",status="200"}'
        assert _sample(after, "bertserve_requests_total", label) == 5
        name = load_artifact(tiny_artifact).name
        per_model = f'{{model="{name}",route="/embed"}}'
        assert _sample(after, "bertserve_tokens_total", per_model) > 0
        assert _sample(after, "bertserve_batch_size_count", f'{{model="{name}"}}') >= 1
        assert _sample(after, "bertserve_ready") == 1
        assert f'bertserve_model_info{{model="{name}",precision="fp32"' in after

    serve(tiny_artifact, check)


def test_unknown_paths_share_one_metric_label(tiny_artifact):
    async def check(client: httpx.AsyncClient, backend: CountingBackend) -> None:
        for i in range(50):
            assert (await client.get(f"/random-{i}")).status_code == 404
        assert (await client.post("/embed/extra", json={})).status_code == 404
        text = (await client.get("/metrics")).text
        series = [
            line for line in text.splitlines() if line.startswith("bertserve_requests_total{")
        ]
        assert not any("random-" in line or "/embed/extra" in line for line in series)
        assert _sample(text, "bertserve_requests_total", '{route="unmatched",status="404"}') == 51

    serve(tiny_artifact, check)


# -- the command line ---------------------------------------------------------------------------
def test_bert_serve_refuses_a_tampered_artifact(tiny_artifact, tmp_path):
    import shutil

    copy = tmp_path / "art"
    shutil.copytree(tiny_artifact, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "tokenizer.json").write_text((copy / "tokenizer.json").read_text() + " ")
    result = subprocess.run(
        [sys.executable, "-m", "bertserve.service", "--model", str(copy)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("bert-serve: error:")
    assert "tokenizer.json does not match its sha256" in result.stderr
    assert manifest["files"]["tokenizer.json"]
    missing = subprocess.run(
        [sys.executable, "-m", "bertserve.service", "--model", str(tmp_path / "no")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 2 and "does not exist" in missing.stderr


@pytest.mark.parametrize("access_log", [False, True])
def test_bert_serve_runs_and_shuts_down_gracefully(tiny_artifact, access_log):
    flags = ["--log-level", "info", *(["--access-log"] if access_log else [])]
    command = serve_command(tiny_artifact, *flags)
    env = {"BERTSERVE_MAX_INPUTS": "3"}
    with running_server(command, env=env, capture_stdout=True) as (url, proc):
        r = httpx.post(f"{url}/embed", json={"inputs": "over real http"})
        assert r.status_code == 200
        r = httpx.post(f"{url}/embed", json={"inputs": ["a", "b", "c", "d"]})
        assert r.status_code == 413 and "max_inputs 3" in r.text  # env var reached Settings
        proc.send_signal(signal.SIGTERM)
        # uvicorn drains; the signal it answered is not raised again: exit 0, no traceback
        assert proc.wait(timeout=30) == 0
        log = proc.stderr.read()
        assert b"Traceback" not in log
        # start-up says what it chose
        assert b"fp32 on CPUExecutionProvider" in log or b"int8 on CPUExecutionProvider" in log
        assert b"model thread(s) x" in log
        # a line per request only when asked: at info level it cost the event loop per request
        assert (b'"POST /embed HTTP/1.1" 200' in proc.stdout.read()) == access_log


@pytest.mark.parametrize("pooling", ["mean", "cls", "pooler"])
def test_pool_one_equals_pool_on_an_unpadded_sequence(pooling):

    rng = np.random.default_rng(0)
    hidden = rng.standard_normal((7, 16)).astype(np.float32)  # (n, H)
    pooler_output = rng.standard_normal((1, 16)).astype(np.float32)
    expected = pool(hidden[None], np.ones((1, 7), np.int64), pooling, pooler_output)[0]
    got = pool_one(hidden, pooling, pooler_output)
    assert got.dtype == np.float32 and got.shape == (16,)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


def test_warm_up_ignores_request_deadlines(tiny_artifact):
    async def check(client: httpx.AsyncClient, backend: CountingBackend) -> None:
        assert (await client.get("/ready")).status_code == 200
        assert backend.calls >= 1  # the warm-up reached the model

    serve(tiny_artifact, check, request_timeout_s=1e-6, warmup=True)


def test_docs_declare_our_error_body(tiny_artifact):
    async def check(client: httpx.AsyncClient, backend: CountingBackend) -> None:
        spec = (await client.get("/openapi.json")).json()
        for path in ("/embed", "/fill-mask", "/next-sentence", "/classify"):
            responses = spec["paths"][path]["post"]["responses"]
            schema = responses["422"]["content"]["application/json"]["schema"]
            assert schema["$ref"].endswith("/ErrorResponse"), (path, schema)
            assert "413" in responses and "429" in responses
        assert "HTTPValidationError" not in json.dumps(spec["paths"])
        fill = spec["paths"]["/fill-mask"]["post"]["responses"]["200"]["content"]
        assert "FillMaskCandidate" in json.dumps(fill)

    serve(tiny_artifact, check)
