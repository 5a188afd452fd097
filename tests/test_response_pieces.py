"""Big answers are written in pieces off the event loop (service/responses.py): the pieces must
join to exactly the JSON of the whole, and no piece may be big enough to hold the GIL for long
(or so small that call overhead is the work: one piece per number was 85% of a /tokenize)."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from service.responses import PIECE_BYTES, json_bytes, json_pieces


def tokenize_answer(inputs: int, tokens: int) -> list[dict]:
    return [
        {
            "index": i,
            "ids": list(range(tokens)),
            "tokens": [f"tok{j}" for j in range(tokens)],
            "offsets": [(j, j + 1) for j in range(tokens)],
            "truncated": False,
        }
        for i in range(inputs)
    ]


def token_vectors_answer(inputs: int, tokens: int) -> dict:
    vectors = np.random.default_rng(0).standard_normal((tokens, 384)).astype(np.float32)
    rows = [
        {"id": j, "token": "a", "start": j, "end": j + 1, "embedding": vectors[j]}
        for j in range(tokens)
    ]
    return {"data": [{"index": i, "tokens": rows, "truncated": False} for i in range(inputs)]}


@pytest.mark.parametrize(
    "value",
    [
        tokenize_answer(3, 5000),
        token_vectors_answer(2, 300),
        {"data": [{"index": 0, "embedding": np.arange(4, dtype=np.float32)}], "model": "m"},
        [],
        [[]],
        [1],
        {"empty": {}, "nested": [[1, 2], [3, [4, 5]]], "text": '河流\u2028"q"'},
        [{"ids": list(range(40))}, {"ids": []}],  # rows alike except the last
    ],
)
def test_pieces_join_to_the_json_of_the_whole(value):
    pieces: list[bytes] = []
    json_pieces(value, pieces)
    joined = b"".join(pieces)
    assert joined == json_bytes(value)
    assert orjson.loads(joined) == orjson.loads(json_bytes(value))


@pytest.mark.parametrize(
    "value", [tokenize_answer(20, 4000), token_vectors_answer(4, 512)], ids=["tokenize", "vectors"]
)
def test_pieces_are_neither_huge_nor_per_number(value):
    pieces: list[bytes] = []
    json_pieces(value, pieces)
    total = sum(len(p) for p in pieces)
    assert max(len(p) for p in pieces) <= 2 * PIECE_BYTES
    assert len(pieces) <= 4 * total / PIECE_BYTES + 100 * 20  # brackets and keys per row
