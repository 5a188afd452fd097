"""bert-finetune --task embedding: a tiny model learns a synthetic paraphrase task with each
loss (retrieval from chance to > 0.9), writes a folder sentence-transformers loads with our
vectors, which bert-serve then serves; the gradient cache equals the plain loss; SIGKILL then
--resume repeats the losses; bad input is one line, exit 2, nothing written."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import REPO

WORDS = 12  # paraphrase: each of 12 "English" words has its own "French" word, no shared token


@pytest.fixture(scope="module")
def vocabulary(trained_checkpoint: Path) -> tuple[list[str], list[str]]:
    from tokenizers import Tokenizer

    vocab = Tokenizer.from_file(str(trained_checkpoint / "tokenizer.json")).get_vocab()
    words = sorted(w for w in vocab if w.isalpha() and w.isascii() and len(w) >= 4)
    random.Random(0).shuffle(words)
    return words[:WORDS], words[WORDS : 2 * WORDS]


@pytest.fixture(scope="module")
def random_encoder(trained_checkpoint: Path, tmp_path_factory) -> Path:
    """The fixture checkpoint's shape and tokenizer with random weights, as a sentence-
    transformers folder: the start of every test that must learn. The 40-step pretrained
    checkpoint's mean-pooled vectors are all but parallel (mean cosine 0.999996 measured):
    cosine gradients vanish there; CoSENT never leaves that start, and MNRL leaves it at a step
    that depends on the CPU's arithmetic (4 epochs in fp32, seeds 0-2: recall@1 0.27-0.97;
    with bf16 autocast 1.0). From random weights every loss reached 1.0 in both."""
    from bertserve.training.config import BertConfig
    from bertserve.training.finetune.encoder import SentenceEncoder
    from bertserve.training.finetune.st_folder import save_st_folder
    from bertserve.training.tokenizer import load_tokenizer, save_tokenizer

    cfg = BertConfig.from_dict(json.loads((trained_checkpoint / "config.json").read_text()))
    cfg.trained_heads = None
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("random") / "encoder"
    out.mkdir()
    save_st_folder(SentenceEncoder(cfg, "mean"), out, False, 128, True, {})
    save_tokenizer(load_tokenizer(trained_checkpoint), out, True, 128)
    return out


def paraphrases(vocabulary, count: int, seed: int) -> list[dict[str, object]]:
    """anchor: two words in any order; positive: their counterparts, in one order (so each
    anchor has exactly one right answer); a hard negative: one counterpart swapped; score:
    5 for the paraphrase, 2 for the near miss, 0 for a random pair."""
    english, french = vocabulary
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        pick = rng.sample(range(WORDS), 2)
        other = rng.choice([w for w in range(WORDS) if w not in pick])
        positive = " ".join(french[w] for w in sorted(pick))
        negative = " ".join(french[w] for w in sorted([pick[0], other]))
        kind = i % 3
        b = (
            positive
            if kind == 0
            else negative
            if kind == 1
            else " ".join(french[w] for w in sorted(rng.sample(range(WORDS), 2)))
        )
        rows.append({
            "anchor": " ".join(english[w] for w in pick),
            "positive": positive,
            "negative": negative,
            "b": b,
            "score": (5.0, 2.0, 0.0)[kind] if b != positive else 5.0,
        })  # fmt: skip
    return rows


def write_jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def files(vocabulary, tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("paraphrase")
    return (
        write_jsonl(folder / "train.jsonl", paraphrases(vocabulary, 960, 1)),
        write_jsonl(folder / "eval.jsonl", paraphrases(vocabulary, 150, 2)),
    )


def finetune(*args: str) -> int:
    from bertserve.training.finetune.cli import main

    return main(["--no-progress", *args])


FAST = ("--lr", "1e-3", "--batch-size", "32", "--warmup-fraction", "0.05", "--max-seq-len", "16")
PAIRS = ("--text-a", "anchor", "--text-b", "positive")


def recall_at_1(folder: Path, eval_file: Path, dims: int | None = None) -> float:
    """Each eval anchor ranks the distinct positives by cosine of the folder's vectors."""
    from bertserve.training.finetune.embedding import embed_texts
    from bertserve.training.finetune.encoder import load_encoder
    from bertserve.training.tokenizer import load_tokenizer

    rows = [json.loads(line) for line in eval_file.read_text().splitlines()]
    model, tokenizer = load_encoder(folder, "mean"), load_tokenizer(folder)
    corpus = sorted({r["positive"] for r in rows})
    queries = embed_texts(model, tokenizer, [r["anchor"] for r in rows], 16, 0)[:, :dims]
    documents = embed_texts(model, tokenizer, corpus, 16, 0)[:, :dims]
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    documents /= np.linalg.norm(documents, axis=1, keepdims=True)
    best = (queries @ documents.T).argmax(axis=1)
    return float(np.mean([corpus[b] == r["positive"] for b, r in zip(best, rows, strict=True)]))


@pytest.fixture(scope="module")
def mnrl_model(random_encoder, files, tmp_path_factory) -> Path:
    train, evaluation = files
    out = tmp_path_factory.mktemp("mnrl") / "model"
    code = finetune(
        "--task", "embedding", "--from", str(random_encoder), "--train", str(train),
        "--eval", str(evaluation), "--out", str(out), *PAIRS, *FAST, "--epochs", "4",
        "--normalize", "--matryoshka-dims", "128,32",
    )  # fmt: skip
    assert code == 0
    return out


def test_mnrl_learns_paraphrases_from_chance(random_encoder, files, mnrl_model):
    _, evaluation = files
    assert recall_at_1(random_encoder, evaluation) < 0.4  # chance is 1/66
    assert recall_at_1(mnrl_model, evaluation) > 0.9
    assert recall_at_1(mnrl_model, evaluation, dims=32) > 0.9  # Matryoshka: a prefix works
    report = json.loads((mnrl_model / "eval_report.json").read_text())
    assert report["metric"] == "ndcg@10" and report["recall@1"] > 0.9, report
    assert {"mrr@10", "recall@10", "queries", "corpus"} <= set(report)
    training = json.loads((mnrl_model / "bertserve_embedding.json").read_text())
    assert training["matryoshka_dims"] == [128, 32] and training["normalize"] is True
    assert (mnrl_model / "report.png").stat().st_size > 1000


@pytest.mark.parametrize(
    "loss, extra",
    [
        ("mnrl", ("--text-neg", "negative", "--symmetric")),
        ("mnrl", ("--mini-batch-size", "8")),  # the gradient cache, end to end
        ("cosent", ("--text-b", "b", "--label", "score", "--min-score", "4")),
    ],
    ids=["mnrl-hard-negatives-symmetric", "cached-mnrl", "cosent"],
)  # fmt: skip
def test_each_loss_learns_paraphrases(random_encoder, files, tmp_path, loss, extra):
    train, evaluation = files
    out = tmp_path / loss
    assert recall_at_1(random_encoder, evaluation) < 0.4  # chance is 1/66
    args = ["--task", "embedding", "--from", str(random_encoder), "--train", str(train)]
    args += ["--eval", str(evaluation), "--out", str(out), "--loss", loss, *PAIRS, *FAST]
    assert finetune(*args, "--epochs", "4", *extra) == 0
    assert recall_at_1(out, evaluation) > 0.9


def test_simcse_trains_on_one_column_and_lowers_its_loss(trained_checkpoint, files, tmp_path):
    """SimCSE cannot learn the word mapping (it never sees a pair): its loss, each text against
    its own second dropout view among the batch, must fall."""
    train, evaluation = files
    out = tmp_path / "simcse"
    code = finetune(
        "--task", "embedding", "--loss", "simcse", "--from", str(trained_checkpoint),
        "--train", str(train), "--text", "anchor", "--eval", str(evaluation),
        "--eval-text-a", "anchor", "--eval-text-b", "b", "--eval-label", "score",
        "--out", str(out), *FAST, "--epochs", "2",
    )  # fmt: skip
    assert code == 0
    losses = [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines()
              if json.loads(x)["split"] == "train"]  # fmt: skip
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:5]), (losses[:5], losses[-10:])
    assert "spearman_cosine" in json.loads((out / "eval_report.json").read_text())


def test_the_gradient_cache_equals_the_plain_loss(trained_checkpoint):
    """Loss and every parameter gradient equal to 1e-5 (dropout off: the plain loss draws one
    mask for the whole batch, the cache one per mini batch), for MNRL with a hard negative
    and for CoSENT under Matryoshka."""
    from bertserve.training.finetune.embedding import collate_ids
    from bertserve.training.finetune.encoder import load_encoder
    from bertserve.training.finetune.losses.cached_mnrl import cached_step
    from bertserve.training.finetune.losses.cosent import CoSENTLoss
    from bertserve.training.finetune.losses.matryoshka import MatryoshkaLoss
    from bertserve.training.finetune.losses.mnrl import MultipleNegativesRankingLoss

    model = load_encoder(trained_checkpoint, "mean").eval()
    rng = np.random.default_rng(0)
    columns = [collate_ids([list(rng.integers(5, 900, rng.integers(3, 12))) for _ in range(24)], 0)
               for _ in range(3)]  # fmt: skip
    scores = torch.from_numpy(rng.uniform(0, 5, 24).astype(np.float32))
    losses = [
        (MultipleNegativesRankingLoss(), columns, None),
        (MatryoshkaLoss(CoSENTLoss(), [128, 64, 16]), columns[:2], scores),
    ]
    for loss_fn, used, batch_scores in losses:
        model.zero_grad()
        plain = loss_fn([model(**c) for c in used], batch_scores)
        plain.backward()
        expected = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        model.zero_grad()
        value = cached_step(lambda b: model(**b), used, loss_fn, batch_scores, mini_batch_size=5)
        assert abs(value - float(plain.detach())) <= 1e-5
        for name, param in model.named_parameters():
            if name in expected:
                assert torch.allclose(param.grad, expected[name], atol=1e-5, rtol=1e-4), name


def test_sentence_transformers_loads_the_folder_with_our_vectors(files, mnrl_model):
    st = pytest.importorskip("sentence_transformers")
    from bertserve.training.finetune.embedding import embed_texts
    from bertserve.training.finetune.encoder import load_encoder
    from bertserve.training.tokenizer import load_tokenizer

    _, evaluation = files
    texts = [json.loads(line)["anchor"] for line in evaluation.read_text().splitlines()][:20]
    theirs = st.SentenceTransformer(str(mnrl_model), device="cpu").encode(texts)
    ours = embed_texts(load_encoder(mnrl_model, "mean"), load_tokenizer(mnrl_model), texts, 16, 0)
    ours /= np.linalg.norm(ours, axis=1, keepdims=True)  # the folder's Normalize module
    assert np.abs(theirs - ours).max() <= 1e-5


def test_bert_serve_answers_with_the_folders_vectors(files, mnrl_model, tmp_path):
    st = pytest.importorskip("sentence_transformers")
    from bertserve.export.pipeline import ExportOptions, export_artifact
    from tests.test_service import serve

    artifact = tmp_path / "artifact"
    export_artifact(mnrl_model, artifact, ExportOptions(("fp32",), progress=False))
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert manifest["pooling"] == "mean" and manifest["normalize"] is True
    assert manifest["matryoshka_dims"] == [128, 32]
    _, evaluation = files
    texts = [json.loads(line)["anchor"] for line in evaluation.read_text().splitlines()][:16]
    expected = st.SentenceTransformer(str(mnrl_model), device="cpu").encode(texts)
    answers: list = []

    async def check(client, backend) -> None:  # type: ignore[no-untyped-def]
        answers.append(await client.post("/embed", json={"inputs": texts}))
        answers.append(await client.post("/v1/embeddings", json={"input": texts}))
        answers.append(await client.get("/info"))

    serve(artifact, check, precision="fp32")
    embed, openai, info = answers
    for vectors in (
        [row["embedding"] for row in embed.json()["data"]],
        [row["embedding"] for row in openai.json()["data"]],
    ):
        got = np.array(vectors)
        cosine = (got * expected).sum(axis=1) / np.linalg.norm(got, axis=1)
        assert cosine.min() >= 0.99999
    assert info.json()["matryoshka_dims"] == [128, 32]


def _train_losses(out: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if r["split"] == "train"}


def test_sigkill_then_resume_repeats_the_losses(trained_checkpoint, files, tmp_path):
    train, evaluation = files
    common = [
        "--task", "embedding", "--from", str(trained_checkpoint), "--train", str(train),
        "--eval", str(evaluation), *PAIRS, *FAST, "--epochs", "2", "--eval-every", "6",
        "--no-progress",
    ]  # fmt: skip
    cmd = [sys.executable, "-m", "bertserve.training.finetune.cli"]
    whole = tmp_path / "whole"
    subprocess.run([*cmd, *common, "--out", str(whole)], cwd=REPO, check=True,
                   capture_output=True)  # fmt: skip
    expected = _train_losses(whole)
    assert sorted(expected) == list(range(1, 61))
    killed = tmp_path / "killed"
    proc = subprocess.Popen([*cmd, *common, "--out", str(killed)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ})  # fmt: skip
    state = killed / "last" / "training_state.pt"
    deadline = time.monotonic() + 120
    while not (state.exists() and len(_train_losses(killed)) >= 14):
        assert proc.poll() is None and time.monotonic() < deadline, "run ended before the kill"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(_train_losses(killed)) < 60, "the kill came too late to test resume"
    subprocess.run([*cmd, "--resume", "--out", str(killed), "--no-progress"], cwd=REPO,
                   check=True, capture_output=True)  # fmt: skip
    resumed = _train_losses(killed)
    assert sorted(resumed) == list(range(1, 61))
    for step in range(1, 61):
        assert abs(resumed[step] - expected[step]) <= 1e-6, (step, resumed[step], expected[step])


@pytest.mark.parametrize(
    "change, message",
    [
        ({"--text-b": "nope"}, "no field 'nope'"),
        ({"--batch-size": "2000"}, "fewer than one batch"),
        ({"--batch-size": "100"}, "distinct texts"),
        ({"--text-b": "blank"}, "column 'blank' is empty"),
        ({"--text-b": "same"}, "is the same text"),
        ({"--loss": "cosent", "--label": "anchor"}, "not a number"),
        ({"--loss": "cosent"}, "needs the pairs' scores"),
        ({"--matryoshka-dims": "512,64"}, "exceeds the model's hidden size 128"),
        ({"--matryoshka-dims": "32,64"}, "descending"),
        ({"--loss": "simcse"}, "one text column"),
        ({"--mini-batch-size": "64"}, "between 1 and --batch-size"),
        ({"--task": "classification", "--label": "score", "--pooling": "cls"}, "--pooling"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_nothing_written(
    trained_checkpoint, vocabulary, tmp_path, capsys, change, message
):
    rows = paraphrases(vocabulary, 120, 3)
    for row in rows:
        row["blank"], row["same"] = "", "one text"
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    flags = {"--task": "embedding", "--from": str(trained_checkpoint), "--train": str(train),
             "--text-a": "anchor", "--text-b": "positive", "--batch-size": "16",
             "--out": str(tmp_path / "out"), **change}  # fmt: skip
    args = [x for pair in flags.items() for x in pair]
    assert finetune(*args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "out").exists()


def test_batches_never_repeat_a_text_and_follow_seed_and_epoch():
    from bertserve.training.finetune.embedding import no_duplicate_batches

    rng = random.Random(0)
    rows = [(f"q{rng.randrange(40)}", f"d{rng.randrange(60)}") for _ in range(300)]
    lengths = np.array([rng.randrange(3, 30) for _ in rows])
    batches = no_duplicate_batches(rows, lengths, 16, 19, seed=1, epoch=0)
    assert len(batches) == 19
    placed = [int(i) for batch in batches for i in batch]
    assert len(placed) == len(set(placed))  # no row twice
    for batch in batches:
        texts = [t for i in batch for t in rows[i]]
        assert len(texts) == len(set(texts)), "a text twice in one batch: a false negative"
    again = no_duplicate_batches(rows, lengths, 16, 19, seed=1, epoch=0)
    assert all(np.array_equal(a, b) for a, b in zip(batches, again, strict=True))
    other = no_duplicate_batches(rows, lengths, 16, 19, seed=1, epoch=1)
    assert not all(np.array_equal(a, b) for a, b in zip(batches, other, strict=True))
