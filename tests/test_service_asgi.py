"""The service at the ASGI level, with hand-made receive/send: clients that disconnect while
they wait, and bodies that never arrive."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx

from bertserve.service.app import create_app
from bertserve.service.settings import Settings
from tests.fakes import CountingBackend, FakeBackend, fake_artifact
from tests.test_service import _sample


def _gone_request(body: bytes, parts: int, gone_after_s: float, sends_all: bool = True):
    """scope, receive and send of a client that sends `body` (in `parts`; or only the first
    half of it) and then goes away `gone_after_s` later."""
    length = len(body)
    if not sends_all:
        body = body[: length // 2]
    step = -(-len(body) // parts)
    messages = [
        {
            "type": "http.request",
            "body": body[i : i + step],
            "more_body": not sends_all or i + step < len(body),
        }
        for i in range(0, len(body), step)
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        await asyncio.sleep(gone_after_s)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/embed",
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(length).encode()),
        ],
        "query_string": b"",
    }
    return scope, receive, send, sent


def test_a_client_that_disconnects_is_cancelled_before_compute(tmp_path):
    artifact = fake_artifact(tmp_path)
    settings = Settings(
        model=tmp_path, threads=2, precision="fp32", max_batch_size=1, max_wait_ms=0
    )
    backend = CountingBackend(FakeBackend(artifact))
    app = create_app(settings, backend, artifact)
    body = json.dumps({"inputs": ["a", "b", "c", "d", "e"]}).encode()

    async def main() -> None:
        async with app.router.lifespan_context(app):
            backend.delay_s = 0.2  # every model call: 0.2 s
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                blocker = asyncio.create_task(client.post("/embed", json={"inputs": ["x"] * 4}))
                await asyncio.sleep(0.05)
                calls_before = backend.calls
                scope, receive, send, sent = _gone_request(body, 1, 0.05)  # gone 50 ms in
                await app(scope, receive, send)
                assert (await blocker).status_code == 200
                metrics = (await client.get("/metrics")).text
        assert not any(m["type"] == "http.response.start" for m in sent)  # nobody to answer
        # the blocker's 3 remaining sequences ran; the 5 abandoned ones never did
        assert backend.calls - calls_before <= 4
        assert (
            _sample(metrics, "bertserve_rejected_total", '{model="fake",reason="cancelled"}') == 5
        )
        # counted as the client's doing (499), not as a server error
        assert 'bertserve_requests_total{route="/embed",status="499"} 1.0' in metrics
        assert 'status="500"' not in metrics

    asyncio.run(main())


def test_a_body_that_never_arrives_is_408_not_a_hang(tmp_path):
    artifact = fake_artifact(tmp_path)
    settings = Settings(model=tmp_path, threads=2, precision="fp32", body_timeout_s=0.2)
    app = create_app(settings, FakeBackend(artifact), artifact)

    async def request(path: str) -> list[dict[str, Any]]:
        sent: list[dict[str, Any]] = []
        first = [{"type": "http.request", "body": b'{"inputs": "a', "more_body": True}]

        async def receive() -> dict[str, Any]:
            if first:
                return first.pop(0)
            await asyncio.sleep(3600)  # the rest of the body never comes
            raise AssertionError("unreachable")

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "method": "POST",
            "path": path,
            "headers": [(b"content-type", b"application/json"), (b"content-length", b"100")],
            "query_string": b"",
        }
        await asyncio.wait_for(app(scope, receive, send), 5)
        return sent

    async def main() -> None:
        async with app.router.lifespan_context(app):
            for path in ("/embed", "/fill-mask"):  # the hot path and a FastAPI route
                sent = await request(path)
                assert sent[0]["status"] == 408, (path, sent)
                assert b"body_timeout_s 0.2" in sent[1]["body"]

    asyncio.run(main())


def test_every_post_route_has_one_path_and_a_docs_entry(tmp_path):
    """POST routes are answered by the hot path alone: FastAPI mounts none of them, and /docs
    still declares each with its request schema."""
    from fastapi.routing import APIRoute

    from bertserve.service.route_docs import documented
    from bertserve.service.routes import POST_ROUTES

    artifact = fake_artifact(tmp_path)
    settings = Settings(model=tmp_path, threads=2, precision="fp32")
    app = create_app(settings, FakeBackend(artifact), artifact)
    mounted_post = [
        r.path for r in app.router.routes if isinstance(r, APIRoute) and "POST" in r.methods
    ]
    assert mounted_post == []
    declared = {r.path for r in documented.routes if isinstance(r, APIRoute)}
    assert declared == set(POST_ROUTES)
    spec = app.openapi()
    for path, (schema, _) in POST_ROUTES.items():
        body = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]
        assert body["schema"]["$ref"].endswith(f"/{schema.__name__}"), path


def test_a_gone_request_leaves_nothing_queued_whatever_its_phase(tmp_path):
    """Issue 29: 10 clients gone after 50 ms left their sequences queued for 0.65 s, not counted.
    Reading: nothing was queued. Tokenizing (a long text, on a worker thread): nothing gets
    queued. Queued behind a 1 s model call: its sequences leave the queue at once, counted."""
    artifact = fake_artifact(tmp_path)
    settings = Settings(
        model=tmp_path, threads=1, precision="fp32", max_batch_size=1, max_wait_ms=0
    )
    backend = CountingBackend(FakeBackend(artifact))
    app = create_app(settings, backend, artifact)
    long_text = "word " * 2000  # over the characters tokenized on the loop: a worker thread

    async def main() -> None:
        async with app.router.lifespan_context(app):
            batcher = app.state.batcher
            cancelled = batcher.metrics.parent.rejected.labels("cancelled", batcher.metrics.name)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                backend.delay_s = 1.0
                blocker = asyncio.create_task(client.post("/embed", json={"inputs": ["x"]}))
                await asyncio.sleep(0.1)  # its one call holds the only model thread for 1 s
                calls = backend.calls
                phases = {
                    "reading": (json.dumps({"inputs": ["a"] * 5}).encode(), 3, 0.0),
                    "tokenizing": (json.dumps({"inputs": [long_text] * 5}).encode(), 1, 0.0),
                    "queued": (json.dumps({"inputs": ["a", "b", "c", "d", "e"]}).encode(), 1, 0.05),
                }
                for phase, (body, parts, after_s) in phases.items():
                    # reading: the client leaves mid-body
                    scope, receive, send, sent = _gone_request(
                        body, parts, after_s, sends_all=phase != "reading"
                    )
                    before = cancelled._value.get()
                    started = asyncio.get_running_loop().time()
                    await app(scope, receive, send)
                    elapsed = asyncio.get_running_loop().time() - started
                    assert not sent, phase  # nobody to answer
                    assert elapsed < 0.5, (phase, elapsed)  # not held until the model is free
                    # nothing of it is left in the queue, the admission budget or the gauge
                    assert batcher.queue == [] and batcher.queued_tokens == 0, phase
                    assert batcher.metrics.queue_depth._value.get() == 0, phase
                    dropped = cancelled._value.get() - before
                    # queued: all but the one already handed to the (busy) model thread, which
                    # skips it when it gets there
                    assert dropped == (4 if phase == "queued" else 0), (phase, dropped)
                total = cancelled._value.get()
                assert (await blocker).status_code == 200
                await asyncio.sleep(0.1)
                assert cancelled._value.get() - total == 1  # the handed-off one, skipped
                assert backend.calls == calls  # none of the gone requests' sequences ran
                metrics = (await client.get("/metrics")).text
        assert 'bertserve_requests_total{route="/embed",status="499"} 3.0' in metrics
        assert 'status="500"' not in metrics

    asyncio.run(main())
