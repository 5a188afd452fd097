"""Limits below the ASGI app (service/http_limits.py), against a real bert-serve over raw sockets:
oversized or too many headers, headers that never finish, and a body still arriving at shutdown;
keep-alive and "Expect: 100-continue" through the limited protocol."""

from __future__ import annotations

import json
import signal
import socket
import time

import httpx

from tests.conftest import running_server, serve_command

LIMITS = {
    "BERTSERVE_MAX_HEADER_BYTES": "2048",
    "BERTSERVE_MAX_HEADERS": "20",
    "BERTSERVE_HEADER_TIMEOUT_S": "0.5",
}


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    return sock


def _read_all(sock: socket.socket) -> bytes:
    """Everything until the server closes the connection."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _status_and_error(response: bytes) -> tuple[int, dict[str, str]]:
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)["error"]


def test_headers_over_the_limits_get_431_naming_it_and_the_server_keeps_serving(tiny_artifact):
    with running_server(serve_command(tiny_artifact), env=LIMITS) as (url, _):
        with _connect(url) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 4000 + b"\r\n\r\n")
            status, error = _status_and_error(_read_all(sock))
        assert status == 431 and "max_header_bytes 2048" in error["message"]

        many = b"".join(b"X-H%d: v\r\n" % i for i in range(30))
        with _connect(url) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")
            status, error = _status_and_error(_read_all(sock))
        assert status == 431 and "max_headers 20" in error["message"]

        # within the limits, as many headers as a browser sends: served
        usual = {f"x-h{i}": "v" * 50 for i in range(15)}
        assert httpx.get(f"{url}/health", headers=usual).status_code == 200


def test_headers_that_never_finish_get_408_and_the_connection_closes(tiny_artifact):
    with running_server(serve_command(tiny_artifact), env=LIMITS) as (url, _):
        with _connect(url) as sock:
            started = time.monotonic()
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
            status, error = _status_and_error(_read_all(sock))
            waited = time.monotonic() - started
        assert status == 408 and "header_timeout_s 0.5" in error["message"]
        assert 0.4 <= waited < 5
        assert httpx.get(f"{url}/health").status_code == 200


def test_shutdown_answers_a_body_still_arriving_at_once_and_exits_0(tiny_artifact):
    with running_server(serve_command(tiny_artifact), env=LIMITS) as (url, proc):
        sock = _connect(url)
        sock.sendall(
            b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n" + b'{"inputs": "'
        )
        time.sleep(0.3)  # the request is in the app, waiting for the rest of its body
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        status, error = _status_and_error(_read_all(sock))
        sock.close()
        assert status == 503 and error["type"] == "shutting_down"
        assert proc.wait(timeout=10) == 0
        assert time.monotonic() - started < 5  # not the 30 s grace period nor body_timeout_s
        assert proc.stderr is not None and b"Traceback" not in proc.stderr.read()


def _read_response(sock: socket.socket, buffer: bytes) -> tuple[bytes, bytes]:
    """One response with a Content-Length from `sock`; returns (response, bytes after it)."""
    while b"\r\n\r\n" not in buffer:
        buffer += sock.recv(65536)
    head, _, rest = buffer.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length")
    )
    while len(rest) < length:
        rest += sock.recv(65536)
    return head + b"\r\n\r\n" + rest[:length], rest[length:]


def test_keep_alive_responses_and_expect_100_continue_over_one_connection(tiny_artifact):
    body = b'{"inputs": "hello world"}'
    post = (
        b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n" % len(body)
    )
    with running_server(serve_command(tiny_artifact)) as (url, _), _connect(url) as sock:
        buffer = b""
        for _ in range(3):  # three requests, one connection: each answer whole
            sock.sendall(post + b"\r\n" + body)
            response, buffer = _read_response(sock, buffer)
            assert response.startswith(b"HTTP/1.1 200"), response[:200]
            assert len(json.loads(response.partition(b"\r\n\r\n")[2])["data"]) == 1
        # a client that waits for "100 Continue" before its body gets it, then its answer
        sock.sendall(post + b"Expect: 100-continue\r\n\r\n")
        interim = b""
        while b"\r\n\r\n" not in interim:
            interim += sock.recv(65536)
        assert interim.startswith(b"HTTP/1.1 100"), interim
        sock.sendall(body)
        response, _ = _read_response(sock, interim.partition(b"\r\n\r\n")[2])
        assert response.startswith(b"HTTP/1.1 200"), response[:200]


# malformed HTTP: (name, raw request); each is refused with a 4xx in the API's error shape, the
# connection closed, and nothing after it on the connection is answered as a request
FRAMING = [
    (
        "conflicting Content-Length",
        b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nabcdef",
    ),
    (
        "Content-Length and Transfer-Encoding",
        b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ),
    (
        "bad chunk size",
        b"POST /embed HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"zz\r\nabc\r\n0\r\n\r\n",
    ),
    ("negative Content-Length", b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n"),
    ("obs-fold", b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n"),
    ("unknown method", b"FROB /health HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("lowercase method", b"get /health HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
    ("NUL in a header", b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n"),
    ("space before colon", b"GET /health HTTP/1.1\r\nHost: x\r\nX-A : b\r\n\r\n"),
    ("bad version", b"GET /health HTTP/9.9\r\nHost: x\r\n\r\n"),
    ("garbage", b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n"),
    ("bare LF line ends", b"GET /health HTTP/1.1\nHost: x\n\n"),
]


def test_malformed_http_is_refused_in_the_error_shape(tiny_artifact):
    with running_server(serve_command(tiny_artifact)) as (url, _):
        answers = {}
        for name, raw in FRAMING:
            with _connect(url) as sock:
                sock.sendall(raw)
                answers[name] = _read_all(sock)
        for name, response in answers.items():
            if response.startswith(b"HTTP/1.1 200"):  # a lenient parse, one answer only
                assert response.count(b"HTTP/1.1") == 1, (name, response)
                continue
            head, _, body = response.partition(b"\r\n\r\n")
            status = int(head.split()[1])
            assert 400 <= status < 500, (name, response)
            assert b"content-type: application/json" in head.lower(), (name, response)
            # a chunked POST may be refused from its headers (411) before its body is parsed
            kinds = (
                {"invalid_request", "length_required"}
                if b"chunked" in dict(FRAMING)[name]
                else {"invalid_request"}
            )
            assert json.loads(body)["error"]["type"] in kinds, (name, response)
        assert httpx.get(f"{url}/health").status_code == 200


def test_probes_and_refusals_answered_in_the_protocol_keep_the_connection_in_order(tiny_artifact):
    """bert-serve answers the probes and header-only refusals without an ASGI task
    (edge.immediate): the answers must be the ASGI path's, in order with the others on one
    connection, the refused body read and dropped, and each counted."""
    env = {"BERTSERVE_MAX_BODY_BYTES": "1000"}
    body = b'{"inputs": "hello world"}'
    post = b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    refused = b"x" * 2000  # over max_body_bytes: refused from its Content-Length
    pipelined = (
        b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
        + post + b"Content-Length: %d\r\n\r\n" % len(body) + body
        + b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n"
        + post + b"Content-Length: %d\r\n\r\n" % len(refused) + refused
        + b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    )  # fmt: skip
    with running_server(serve_command(tiny_artifact), env=env) as (url, _), _connect(url) as sock:
        sock.sendall(pipelined)
        buffer = b""
        answers = []
        for _ in range(5):
            response, buffer = _read_response(sock, buffer)
            head, _, payload = response.partition(b"\r\n\r\n")
            assert b"content-type: application/json" in head.lower(), head
            answers.append((int(head.split()[1]), json.loads(payload)))
        assert [status for status, _ in answers] == [200, 200, 200, 413, 200]
        assert answers[0][1] == {"status": "ok"} == answers[4][1]
        assert len(answers[1][1]["data"]) == 1
        assert answers[2][1] == {"ready": True}
        assert "max_body_bytes 1000" in answers[3][1]["error"]["message"]
        metrics = httpx.get(f"{url}/metrics").text
    assert 'bertserve_requests_total{route="/health",status="200"} 2.0' in metrics
    assert 'bertserve_requests_total{route="/embed",status="413"} 1.0' in metrics


def test_a_connection_told_to_retry_later_is_read_again_only_then(tiny_artifact):
    """A 429 with Retry-After: the connection's next request waits until then (a flood of
    clients resending at once kept the loop busy refusing, and the probes waited)."""
    env = {"BERTSERVE_MAX_BODY_BYTES_IN_FLIGHT": "1000"}
    post = b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    with (
        running_server(serve_command(tiny_artifact), env=env) as (url, _),
        _connect(url) as slow,
        _connect(url) as other,
    ):
        slow.sendall(post + b"Content-Length: 800\r\n\r\n{")  # 800 bytes in flight
        time.sleep(0.3)
        body = b'{"inputs": "' + b"a" * 280 + b'"}'
        other.sendall(post + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        response, buffer = _read_response(other, b"")
        assert response.startswith(b"HTTP/1.1 429"), response[:200]
        assert b"retry-after: 1\r\n" in response.lower()
        started = time.perf_counter()
        other.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        response, _ = _read_response(other, buffer)
        waited = time.perf_counter() - started
        assert response.startswith(b"HTTP/1.1 200"), response[:200]
        assert 0.7 <= waited <= 3, waited
        # other connections are not held
        started = time.perf_counter()
        assert httpx.get(f"{url}/health").status_code == 200
        assert time.perf_counter() - started < 0.5


def test_a_refused_request_waiting_for_100_continue_is_answered_and_closed(tiny_artifact):
    """The client may never send the body the parser still counts on: the answer says
    connection: close and the connection closes, rather than reading its next request as
    that body."""
    env = {"BERTSERVE_MAX_BODY_BYTES": "1000"}
    with running_server(serve_command(tiny_artifact), env=env) as (url, _), _connect(url) as sock:
        sock.sendall(
            b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 5000\r\nExpect: 100-continue\r\n\r\n"
        )
        response = _read_all(sock)  # until the server closes
        head = response.partition(b"\r\n\r\n")[0].lower()
        assert response.startswith(b"HTTP/1.1 413") and b"connection: close" in head, response
        assert response.count(b"HTTP/1.1") == 1
