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
                messages = [{"type": "http.request", "body": body, "more_body": False}]

                async def receive() -> dict[str, Any]:
                    if messages:
                        return messages.pop(0)
                    await asyncio.sleep(0.05)  # the client gives up 50 ms in
                    return {"type": "http.disconnect"}

                sent: list[dict[str, Any]] = []

                async def send(message: dict[str, Any]) -> None:
                    sent.append(message)

                scope = {
                    "type": "http",
                    "method": "POST",
                    "path": "/embed",
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                    ],
                    "query_string": b"",
                }
                await app(scope, receive, send)
                assert (await blocker).status_code == 200
                metrics = (await client.get("/metrics")).text
        assert not any(m["type"] == "http.response.start" for m in sent)  # nobody to answer
        # the blocker's 3 remaining sequences ran; the 5 abandoned ones never did
        assert backend.calls - calls_before <= 4
        assert _sample(metrics, "bertserve_rejected_total", '{reason="cancelled"}') == 5
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
