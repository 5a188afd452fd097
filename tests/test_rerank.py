"""/rerank (TEI's shape), /v1/rerank (Jina's and Cohere's) and /similarity: a cross-encoder that
bert-finetune trains here scores as sentence-transformers' CrossEncoder does on the same folder,
an embedding model reranks by the cosine of its /embed vectors, and the limits answer 4xx."""

from __future__ import annotations

import csv
import itertools
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bertserve.service.artifact import load_artifact
from tests.conftest import REPO, sts_sentences
from tests.fakes import serve_fake
from tests.test_service import serve

QUERY = "a man is playing a guitar"


@pytest.fixture(scope="module")
def cross_encoder(
    trained_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    """(the bert-finetune folder, its fp32 artifact): a pair regression model, scores 0-4."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    from bertserve.export.pipeline import ExportOptions, export_artifact

    folder = tmp_path_factory.mktemp("cross-encoder")
    # the fixture checkpoint's 40 steps leave its sentences all but parallel (mean cosine
    # 0.999996), so every pair scored alike; its matrices drawn again give a start whose
    # scores differ, which the ordering tests need (logits 0.26 apart; at BERT's init std
    # 0.02 only 0.002, and after 3 epochs at 3e-3 the scores collapsed to their mean)
    start = folder / "start"
    shutil.copytree(trained_checkpoint, start, ignore=shutil.ignore_patterns("checkpoint-*"))
    generator = torch.Generator().manual_seed(0)
    weights = {
        name: torch.randn(w.shape, generator=generator) * 0.2 if w.ndim == 2 else w
        for name, w in load_file(start / "model.safetensors").items()
    }
    save_file(weights, start / "model.safetensors", metadata={"format": "pt"})
    train = folder / "train.csv"
    with open(train, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(("query", "document", "score"))
        writer.writerows(_scored_pairs(trained_checkpoint, 240, seed=0))
    model = folder / "model"
    subprocess.run(
        [sys.executable, "-m", "bertserve.training.finetune.cli", "--no-progress",
         "--from", str(start), "--train", str(train), "--out", str(model),
         "--text-a", "query", "--text-b", "document", "--label", "score",
         "--task", "regression", "--epochs", "1", "--lr", "1e-3", "--batch-size", "16",
         "--max-seq-len", "64"],
        cwd=REPO, check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    artifact = folder / "artifact"
    export_artifact(model, artifact, ExportOptions(("fp32",), progress=False))
    return model, artifact


def _vocabulary(checkpoint: Path) -> list[str]:
    from tokenizers import Tokenizer

    vocab = Tokenizer.from_file(str(checkpoint / "tokenizer.json")).get_vocab()
    return sorted(w for w in vocab if w.isalpha() and len(w) >= 4 and w.isascii())[:300]


def _scored_pairs(checkpoint: Path, count: int, seed: int) -> list[tuple[str, str, int]]:
    """(query, document, score): the score counts the cue word in the document (0-4), a
    signal the fixture's barely pretrained encoder can learn."""
    cue, *pool = _vocabulary(checkpoint)
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        cues = i % 5
        words = [rng.choice(pool) for _ in range(6 - cues)] + [cue] * cues
        rng.shuffle(words)
        rows.append((" ".join(rng.choice(pool) for _ in range(3)), " ".join(words), cues))
    return rows


def _answers(artifact: Path, requests: list[tuple[str, dict]]) -> list[tuple[int, object]]:
    answers: list[tuple[int, object]] = []

    async def check(client, backend) -> None:  # type: ignore[no-untyped-def]
        for path, body in requests:
            response = await client.post(path, json=body)
            answers.append((response.status_code, response.json()))

    serve(artifact, check)
    return answers


def test_both_dialects_score_as_sentence_transformers_cross_encoder(cross_encoder):
    st = pytest.importorskip("sentence_transformers")
    folder, artifact = cross_encoder
    documents = [d for _, d, _ in _scored_pairs(folder, 20, seed=1)]
    served = load_artifact(artifact).name  # /v1/rerank names it, as Jina's clients do
    tei, jina, raw = _answers(
        artifact,
        [
            ("/rerank", {"query": QUERY, "texts": documents, "return_text": True}),
            ("/v1/rerank", {"model": served, "query": QUERY, "documents": documents}),
            ("/rerank", {"query": QUERY, "texts": documents, "raw_scores": True}),
        ],
    )
    model = st.CrossEncoder(str(folder), device="cpu")
    pairs = [(QUERY, d) for d in documents]
    expected = model.predict(pairs, convert_to_numpy=True)  # sigmoid of the one logit
    logits = model.predict(pairs, activation_fn=__import__("torch").nn.Identity())
    ranked = [r["corpus_id"] for r in model.rank(QUERY, documents)]
    assert tei[0] == 200 and jina[0] == 200 and raw[0] == 200, (tei, jina, raw)
    assert np.ptp(logits) > 1e-2  # the documents score differently: the order means something
    # the same order as CrossEncoder.rank, up to ties within the tolerance
    for order in ([r["index"] for r in tei[1]], [r["index"] for r in jina[1]["results"]]):
        assert sorted(order) == list(range(len(documents)))
        assert all(expected[a] >= expected[b] - 1e-4 for a, b in itertools.pairwise(order))
        assert abs(expected[order[0]] - expected[ranked[0]]) <= 1e-4
    for r in tei[1]:
        assert abs(r["score"] - expected[r["index"]]) <= 1e-4
        assert r["text"] == documents[r["index"]]
    for r in jina[1]["results"]:
        assert abs(r["relevance_score"] - expected[r["index"]]) <= 1e-4
        assert r["document"] == {"text": documents[r["index"]]}
    for r in raw[1]:
        assert abs(r["score"] - logits[r["index"]]) <= 1e-4 and "text" not in r
    assert jina[1]["model"] == served and jina[1]["id"].startswith("rerank-")
    assert jina[1]["usage"]["total_tokens"] > 20 * 4


def test_jina_options_and_limits(cross_encoder):
    _, artifact = cross_encoder
    documents = sts_sentences(8)
    answers = _answers(
        artifact,
        [
            (
                "/v1/rerank",
                {"query": QUERY, "documents": documents, "top_n": 3, "return_documents": False},
            ),
            ("/v1/rerank", {"query": QUERY, "documents": [{"text": d} for d in documents]}),
            ("/v1/rerank", {"query": QUERY, "documents": documents}),
            ("/v1/rerank", {"query": QUERY, "documents": []}),
            ("/rerank", {"query": QUERY, "texts": []}),
            ("/v1/rerank", {"query": QUERY, "documents": ["ok", "  "]}),
            ("/v1/rerank", {"query": "", "documents": ["ok"]}),
            ("/v1/rerank", {"query": QUERY, "documents": [{"txt": "x"}]}),
            ("/v1/rerank", {"query": QUERY, "documents": ["d"] * 1001}),
            ("/rerank", {"query": QUERY, "texts": ["d"] * 1001}),
            ("/rerank", {"query": QUERY, "texts": ["d"] * 300}),  # over max_inputs: fine
            ("/rerank", {"query": QUERY, "texts": ["word " * 400], "truncate": False}),
        ],
    )
    statuses = [status for status, _ in answers]
    assert statuses == [200, 200, 200, 422, 422, 422, 422, 422, 413, 413, 200, 422], answers
    top = answers[0][1]["results"]
    full = answers[2][1]["results"]
    assert top == [{k: v for k, v in r.items() if k != "document"} for r in full[:3]]
    assert answers[1][1]["results"] == full  # objects or strings: the same answer
    assert "1001 items, over max_rerank_documents 1000" in str(answers[8][1])
    assert len(answers[10][1]) == 300


def test_an_embedding_model_reranks_by_cosine_and_similarity_agrees(tiny_artifact):
    documents = sts_sentences(12)
    embed, rerank, similarity = _answers(
        tiny_artifact,
        [
            ("/embed", {"inputs": [QUERY, *documents], "normalize": True}),
            ("/rerank", {"query": QUERY, "texts": documents}),
            ("/similarity", {"inputs": {"source_sentence": QUERY, "sentences": documents}}),
        ],
    )
    assert embed[0] == rerank[0] == similarity[0] == 200, (embed, rerank, similarity)
    vectors = np.array([row["embedding"] for row in embed[1]["data"]])  # (1 + D, H)
    cosines = vectors[1:] @ vectors[0]
    assert np.allclose(similarity[1], cosines, atol=1e-5)
    # every document once, best first, each scored by its own cosine (the tiny model's vectors
    # are near-parallel: which of two near-equal cosines comes first is float noise, and CI's
    # fp32 run ordered two of them the other way)
    assert sorted(r["index"] for r in rerank[1]) == list(range(len(documents)))
    scores = [r["score"] for r in rerank[1]]
    assert scores == sorted(scores, reverse=True)
    assert np.allclose(scores, cosines[[r["index"] for r in rerank[1]]], atol=1e-5)


def test_a_classifier_of_several_labels_cannot_rerank(tmp_path):
    answers = []

    async def check(client, backend) -> None:  # type: ignore[no-untyped-def]
        for path, body in (
            ("/rerank", {"query": "q", "texts": ["a", "b"]}),
            ("/v1/rerank", {"query": "q", "documents": ["a"]}),
            ("/similarity", {"inputs": {"source_sentence": "q", "sentences": ["a"]}}),
        ):
            response = await client.post(path, json=body)
            answers.append((response.status_code, response.json()))

    serve_fake(tmp_path, check, labels=["yes", "no"])
    assert [s for s, _ in answers] == [424, 424, 200], answers
    assert "2 labels" in answers[0][1]["error"]["message"]


def test_score_activation_comes_from_the_cross_encoders_config(cross_encoder, tmp_path):
    import json
    import shutil

    from bertserve.export.pipeline import ExportOptions, export_artifact

    folder, _ = cross_encoder
    identity = tmp_path / "identity"
    shutil.copytree(folder, identity)
    config = json.loads((identity / "config.json").read_text())
    config["sentence_transformers"] = {"activation_fn": "torch.nn.modules.linear.Identity"}
    (identity / "config.json").write_text(json.dumps(config))
    manifest = export_artifact(identity, tmp_path / "a", ExportOptions(("fp32",), progress=False))
    assert manifest["score_activation"] == "identity"
    [(status, body)] = _answers(tmp_path / "a", [("/rerank", {"query": "q", "texts": ["a b"]})])
    [(_, raw)] = _answers(
        tmp_path / "a", [("/rerank", {"query": "q", "texts": ["a b"], "raw_scores": True})]
    )
    assert status == 200 and body == raw  # identity: the logit itself
