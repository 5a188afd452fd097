"""bert-serve's refusals: every bad input gets its documented 4xx and a message naming the
limit, and the server keeps serving; API keys; routes a model cannot serve answer 424."""

from __future__ import annotations

from typing import Any

import httpx

from tests.fakes import CountingBackend, FakeBackend, fake_artifact, serve_fake, serve_models

# ----------------------------------------------------------------------------------
BAD: list[tuple[str, str, Any, int, str]] = [
    # (name, path, body: dict or raw bytes, status, words in the message)
    ("malformed json", "/embed", b"{not json", 400, "not valid JSON"),
    ("invalid utf-8", "/embed", b'{"inputs": "\xff\xfe"}', 400, "not valid JSON"),
    ("missing inputs", "/embed", {}, 422, "inputs"),
    ("inputs wrong type", "/embed", {"inputs": 5}, 422, "inputs"),
    ("list of numbers", "/embed", {"inputs": [1, 2]}, 422, "inputs"),
    ("empty string", "/embed", {"inputs": ""}, 422, "empty"),
    ("blank string", "/embed", {"inputs": "   "}, 422, "empty"),
    ("empty list", "/embed", {"inputs": []}, 422, "empty list"),
    ("too many inputs", "/embed", {"inputs": ["a"] * 9}, 413, "max_inputs 8"),
    ("too many characters", "/embed", {"inputs": "a" * 2001}, 413, "max_input_chars 2000"),
    (
        "too long, no truncate",
        "/embed",
        {"inputs": "word " * 300, "truncate": False},
        422,
        "max_seq_len",
    ),
    ("unknown pooling", "/embed", {"inputs": "a", "pooling": "max"}, 422, "pooling"),
    ("unknown field", "/embed", {"inputs": "a", "colour": "red"}, 422, "colour"),
    ("dimensions too big", "/embed", {"inputs": "a", "dimensions": 129}, 422, "hidden size 128"),
    ("dimensions zero", "/embed", {"inputs": "a", "dimensions": 0}, 422, "dimensions"),
    ("bad encoding", "/embed", {"inputs": "a", "encoding_format": "hex"}, 422, "encoding_format"),
    (
        "bad direction",
        "/embed",
        {"inputs": "a", "truncation_direction": "up"},
        422,
        "truncation_direction",
    ),
    ("nul byte", "/embed", {"inputs": "a\u0000b"}, 422, "NUL"),
    ("no mask", "/fill-mask", {"inputs": "no mask here"}, 422, "no [MASK]"),
    (
        "fill-mask too long",
        "/fill-mask",
        {"inputs": "[MASK] " + "word " * 300},
        422,
        "fill-mask never truncates",
    ),
    ("top_k zero", "/fill-mask", {"inputs": "[MASK]", "top_k": 0}, 422, "top_k"),
    ("top_k huge", "/fill-mask", {"inputs": "[MASK]", "top_k": 100000}, 422, "max_top_k"),
    (
        "multi-token target",
        "/fill-mask",
        {"inputs": "[MASK]", "targets": ["zzqxj"]},
        422,
        "single token",
    ),
    ("empty targets", "/fill-mask", {"inputs": "[MASK]", "targets": []}, 422, "targets"),
    ("pairs not pairs", "/next-sentence", {"pairs": [["only one"]]}, 422, "pairs"),
    ("empty pairs", "/next-sentence", {"pairs": []}, 422, "empty list"),
    ("openai empty input", "/v1/embeddings", {"input": []}, 422, "empty list"),
    ("openai dimensions", "/v1/embeddings", {"input": "a", "dimensions": 4096}, 422, "hidden size"),
    ("tokenize wrong type", "/tokenize", {"inputs": {"a": 1}}, 422, "inputs"),
    ("classify mixed", "/classify", {"inputs": ["a", ["b", "c"]]}, 422, "inputs.list"),
    ("classify empty", "/classify", {"inputs": []}, 422, "empty list"),
    ("classify triple", "/classify", {"inputs": [["a", "b", "c"]]}, 422, "[first, second]"),
    ("classify top_k 0", "/classify", {"inputs": "a", "top_k": 0}, 422, "top_k"),
    ("classify no head", "/classify", {"inputs": "a"}, 424, "no classifier head"),
    ("huge body", "/embed", {"inputs": "a" * 70_000}, 413, "max_body_bytes"),
    (
        "response too big",
        "/embed",
        {"inputs": ["word " * 50] * 8, "output": "tokens"},
        413,
        "exceed max_token_vectors 200",
    ),
    # JSON can spell lone UTF-16 surrogates, which tokenizers refuse with a TypeError (was 500)
    # (the hot path's JSON parser refuses them as invalid JSON already)
    ("lone surrogate", "/embed", b'{"inputs": "a \\ud800"}', 422, "surrogate"),
    ("surrogate tokenize", "/tokenize", b'{"inputs": ["ok", "a \\udc00"]}', 422, "text 1"),
    ("surrogate fill-mask", "/fill-mask", b'{"inputs": "[MASK] \\ud800"}', 422, "surrogate"),
    (
        "surrogate target",
        "/fill-mask",
        b'{"inputs": "[MASK]", "targets": ["\\ud800"]}',
        422,
        "target 0 has a lone surrogate",
    ),
    ("surrogate pair", "/next-sentence", b'{"pairs": [["a", "b \\ud801"]]}', 422, "surrogate"),
    (
        "too many pairs",
        "/next-sentence",
        {"pairs": [["a", "b"]] * 9},
        413,
        "pairs has 9 items, over max_inputs 8",
    ),
]


def test_bad_inputs_get_documented_4xx_and_the_server_keeps_serving(tmp_path):
    async def check(client: httpx.AsyncClient, backend: CountingBackend) -> None:
        for name, path, body, status, words in BAD:
            if isinstance(body, bytes):
                r = await client.post(
                    path, content=body, headers={"content-type": "application/json"}
                )
            else:
                r = await client.post(path, json=body)
            assert r.status_code == status, (name, r.status_code, r.text)
            assert "error" in r.json(), (name, r.text)
            error = r.json()["error"]
            assert words in error["message"], (name, error)
            assert error["type"]
        r = await client.post("/embed", json={"inputs": "still serving"})
        assert r.status_code == 200 and len(r.json()["data"][0]["embedding"]) == 128

    assert len(BAD) >= 25
    serve_fake(
        tmp_path,
        check,
        max_inputs=8,
        max_input_chars=2000,
        max_body_bytes=65536,
        max_token_vectors=200,
    )


def test_pairs_count_as_one_input_each(tmp_path):
    async def check(client: httpx.AsyncClient, backend: CountingBackend) -> None:
        r = await client.post("/next-sentence", json={"pairs": [["a", "b"]] * 8})  # 16 texts
        assert r.status_code == 200 and len(r.json()["data"]) == 8

    serve_fake(tmp_path, check, max_inputs=8)


def test_a_request_larger_than_the_queue_is_413_not_429(tmp_path):
    async def check(client: httpx.AsyncClient, backend: CountingBackend) -> None:
        r = await client.post("/embed", json={"inputs": ["word " * 100] * 2})  # 2 x 64 tokens
        assert r.status_code == 413, r.text
        assert "exceeds max_queued_tokens 64" in r.json()["error"]["message"]
        assert "retry-after" not in r.headers
        assert (await client.post("/embed", json={"inputs": "short"})).status_code == 200

    serve_fake(tmp_path, check, max_queued_tokens=64)


def test_api_key_is_required_when_set(tmp_path):
    async def check(client: httpx.AsyncClient, backend: CountingBackend) -> None:
        assert (await client.post("/embed", json={"inputs": "a"})).status_code == 401
        wrong = {"authorization": "Bearer nope"}
        r = await client.post("/embed", json={"inputs": "a"}, headers=wrong)
        assert r.status_code == 401 and "API key" in r.json()["error"]["message"]
        right = {"authorization": "Bearer s3cret"}
        assert (await client.post("/embed", json={"inputs": "a"}, headers=right)).status_code == 200
        for path in ("/health", "/ready", "/metrics"):
            assert (await client.get(path)).status_code == 200
        # the docs describe the keyed routes and need the key too
        for path in ("/docs", "/openapi.json"):
            assert (await client.get(path)).status_code == 401, path
            assert (await client.get(path, headers=right)).status_code == 200, path
        # two Authorization headers (wrong, then right: the last used to win) are refused
        for pair in (["Bearer nope", "Bearer s3cret"], ["Bearer s3cret", "Bearer s3cret"]):
            headers = [("authorization", value) for value in pair]
            r = await client.post("/embed", json={"inputs": "a"}, headers=headers)
            assert r.status_code == 400 and "more than one Authorization" in r.text, r.text

    serve_fake(tmp_path, check, api_key="s3cret")


def test_embedding_only_model_answers_424_for_heads(tmp_path):
    async def check(client: httpx.AsyncClient, backend: CountingBackend) -> None:
        for path, body in (
            ("/fill-mask", {"inputs": "the [MASK]"}),
            ("/next-sentence", {"pairs": [["the river", "the sea"]]}),
            ("/embed", {"inputs": "the", "pooling": "pooler"}),
            ("/classify", {"inputs": "the"}),
        ):
            r = await client.post(path, json=body)
            assert r.status_code == 424, (path, r.text)
        assert (await client.post("/embed", json={"inputs": "the river"})).status_code == 200

    serve_fake(tmp_path, check, mlm=False, nsp=False, pooler=False)


def test_a_bug_answers_500_in_the_error_shape_is_logged_and_the_server_keeps_serving(
    tmp_path, monkeypatch, caplog
):
    from bertserve.service import routes

    schema, _ = routes.POST_ROUTES["/embed"]

    async def broken(*_: Any) -> dict[str, Any]:
        raise RuntimeError("a bug in a route")

    monkeypatch.setitem(routes.POST_ROUTES, "/embed", (schema, broken))

    async def check(client: httpx.AsyncClient, backend: CountingBackend) -> None:
        response = await client.post("/embed", json={"inputs": "a"})
        assert response.status_code == 500
        assert response.json() == {
            "error": {"type": "internal_error", "message": "internal server error"}
        }
        assert (await client.post("/tokenize", json={"inputs": "a"})).status_code == 200
        metrics = (await client.get("/metrics")).text
        assert 'bertserve_requests_total{route="/embed",status="500"} 1.0' in metrics

    with caplog.at_level("ERROR", logger="bertserve"):
        serve_fake(tmp_path, check)
    assert "a bug in a route" in caplog.text and "POST /embed" in caplog.text


def test_the_bad_input_table_holds_for_a_second_model_named_in_the_body(tmp_path):
    """The same refusals when a request names the second of two models: the model is picked
    after the body is checked, and the limits are the server's."""
    first = fake_artifact(tmp_path / "first")
    second = fake_artifact(tmp_path / "second")
    backends = [CountingBackend(FakeBackend(first)), CountingBackend(FakeBackend(second, seed=1))]

    async def check(client: httpx.AsyncClient) -> None:
        default_calls = backends[0].calls  # its warm-up
        for name, path, body, status, words in BAD:
            if isinstance(body, bytes):
                r = await client.post(
                    path, content=body, headers={"content-type": "application/json"}
                )
            else:
                named = {**body, "model": "second"} if isinstance(body, dict) else body
                r = await client.post(path, json=named)
            assert r.status_code == status, (name, r.status_code, r.text)
            assert words in r.json()["error"]["message"], (name, r.text)
        r = await client.post("/embed", json={"inputs": "still serving", "model": "second"})
        assert r.status_code == 200 and r.json()["model"] == "second"
        assert backends[0].calls == default_calls  # nothing reached the default model

    serve_models(
        [("first", first, backends[0]), ("second", second, backends[1])],
        check,
        max_inputs=8,
        max_input_chars=2000,
        max_body_bytes=65536,
        max_token_vectors=200,
    )
