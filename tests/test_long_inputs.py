"""Long inputs without silent loss: /embed with long_inputs=chunk embeds a text of any length in
overlapping windows: every token once, offsets into the original text, and the sentence vector
the token-weighted mean of the window vectors."""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np

from bertserve.service.artifact import load_artifact
from bertserve.service.pooling import pool
from bertserve.service.text import TextTokenizer
from tests.conftest import DATA
from tests.fakes import CountingBackend
from tests.test_service import serve


def _long_text(path: str, tokenizer: TextTokenizer, tokens: int = 0, chars: int = 0) -> str:
    text = ""
    for paragraph in (DATA / path).read_text(encoding="utf-8").split("\n"):
        if not paragraph.strip():
            continue
        text = f"{text} {paragraph}".strip()
        if tokens and len(tokenizer.full.encode(text, add_special_tokens=False).ids) >= tokens:
            return text
        if chars and len(text) >= chars:
            return text[:chars]
    raise AssertionError(f"{path} is too short")


def _by_hand(
    backend: CountingBackend, tokenizer: TextTokenizer, text: str, stride: int
) -> np.ndarray:
    """The windows built and embedded one at a time, mean-pooled, token-weighted."""
    ids = tokenizer.full.encode(text, add_special_tokens=False).ids
    span = tokenizer.max_len - 2
    cls, sep = tokenizer.full.token_to_id("[CLS]"), tokenizer.full.token_to_id("[SEP]")
    last = max(len(ids) - span, 0)
    vectors, weights = [], []
    for start in [*range(0, last, stride), last]:
        window = np.array([[cls, *ids[start : start + span], sep]], dtype=np.int64)
        ones = np.ones_like(window)
        hidden, _ = backend.inner.hidden_states(window, ones, np.zeros_like(window))
        vectors.append(pool(hidden, ones, "mean")[0])
        weights.append(window.shape[1])
    w = np.array(weights, dtype=np.float32)
    return (w[:, None] * np.stack(vectors)).sum(axis=0) / w.sum()


def _check_long(tiny_artifact: Any, source: str, tokens: int = 0, chars: int = 0) -> None:
    artifact = load_artifact(tiny_artifact)
    tokenizer = TextTokenizer(artifact.tokenizer_json, artifact.max_seq_len)
    text = _long_text(source, tokenizer, tokens=tokens, chars=chars)
    content = tokenizer.full.encode(text, add_special_tokens=False)
    assert len(content.ids) >= 0.9 * (tokens or chars)  # a text many windows long

    async def check(client: httpx.AsyncClient, backend: CountingBackend) -> None:
        body = {"inputs": text, "long_inputs": "chunk", "output": "both", "normalize": False}
        r = await client.post("/embed", json=body)
        assert r.status_code == 200, r.text[:500]
        row = r.json()["data"][0]
        stride = (artifact.max_seq_len - 2) // 2
        # every token of the text once, in order, between [CLS] and [SEP]
        got = row["tokens"]
        assert [t["id"] for t in got[1:-1]] == list(content.ids)
        assert got[0]["token"] == "[CLS]" and got[-1]["token"] == "[SEP]"
        # offsets point into the original text and cover every non-space character
        covered = np.zeros(len(text), dtype=bool)
        for token in got[1:-1]:
            covered[token["start"] : token["end"]] = True
        assert all(covered[i] for i, ch in enumerate(text) if not ch.isspace())
        # the sentence vector is the token-weighted mean of the windows
        expected = _by_hand(backend, tokenizer, text, stride)
        assert np.abs(np.array(row["embedding"]) - expected).max() <= 1e-4
        windows = row["chunks"]
        assert windows == len(range(0, len(content.ids) - (artifact.max_seq_len - 2), stride)) + 1
        assert r.json()["usage"]["total_tokens"] > len(content.ids)  # overlaps counted
        assert row["truncated"] is False

    serve(tiny_artifact, check, max_input_chars=100_000, max_token_vectors=100_000, max_chunks=200)


def test_a_3000_token_english_text_is_embedded_whole(tiny_artifact):
    _check_long(tiny_artifact, "english.txt", tokens=3000)


def test_a_3000_character_chinese_text_is_embedded_whole(tiny_artifact):
    _check_long(tiny_artifact, "chinese.txt", chars=3000)


def test_window_limits_and_server_defaults(tiny_artifact):
    artifact = load_artifact(tiny_artifact)
    tokenizer = TextTokenizer(artifact.tokenizer_json, artifact.max_seq_len)
    text = _long_text("english.txt", tokenizer, tokens=1000)

    async def check(client: httpx.AsyncClient, backend: CountingBackend) -> None:
        r = await client.post("/embed", json={"inputs": text, "long_inputs": "chunk"})
        assert r.status_code == 413 and "over max_chunks 4" in r.json()["error"]["message"]
        r = await client.post("/embed", json={"inputs": text, "long_inputs": "chunk",
                                              "chunk_stride": 126})  # fmt: skip
        assert r.status_code == 413  # without overlap, 1000 tokens still need over 4 windows
        short = await client.post("/embed", json={"inputs": "a short text"})
        assert short.json()["data"][0]["chunks"] == 1  # the server default is chunk
        openai = await client.post("/v1/embeddings", json={"input": "a short text"})
        a = np.array(openai.json()["data"][0]["embedding"])
        b = np.array(short.json()["data"][0]["embedding"])
        assert np.abs(a / np.linalg.norm(a) - b / np.linalg.norm(b)).max() <= 1e-5

    serve(tiny_artifact, check, long_inputs="chunk", max_chunks=4, max_input_chars=100_000)


def test_the_truncated_flag_is_what_the_tokenizer_dropped(tiny_artifact):
    """`truncated` is read from the kept tokens' offsets (encoding.overflowing, the library's
    answer, held the GIL for 37% of the server's time under long texts): both must agree on
    texts that fit, fit exactly, are cut, or end in what the tokenizer drops."""
    artifact = load_artifact(tiny_artifact)
    tokenizer = TextTokenizer(artifact.tokenizer_json, 16)
    english = (DATA / "english.txt").read_text(encoding="utf-8").split("\n")[0]
    chinese = (DATA / "chinese.txt").read_text(encoding="utf-8").split("\n")[0]
    texts = [english, chinese, "", "a", f"{english[:200]}   \n\t ", f"{chinese[:40]}\x00\x01"]
    for words in range(10, 20):  # around max_len exactly
        texts.append(" ".join(english.split()[:words]))
        texts.append(" ".join(english.split()[:words]) + " \u200b")
    seen = set()
    for direction in ("right", "left"):
        cut = tokenizer.left if direction == "left" else tokenizer.right
        for text, tokenized in zip(texts, tokenizer.tokenize(texts, True, direction), strict=True):
            expected = bool(cut.encode(text).overflowing)
            assert tokenized.truncated == expected, (direction, text)
            seen.add(expected)
    assert seen == {True, False}
    pairs = [(english, chinese), ("a", "b")]
    flags = [t.truncated for t in tokenizer.tokenize(pairs, True)]
    assert flags == [True, False]
    # tokenized on a worker thread, the encodings are let go of there: the same answer
    for lazy, copied in zip(
        tokenizer.tokenize(texts, True),
        tokenizer.tokenize(texts, True, off_loop=True, with_tokens=True),
        strict=True,
    ):
        assert copied.encoding is None
        assert (lazy.tokens, lazy.offsets, lazy.truncated) == (
            copied.tokens,
            copied.offsets,
            copied.truncated,
        )
        assert np.array_equal(lazy.ids, copied.ids)


def test_a_long_text_tokenized_from_its_prefix_equals_the_whole_text(tiny_artifact):
    """Texts far over max_len are tokenized from their start up to a space (a 19,900-character
    text made 7x the tokens kept): ids, offsets and `truncated` equal tokenizing the whole."""
    artifact = load_artifact(tiny_artifact)
    tokenizer = TextTokenizer(artifact.tokenizer_json, 16)
    assert tokenizer.cuttable  # a BERT tokenizer: words split at spaces
    english = (DATA / "english.txt").read_text(encoding="utf-8").replace("\n", " ")
    chinese = (DATA / "chinese.txt").read_text(encoding="utf-8").replace("\n", "")
    long_word = "x" * 150  # a prefix of 8 characters a token is short of 16 tokens: redone
    texts = [
        english[:20_000],
        chinese[:200] + " " + chinese[200:10_000],  # one space, past the prefix length
        chinese[:10_000],  # no space at all: tokenized whole
        " ".join([long_word] * 100),
        "Ünïcödé ﬁ ①㍻ " * 50,  # characters the normalizer expands or drops
        "short text",
    ]
    assert all(len(t) > 2 * tokenizer.prefix_chars for t in texts[:5])
    assert set(tokenizer._prefixes(texts)) == {0, 1, 3, 4}  # cut where there is a space
    for off_loop in (False, True):
        ours = tokenizer.tokenize(texts, True, "right", off_loop=off_loop, with_tokens=True)
        for text, tokenized in zip(texts, ours, strict=True):
            whole = tokenizer.right.encode(text)
            assert tokenized.ids.tolist() == whole.ids, text[:40]
            assert tokenized.offsets == [tuple(o) for o in whole.offsets], text[:40]
            assert tokenized.truncated == bool(whole.overflowing), text[:40]
