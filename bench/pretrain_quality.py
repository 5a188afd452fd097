"""Pretraining quality per wall-clock budget: held-out MLM accuracy of each recipe, one run.

Every recipe trains `bert-pretrain` (mini, seq 128, batch 32) for the same wall-clock budget on
the same corpus with the same tokenizer, then is scored on the same fixed evaluation pairs,
masked at 15% with a fixed seed whatever masking rate the recipe trained with:
  held-out:  chunks of the training books that training never sees
  unseen:    books from another gutenberg-en file
The anchor is transformers' BertForPreTraining (the same shape) trained by a plain loop on the
batches today's default recipe draws, for the same budget.

  python bench/pretrain_quality.py --budget 10m                 # every recipe, ~2 h on 2 cores
  python bench/pretrain_quality.py --budget 2m --recipes default,no-nsp,best
  python bench/pretrain_quality.py --budget 3m --device cuda    # a lent GPU: ~100x the tokens

Chunks of CHUNK_PARAGRAPHS paragraphs stand for documents (a gutenberg-en document is a whole
book), so NSP has documents to draw negatives from and held-out text comes from seen books.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
CORPORA = ROOT.parent / "shared" / "corpora" / "gutenberg-en"
CHUNK_PARAGRAPHS = 40
HELD_OUT_EVERY = 25  # every 25th chunk of the training books is held out
EVAL_PAIRS = 2048
BASE = ["--preset", "mini", "--max-seq-len", "128", "--batch-size", "32"]
BASE += ["--eval-fraction", "0", "--eval-every", "0"]
BASE += ["--save-every", "0", "--log-every", "5", "--no-progress"]

# "default" is the recipe before this bench existed (NSP, linear decay, fp32, lr 1e-3 with 50
# warmup steps); each option is measured alone on top of it (a later flag wins); "best" is
# today's defaults (no flags): the options that won alone (bf16, no NSP, wsd) at lr 5e-4, since
# at 1e-3 post-LN BERT stayed on the unigram plateau in some 10-minute runs
OLD_DEFAULT = ["--nsp", "--schedule", "linear", "--bf16", "off", "--lr", "1e-3"]
OLD_DEFAULT += ["--warmup-steps", "50"]
# Cramming's (Geiping & Goldstein 2022) settings that keep BERT's architecture
CRAM = ["--adam-betas", "0.9", "0.98", "--lr", "1e-3", "--clip-norm", "0.5"]
CRAM += ["--dropout", "0", "--attention-dropout", "0"]
RECIPES: dict[str, list[str]] = {
    "default": OLD_DEFAULT,
    "mask-30%": [*OLD_DEFAULT, "--masked-lm-prob", "0.3", "--max-predictions", "40"],
    "no-nsp": [*OLD_DEFAULT, "--no-nsp"],
    "no-nsp+pack": [*OLD_DEFAULT, "--no-nsp", "--pack"],
    "bf16": [*OLD_DEFAULT, "--bf16", "on"],
    "wsd": [*OLD_DEFAULT, "--schedule", "wsd"],
    "lr-2e-3": [*OLD_DEFAULT, "--lr", "2e-3"],
    "lr-5e-4": [*OLD_DEFAULT, "--lr", "5e-4", "--warmup-steps", "100"],
    "vocab-8k": [*OLD_DEFAULT, "--vocab-size", "8000"],
    "seq-128-then-512": [*OLD_DEFAULT, "--long-seq-len", "512", "--long-fraction", "0.1"],
    "best": [],
    "best-lr-1e-3": ["--lr", "1e-3", "--warmup-steps", "50"],
    "best-batch-16": ["--batch-size", "16"],
    "best-batch-8": ["--batch-size", "8", "--warmup-steps", "200"],
    "best-batch-8-lr-1e-3": ["--batch-size", "8", "--lr", "1e-3", "--warmup-steps", "200"],
    "best-dropout-0": ["--dropout", "0", "--attention-dropout", "0"],
    "best-beta2-0.98": ["--adam-betas", "0.9", "0.98"],
    "best-beta2-0.98-lr-1e-3": ["--adam-betas", "0.9", "0.98", "--lr", "1e-3"],
    "best-cram": CRAM,
    "best-dropout-0-batch-16": ["--dropout", "0", "--attention-dropout", "0", "--batch-size", "16"],
}


def write_chunks(paths: list[Path], out_train: Path, out_held: Path | None) -> None:
    """Each book (a blank-line separated document) cut into chunks of CHUNK_PARAGRAPHS
    paragraphs; every HELD_OUT_EVERY-th chunk goes to out_held when given."""
    train, held = [], []
    index = 0
    for path in paths:
        books = path.read_text(encoding="utf-8").split("\n\n")
        for book in books:
            lines = [line for line in book.splitlines() if line.strip()]
            for start in range(0, len(lines), CHUNK_PARAGRAPHS):
                chunk = "\n".join(lines[start : start + CHUNK_PARAGRAPHS])
                is_held = out_held is not None and index % HELD_OUT_EVERY == HELD_OUT_EVERY - 1
                (held if is_held else train).append(chunk)
                index += 1
    out_train.write_text("\n\n".join(train) + "\n", encoding="utf-8")
    if out_held is not None:
        out_held.write_text("\n\n".join(held) + "\n", encoding="utf-8")


def eval_batches(corpus: Path, tokenizer_path: Path, count: int) -> list:
    """The fixed evaluation set: full-sentence sequences of 128, 15% of positions scored, seed
    1234, every scored position shown as [MASK] (strict: the training masking's kept 10% are
    copied, not predicted; tables before 2026-12-04 scored that lenient input)."""
    from bertserve.training.batches import BatchSource
    from bertserve.training.corpus import Corpus
    from bertserve.training.masking import Masker
    from bertserve.training.pairs import PairGenerator
    from bertserve.training.token_store import build_or_load
    from bertserve.training.tokenizer import SpecialIds, load_tokenizer

    tokenizer = load_tokenizer(tokenizer_path)
    specials = SpecialIds.of(tokenizer)
    store, _ = build_or_load(Corpus.open([str(corpus)]), tokenizer, progress=False)
    docs = np.arange(store.num_documents)
    pairs = PairGenerator(store, docs, specials, 128, 0.0, False, 1234)
    masker = Masker(specials, tokenizer.get_vocab_size(), 0.15, 20)
    source = BatchSource(pairs, masker, specials.pad, static_masking=True)
    return [source.next_batch(64).fully_masked(specials.mask) for _ in range(count // 64)]


@torch.no_grad()
def score(model: torch.nn.Module, batches: list, device: str = "cpu") -> tuple[float, float]:
    """(MLM accuracy, MLM cross-entropy) over the masked positions of `batches`."""
    model.eval()
    hits = total = 0
    loss_sum = 0.0
    for b in batches:
        b = b.to(torch.device(device))
        out = model(b.input_ids, b.attention_mask, b.token_type_ids, b.masked_positions)
        logits = out.mlm_logits.float()
        hits += int((logits.argmax(-1) == b.masked_labels).sum())
        loss_sum += float(
            torch.nn.functional.cross_entropy(logits, b.masked_labels, reduction="sum")
        )
        total += len(b.masked_labels)
    return hits / total, loss_sum / total


def train_recipe(
    flags: list[str], corpus: Path, tokenizer: Path, out: Path, budget: str, device: str
) -> dict:
    args = [sys.executable, "-m", "bertserve.training", "--corpus", str(corpus), "--out", str(out)]
    args += ["--overwrite", "--time-budget", budget, "--device", device, *BASE, *flags]
    if "--vocab-size" not in flags:
        args += ["--tokenizer", str(tokenizer)]
    started = time.perf_counter()
    subprocess.run(args, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["split"] == "train"]
    return {
        "steps": train[-1]["step"],
        "tokens_per_s": float(np.mean([r["tokens_per_s"] for r in train[1:] or train])),
        "wall_s": time.perf_counter() - started,
    }


def train_anchor(
    corpus: Path, tokenizer_path: Path, out: Path, budget_s: float, device: str
) -> dict:
    """transformers' BertForPreTraining, a plain loop in fp32 (AdamW at today's default rate,
    linear warmup, linear decay by time) on the batches today's default recipe draws (full
    sentences, MLM only)."""
    from transformers import BertConfig as HFConfig
    from transformers import BertForPreTraining as HFModel

    from bertserve.training.batches import BatchSource
    from bertserve.training.config import TrainConfig, preset
    from bertserve.training.corpus import Corpus
    from bertserve.training.masking import Masker
    from bertserve.training.pairs import PairGenerator
    from bertserve.training.token_store import build_or_load
    from bertserve.training.tokenizer import SpecialIds, load_tokenizer

    tokenizer = load_tokenizer(tokenizer_path)
    specials = SpecialIds.of(tokenizer)
    store, _ = build_or_load(Corpus.open([str(corpus)]), tokenizer, progress=False)
    docs = np.arange(store.num_documents)
    source = BatchSource(
        PairGenerator(store, docs, specials, 128, 0.1, False, 0),
        Masker(specials, tokenizer.get_vocab_size()),
        specials.pad,
    )
    ours = preset("mini", vocab_size=tokenizer.get_vocab_size())
    shape = dataclasses.asdict(ours)
    shape.pop("trained_heads")
    hf_config = HFConfig(**shape)
    torch.manual_seed(0)
    model = HFModel(hf_config).to(device).train()
    # today's optimizer defaults (1e-3, the old rate, can stall this post-LN model)
    peak, warmup = TrainConfig.lr, TrainConfig.warmup_steps
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=peak, weight_decay=TrainConfig.weight_decay, eps=TrainConfig.adam_eps
    )
    started, steps, tokens = time.perf_counter(), 0, 0
    while (elapsed := time.perf_counter() - started) < budget_s:
        lr = peak * min((steps + 1) / warmup, 1.0 - elapsed / budget_s)
        for group in optimizer.param_groups:
            group["lr"] = max(lr, 0.0)
        b = source.next_batch(32).to(torch.device(device))
        labels = torch.full_like(b.input_ids, -100).view(-1)  # (B*T,)
        labels[b.masked_positions] = b.masked_labels
        logits = model(  # BertForPreTraining sums a loss only when given NSP labels too
            input_ids=b.input_ids,
            attention_mask=b.attention_mask,
            token_type_ids=b.token_type_ids,
        ).prediction_logits  # (B, T, V)
        loss = torch.nn.functional.cross_entropy(
            logits.view(-1, logits.shape[-1]), labels, ignore_index=-100
        )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        steps, tokens = steps + 1, tokens + b.num_tokens
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    return {"steps": steps, "tokens_per_s": tokens / budget_s, "wall_s": budget_s}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--budget", default="10m", help="wall clock per recipe (e.g. 2m, 10m)")
    p.add_argument("--recipes", default=",".join([*RECIPES, "anchor"]))
    p.add_argument("--train-file", type=Path, default=CORPORA / "gutenberg_en_00.txt")
    p.add_argument("--unseen-file", type=Path, default=CORPORA / "gutenberg_en_01.txt")
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "pretrain-quality")
    p.add_argument("--json", type=Path, help="write the table here too")
    p.add_argument("--device", default="cpu", help="cpu or cuda: where every recipe trains")
    args = p.parse_args()
    if not args.train_file.is_file():
        raise SystemExit(f"{args.train_file} not found (the bench reads ../shared/corpora)")
    from bertserve.training.checkpoint import load_model
    from bertserve.training.config import parse_duration
    from bertserve.training.corpus import Corpus
    from bertserve.training.tokenizer import save_tokenizer, train_tokenizer

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("BERTSERVE_CACHE", str(work / "cache"))
    train_txt, held_txt, unseen_txt = work / "train.txt", work / "held.txt", work / "unseen.txt"
    write_chunks([args.train_file], train_txt, held_txt)
    write_chunks([args.unseen_file], unseen_txt, None)
    tok_dir = work / "tokenizer"
    if not (tok_dir / "tokenizer.json").is_file():
        tok_dir.mkdir(exist_ok=True)
        tok = train_tokenizer(Corpus.open([str(train_txt)]).sentences(), 30522)
        save_tokenizer(tok, tok_dir, True, 128)
    tokenizer = tok_dir / "tokenizer.json"
    budget_s = parse_duration(args.budget)
    flags = Path("/proc/cpuinfo").read_text().split("flags\t\t: ")[1].split("\n")[0].split()
    isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16") if f in flags]
    print(f"CPU flags: {' '.join(isa)}; {os.cpu_count()} cores; torch {torch.__version__}")
    print(f"budget {args.budget} per recipe; train {train_txt.stat().st_size / 1e6:.1f} MB")

    results = {}
    eval_cache: dict[Path, tuple[list, list]] = {}
    for name in args.recipes.split(","):
        out = work / name
        if name == "anchor":
            figures = train_anchor(train_txt, tokenizer, out, budget_s, args.device)
            run_tokenizer = tokenizer
        else:
            figures = train_recipe(
                RECIPES[name], train_txt, tokenizer, out, args.budget, args.device
            )
            run_tokenizer = out / "tokenizer.json"
        key = run_tokenizer.resolve()
        if key not in eval_cache:  # the same pairs for every recipe that shares the tokenizer
            eval_cache[key] = (
                eval_batches(held_txt, run_tokenizer, EVAL_PAIRS),
                eval_batches(unseen_txt, run_tokenizer, EVAL_PAIRS),
            )
        held, unseen = eval_cache[key]
        model = load_model(out).to(args.device)
        figures["held_acc"], figures["held_loss"] = score(model, held, args.device)
        figures["unseen_acc"], figures["unseen_loss"] = score(model, unseen, args.device)
        results[name] = figures
        print(
            f"{name:12s} steps {figures['steps']:6d}  tokens/s {figures['tokens_per_s']:8.0f}  "
            f"held-out acc {figures['held_acc']:.4f} loss {figures['held_loss']:.3f}  "
            f"unseen acc {figures['unseen_acc']:.4f} loss {figures['unseen_loss']:.3f}",
            flush=True,
        )
    base = results.get("default")
    print("\n| recipe | steps | tokens/s | held-out acc | loss | unseen acc | loss | vs default |")
    print("|---|---|---|---|---|---|---|---|")
    for name, f in results.items():
        ratio = f"{f['held_acc'] / base['held_acc']:.2f}x" if base else "-"
        print(
            f"| {name} | {f['steps']} | {f['tokens_per_s']:.0f} | {f['held_acc']:.4f} | "
            f"{f['held_loss']:.3f} | {f['unseen_acc']:.4f} | {f['unseen_loss']:.3f} | {ratio} |"
        )
    if args.json:
        args.json.write_text(json.dumps({"budget": args.budget, "cpu": isa, **results}, indent=2))


if __name__ == "__main__":
    main()
