"""Client input that used to answer 5xx or echo unbounded text (issue 29): deep nesting, lone
surrogates in echoed fields, huge keys and lists. Every POST route, the API's error shape."""

from __future__ import annotations

import time

import httpx
import orjson
import pytest

from bertserve.service.routes import POST_ROUTES
from tests.fakes import CountingBackend, serve_fake

JSON = {"content-type": "application/json"}
FIELD = {  # the text field of each route's body
    "/embed": "inputs",
    "/v1/embeddings": "input",
    "/classify": "inputs",
    "/fill-mask": "inputs",
    "/next-sentence": "pairs",
    "/tokenize": "inputs",
    "/rerank": "texts",
    "/v1/rerank": "documents",
    "/similarity": "inputs",
}
VALID = {  # a small valid body of each route
    **{path: {field: "a"} for path, field in FIELD.items()},
    "/next-sentence": {"pairs": [["a", "b"]]},
    "/rerank": {"query": "q", "texts": "a"},
    "/v1/rerank": {"query": "q", "documents": ["a"]},
    "/similarity": {"inputs": {"source_sentence": "q", "sentences": "a"}},
}
IGNORES_UNKNOWN_FIELDS = {"/v1/embeddings", "/v1/rerank"}  # OpenAI's and Jina's clients
NESTED = {
    "depth 100,000 in a field": lambda f: (
        b'{"%s": ' % f.encode() + b"[" * 100_000 + b"]" * 100_000 + b"}"
    ),
    "bare depth 100,000": lambda f: b"[" * 100_000,
    "depth 3,000": lambda f: b'{"%s": ' % f.encode() + b"[" * 3000 + b"]" * 3000 + b"}",
    # past orjson's limit, with a lone surrogate so that Python's parser is tried too
    "depth 3,000 with a surrogate": lambda f: (
        b'{"m": "\\ud800", "%s": ' % f.encode() + b"[" * 3000 + b"]" * 3000 + b"}"
    ),
}


def test_every_post_route_covered():
    assert set(FIELD) == set(VALID) == set(POST_ROUTES)


def _error(response: httpx.Response, status: int) -> dict[str, str]:
    assert response.status_code == status, response.text[:300]
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert set(error) == {"type", "message"}
    return error


def test_deep_nesting_is_400_on_every_route_and_the_server_keeps_serving(tmp_path):
    async def check(client: httpx.AsyncClient, backend: CountingBackend) -> None:
        for path, field in FIELD.items():
            for name, body in NESTED.items():
                r = await client.post(path, content=body(field), headers=JSON)
                error = _error(r, 400)
                assert "not valid JSON" in error["message"], (path, name, error)
        assert (await client.post("/embed", json={"inputs": "still serving"})).status_code == 200

    serve_fake(tmp_path, check)


def test_echoed_client_text_is_valid_and_bounded(tmp_path):
    async def check(client: httpx.AsyncClient, backend: CountingBackend) -> None:
        # a lone surrogate in the echoed `model`: 422 naming it (was a 500 writing the answer)
        body = b'{"input": "a", "model": "m\\ud800"}'
        error = _error(await client.post("/v1/embeddings", content=body, headers=JSON), 422)
        assert error["message"].startswith("model: ")
        # a 1 MB model name is refused rather than echoed; one of 256 not served: 404, cut
        r = await client.post("/v1/embeddings", json={"input": "a", "model": "m" * 1_000_000})
        assert "256" in _error(r, 422)["message"] and len(r.content) < 2000
        r = await client.post("/v1/embeddings", json={"input": "a", "model": "m" * 256})
        assert _error(r, 404)["type"] == "model_not_found" and len(r.content) < 2000
        # a 1 MB unknown key (and one with a lone surrogate) is named, cut, in the 422
        for path, valid in VALID.items():
            r = await client.post(path, json={**valid, "k" * 1_000_000: 1})
            assert len(r.content) < 2000, (path, len(r.content))
            if path in IGNORES_UNKNOWN_FIELDS:  # clients send fields of their own: ignored
                assert r.status_code == 200, (path, r.text)
            else:
                assert "kkkk" in _error(r, 422)["message"]
            body = orjson.dumps(valid)[:-1] + b', "\\udc00": 1}'
            r = await client.post(path, content=body, headers=JSON)
            assert r.status_code in (200, 422), (path, r.text)
            r.json()  # valid JSON, whatever the status
        # a multi-token target of 19,000 characters is quoted cut
        target = "the river " * 1_900
        r = await client.post("/fill-mask", json={"inputs": "[MASK]", "targets": [target]})
        error = _error(r, 422)
        assert "single token" in error["message"] and len(error["message"]) < 400

    serve_fake(tmp_path, check)


@pytest.mark.parametrize("item", [b"1", b'"a"', b"[]", b"{}"])
def test_a_million_items_are_counted_before_validation(tmp_path, item):
    """2 MB of integers took 8 s, 1.3 GB and /health with it, to get its (correct) 422."""

    async def check(client: httpx.AsyncClient, backend: CountingBackend) -> None:
        body = b'{"inputs": [' + b",".join([item] * 1_000_000) + b"]}"
        started = time.process_time()  # CPU of every thread: not slowed by a busy machine
        r = await client.post("/embed", content=body, headers=JSON)
        error = _error(r, 413)
        assert error["message"] == "inputs has 1000000 items, over max_inputs 256"
        assert time.process_time() - started < 2.0  # the whole validation took 8 s
        wide = b"{" + b",".join(b'"k%d": 1' % i for i in range(100_000)) + b"}"
        error = _error(await client.post("/tokenize", content=wide, headers=JSON), 400)
        assert "100000 fields" in error["message"]

    serve_fake(tmp_path, check, max_body_bytes=8_000_000)


def test_the_collector_pause_is_counted_across_parses():
    """Big bodies are parsed with the cyclic collector off; overlapping parses (threads) turn
    it back on only when the last ends, and never when it was off before."""
    import gc

    from bertserve.service.hot_path import CollectorPause

    pause = CollectorPause()
    assert gc.isenabled()
    pause.__enter__()
    pause.__enter__()  # a second parse in another thread
    assert not gc.isenabled()
    pause.__exit__(None, None, None)
    assert not gc.isenabled()  # the other is still parsing
    pause.__exit__(None, None, None)
    assert gc.isenabled()
    gc.disable()
    try:
        with pause:
            pass
        assert not gc.isenabled()  # off before: left off
    finally:
        gc.enable()
