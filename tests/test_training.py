"""End-to-end pretraining runs: overfitting, exact resume after SIGKILL, torchrun DDP, CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import DATA, REPO

TINY_CORPUS = """\
calculus is a branch of mathematics.
it was developed by newton and leibniz.
derivatives measure change.

the river flows past the old mill.
children swim there every summer.
parents watch from the bridge.

a violin has four strings.
players tune them before each concert.

bees collect nectar from flowers.
they turn it into honey.
"""


def _pretrain(
    *args: str, env: dict[str, str] | None = None, check: bool = True, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "bertserve.training", "--no-progress", *args]
    result = subprocess.run(
        cmd,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def _losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if r["split"] == "train"}


@torch.no_grad()
def _mlm_accuracy(run_dir: Path, corpus: Path, batches: int = 20) -> float:
    from bertserve.training.batches import BatchSource
    from bertserve.training.checkpoint import load_model
    from bertserve.training.corpus import Corpus
    from bertserve.training.masking import Masker
    from bertserve.training.pairs import PairGenerator
    from bertserve.training.token_store import build_or_load
    from bertserve.training.tokenizer import SpecialIds, load_tokenizer

    tokenizer = load_tokenizer(run_dir / "tokenizer.json")
    specials = SpecialIds.of(tokenizer)
    store, _ = build_or_load(Corpus.open([str(corpus)]), tokenizer, progress=False)
    pairs = PairGenerator(store, np.arange(store.num_documents), specials, 32, 0.0, False, 123)
    source = BatchSource(pairs, Masker(specials, tokenizer.get_vocab_size()), specials.pad)
    model = load_model(run_dir).eval()
    hits = total = 0
    for _ in range(batches):
        b = source.next_batch(32)
        out = model(b.input_ids, b.attention_mask, b.token_type_ids, b.masked_positions)
        hits += int((out.mlm_logits.argmax(-1) == b.masked_labels).sum())
        total += len(b.masked_labels)
    return hits / total


def test_tiny_model_overfits_a_small_corpus_in_under_a_minute(tmp_path):
    corpus = tmp_path / "tiny.txt"
    corpus.write_text(TINY_CORPUS)
    # a word-level vocabulary written here, so the run does not depend on WordPiece training
    words = sorted(set(TINY_CORPUS.replace(".", " . ").split()))
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    started = time.perf_counter()
    _pretrain(
        "--tokenizer",
        str(vocab),
        "--corpus",
        str(corpus),
        "--out",
        str(tmp_path / "run"),
        "--preset",
        "tiny",
        "--max-steps",
        "900",
        "--dropout",
        "0",
        "--attention-dropout",
        "0",
        "--lr",
        "2e-3",
        "--warmup-steps",
        "20",
        "--max-seq-len",
        "32",
        "--batch-size",
        "16",
        "--eval-fraction",
        "0",
        "--save-every",
        "0",
        "--log-every",
        "50",
        "--vocab-size",
        "200",
    )
    elapsed = time.perf_counter() - started
    accuracy = _mlm_accuracy(tmp_path / "run", corpus)
    print(f"overfit: MLM accuracy {accuracy:.3f} in {elapsed:.1f}s")
    assert accuracy >= 0.9, accuracy
    assert elapsed < 60, f"took {elapsed:.0f}s"
    assert (tmp_path / "run" / "training_curves.png").stat().st_size > 1000


RESUME_ARGS = (
    "--nsp",
    "--corpus",
    str(DATA / "english.txt"),
    "--preset",
    "tiny",
    "--max-steps",
    "40",
    "--max-seq-len",
    "64",
    "--batch-size",
    "8",
    "--log-every",
    "1",
    "--save-every",
    "5",
    "--eval-every",
    "10",
    "--eval-batches",
    "2",
    "--warmup-steps",
    "5",
)


@pytest.mark.parametrize("data_worker", ["off", "on"])
def test_resume_after_sigkill_repeats_the_uninterrupted_losses(
    tmp_path, english_tokenizer, data_worker
):
    """With the batch worker on, the killed and resumed run must still repeat the losses of an
    uninterrupted run built in the loop itself: the same batches, and resume at the right one."""
    english_tokenizer.save(str(tmp_path / "tokenizer.json"))
    args = (*RESUME_ARGS, "--tokenizer", str(tmp_path / "tokenizer.json"))
    whole = tmp_path / "whole"
    _pretrain(*args, "--out", str(whole), "--data-worker", "off")
    expected = _losses(whole)
    assert sorted(expected) == list(range(1, 41))

    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "bertserve.training", "--no-progress", *args, "--out", str(killed)]
    cmd += ["--data-worker", data_worker]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (killed / "checkpoint-15").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "run ended before the kill"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "checkpoint-40").exists(), "the kill came too late to test resume"

    _pretrain("--resume", str(killed))
    resumed = _losses(killed)
    assert sorted(resumed) == list(range(1, 41))
    for step in range(1, 41):
        assert abs(resumed[step] - expected[step]) <= 1e-6, (step, resumed[step], expected[step])
    # only the newest checkpoints are kept
    assert {p.name for p in killed.glob("checkpoint-*")} == {"checkpoint-35", "checkpoint-40"}


def test_torchrun_two_ranks_end_with_identical_weights(tmp_path):
    worker = tmp_path / "worker.py"
    worker.write_text(
        "import os, sys, torch\n"
        "from safetensors.torch import save_file\n"
        "from bertserve.training.config import TrainConfig\n"
        "from bertserve.training import trainer\n"
        "cfg = TrainConfig(out=sys.argv[1], corpus=[sys.argv[2]], max_steps=4, batch_size=4,\n"
        "                  max_seq_len=32, vocab_size=500, log_every=1, save_every=0,\n"
        "                  eval_every=0, eval_fraction=0, progress=False)\n"
        "seen = []\n"
        "original = trainer.BatchSource.next_batch\n"
        "def spy(self, n):\n"
        "    batch = original(self, n)\n"
        "    seen.append(batch.input_ids)\n"
        "    return batch\n"
        "trainer.BatchSource.next_batch = spy\n"
        "run_model = {}\n"
        "original_prepare = trainer.prepare\n"
        "def keep(*a, **k):\n"
        "    run = original_prepare(*a, **k)\n"
        "    run_model['m'] = run.model\n"
        "    return run\n"
        "trainer.prepare = keep\n"
        "trainer.train(cfg)\n"
        "rank = os.environ['RANK']\n"
        "state = {k: v.contiguous() for k, v in run_model['m'].state_dict().items()}\n"
        "state['first_batch'] = seen[0]\n"
        "save_file(state, os.path.join(sys.argv[1], f'rank{rank}.safetensors'))\n"
    )
    out = tmp_path / "ddp"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            "29531",
            str(worker),
            str(out),
            str(DATA / "english.txt"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    from safetensors.torch import load_file

    rank0, rank1 = load_file(out / "rank0.safetensors"), load_file(out / "rank1.safetensors")
    assert not torch.equal(rank0.pop("first_batch"), rank1.pop("first_batch"))  # own data
    for name, tensor in rank0.items():
        assert torch.equal(tensor, rank1[name]), name
    assert (out / "model.safetensors").is_file() and len(_losses(out)) == 4


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--corpus", "/no/such/file.txt", "--max-steps", "1"], "does not exist"),
        (["--corpus", "{empty}", "--max-steps", "1"], "holds no text"),
        (["--max-steps", "1", "--resume", "/no/such/run"], "nothing to resume"),
        (["--out", "{tmp}/r"], "--max-steps or --time-budget"),
        (["--max-steps", "1", "--time-budget", "ten minutes"], "cannot read duration"),
        (["--max-steps", "1", "--adam-betas", "0.9", "1.5"], "--adam-betas must be in [0, 1)"),
        (
            ["--nsp", "--corpus", "{one_doc}", "--max-steps", "1", "--eval-fraction", "0"],
            "at least 2 documents",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, args, message):
    (tmp_path / "empty.txt").write_text("\n\n")
    (tmp_path / "one.txt").write_text("only one document here.\nstill the same one.\n")
    args = [
        a.format(empty=tmp_path / "empty.txt", tmp=tmp_path, one_doc=tmp_path / "one.txt")
        for a in args
    ]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "run")]
    result = _pretrain(*args, check=False, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("bert-pretrain: error:") and message in last, result.stderr
    assert "Traceback" not in result.stderr


def test_adam_betas_reach_the_config():
    from bertserve.training.cli import build_parser, config_from_args

    parsed = vars(build_parser().parse_args(["--max-steps", "1", "--adam-betas", "0.9", "0.98"]))
    cfg, *_ = config_from_args(parsed)
    assert cfg.adam_betas == (0.9, 0.98)
    default, *_ = config_from_args(vars(build_parser().parse_args(["--max-steps", "1"])))
    assert default.adam_betas == (0.9, 0.999)


def test_time_budget_stops_the_run(tmp_path):
    started = time.perf_counter()
    _pretrain(
        "--corpus",
        str(DATA / "english.txt"),
        "--out",
        str(tmp_path / "r"),
        "--time-budget",
        "4s",
        "--max-seq-len",
        "32",
        "--batch-size",
        "4",
        "--vocab-size",
        "500",
        "--eval-fraction",
        "0",
    )
    assert time.perf_counter() - started < 60
    assert (tmp_path / "r" / "model.safetensors").is_file()


def test_whole_word_no_nsp_and_static_options_train(tmp_path):
    _pretrain(
        "--corpus",
        str(DATA / "english.txt"),
        "--out",
        str(tmp_path / "r"),
        "--max-steps",
        "3",
        "--max-seq-len",
        "32",
        "--batch-size",
        "4",
        "--vocab-size",
        "500",
        "--no-nsp",
        "--whole-word-masking",
        "--static-masking",
        "--eval-fraction",
        "0.1",
        "--eval-every",
        "3",
    )
    rows = [
        json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()
    ]
    assert {"train", "eval"} == {r["split"] for r in rows}
    assert all("nsp_acc" not in r for r in rows)
    held_out = [r for r in rows if r["split"] == "eval"]
    assert all({"mlm_acc", "mlm_acc_training_masking"} <= set(r) for r in held_out)
    # the checkpoint says NSP was never trained, so export leaves out the NSP head and the
    # pooler (both random) and the service will answer /next-sentence with 424
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["trained_heads"] == ["mlm"]
    from bertserve.export.pipeline import ExportOptions, export_artifact

    manifest = export_artifact(
        tmp_path / "r", tmp_path / "art", ExportOptions(("fp32",), progress=False)
    )
    assert manifest["capabilities"]["next_sentence"] is False
    assert manifest["capabilities"]["pooler"] is False
    assert manifest["capabilities"]["fill_mask"] is True


def test_schedules_warm_up_then_decay_to_zero():
    from bertserve.training.config import TrainConfig
    from bertserve.training.schedule import lr_factor

    linear = TrainConfig(max_steps=100, warmup_steps=10, schedule="linear")
    wsd = TrainConfig(max_steps=100, warmup_steps=10, schedule="wsd", decay_fraction=0.2)
    assert lr_factor(linear, 4, 0) == lr_factor(wsd, 4, 0) == 0.5  # the same warmup
    assert abs(lr_factor(linear, 55, 0) - 0.5) < 1e-9  # halfway down the linear decay
    assert lr_factor(wsd, 55, 0) == 1.0 and lr_factor(wsd, 79, 0) == 1.0  # stable
    assert abs(lr_factor(wsd, 90, 0) - 0.5) < 1e-9  # halfway through the last 20%
    assert lr_factor(wsd, 100, 0) == lr_factor(linear, 100, 0) == 0.0
    by_time = TrainConfig(time_budget_s=600, warmup_steps=1, schedule="wsd")
    assert lr_factor(by_time, 50, 300) == 1.0 and abs(lr_factor(by_time, 50, 540) - 0.5) < 1e-9


def test_the_long_phase_is_the_last_fraction_of_the_run():
    from bertserve.training.config import TrainConfig
    from bertserve.training.schedule import in_long_phase

    by_steps = TrainConfig(max_steps=100, long_seq_len=512, long_fraction=0.1)
    assert not in_long_phase(by_steps, 89, 0) and in_long_phase(by_steps, 90, 0)
    by_time = TrainConfig(time_budget_s=600, long_seq_len=512, long_fraction=0.1)
    assert not in_long_phase(by_time, 5, 539.0) and in_long_phase(by_time, 5, 540.0)


def test_adamw_is_fused_and_decays_only_matrices():
    """The fused kernel (one call over every tensor; ~6x torch's per-tensor loop on 2 cores) on
    the CPU, and the original BERT's grouping: no decay on biases and LayerNorm weights."""
    from bertserve.training.optim import adamw

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    optimizer = adamw(model, lr=1e-3, weight_decay=0.01)
    assert optimizer.defaults["fused"] is True
    decayed, plain = optimizer.param_groups
    assert [p.shape for p in decayed["params"]] == [torch.Size([4, 4])]
    assert decayed["weight_decay"] == 0.01 and plain["weight_decay"] == 0.0
    assert len(plain["params"]) == 3  # the Linear's bias, LayerNorm's weight and bias


def test_strict_evaluation_shows_every_scored_position_as_mask(english_tokenizer):
    """The held-out accuracy's input: the training masking keeps 10% of the scored tokens and
    randomizes 10%; the strict batch hides all of them, and changes nothing else."""
    from bertserve.training.batches import BatchSource
    from bertserve.training.corpus import Corpus
    from bertserve.training.masking import Masker
    from bertserve.training.pairs import PairGenerator
    from bertserve.training.token_store import build_or_load
    from bertserve.training.tokenizer import SpecialIds

    specials = SpecialIds.of(english_tokenizer)
    store, _ = build_or_load(
        Corpus.open([str(DATA / "english.txt")]), english_tokenizer, progress=False
    )
    pairs = PairGenerator(store, np.arange(store.num_documents), specials, 64, 0.5, True, 7)
    masker = Masker(specials, english_tokenizer.get_vocab_size())
    batch = BatchSource(pairs, masker, specials.pad).next_batch(64)
    strict = batch.fully_masked(specials.mask)
    shown = batch.input_ids.view(-1)[batch.masked_positions]
    assert (shown != specials.mask).float().mean() > 0.1  # kept or random in training
    assert bool((strict.input_ids.view(-1)[batch.masked_positions] == specials.mask).all())
    others = torch.ones(batch.input_ids.numel(), dtype=torch.bool)
    others[batch.masked_positions] = False
    assert torch.equal(strict.input_ids.view(-1)[others], batch.input_ids.view(-1)[others])
    assert torch.equal(strict.masked_labels, batch.masked_labels)
