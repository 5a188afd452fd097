"""The loop every fine-tuning task shares: resume, the learning-rate schedule, steps under a time
budget with a progress bar, evaluation every epoch end (and --eval-every steps), the best
checkpoint kept, the metrics log and the report plot. A task gives its batches, its training
step (forward and backward) and its evaluation and save.

OUT/last holds the latest weights and optimizer for --resume, in one atomic file. Batches are
a function of (seed, epoch) and dropout is reseeded from (seed, step), so a resumed run
repeats the losses of an unbroken one.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from .. import checkpoint as ckpt
from ..io import trim_log, write_text_atomic
from .report import headline, plot_report

LAST = "last"  # OUT/last: the latest weights and training state, for --resume
REPORT = "eval_report.json"


def lr_factor(progress: float, warmup: float) -> float:
    """Linear warmup over the first `warmup` of the run, then linear decay to 0."""
    if progress < warmup:
        return progress / warmup
    return max(0.0, (1 - progress) / max(1e-9, 1 - warmup))


def train_loop(
    cfg: Any,  # FinetuneConfig
    out: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    per_epoch: int,
    batches_of: Callable[[int], list[np.ndarray]],
    train_step: Callable[[np.ndarray], dict[str, float]],
    figures_of: Callable[[], dict[str, Any]],
    save_best: Callable[[], None],
    resume: bool,
) -> dict[str, Any]:
    """Runs to the end (or the time budget) and returns the best evaluation report.
    `train_step(rows)`: forward and backward on those training rows, returning the step's
    figures ("loss", and "accuracy" where there is one)."""
    total = max(1, math.ceil(cfg.epochs * per_epoch))
    step, elapsed, best = 0, 0.0, -math.inf
    if resume:
        state = ckpt.load_training_state(out / LAST / ckpt.STATE_FILE)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, elapsed = int(state["step"]), float(state["elapsed"])
        best = float(state["data"]["best"])
        print(f"resuming {out} at step {step} of {total}")
    metrics_path = out / "metrics.jsonl"
    trim_log(metrics_path, step if resume else None)
    evaluated_at = step if resume else None  # the state resumed from was saved at an evaluation

    def progress_of(at_step: int, seconds: float) -> float:
        by_time = seconds / cfg.time_budget_s if cfg.time_budget_s else 0.0
        return min(1.0, max(at_step / total, by_time))

    def evaluate_and_keep(log: Any) -> None:
        nonlocal best, evaluated_at
        evaluated_at = step
        figures = figures_of()
        name, value = headline(figures)
        record = {"split": "eval", "step": step, "epoch": step / per_epoch, **_flat(figures)}
        log.write(json.dumps(record) + "\n")
        log.flush()
        improved = value > best
        if improved:
            best = value
            save_best()
            write_text_atomic(
                out / REPORT, json.dumps({"step": step, "metric": name, **figures}, indent=2) + "\n"
            )
        bar.write(
            f"step {step}: eval {name} {value:.4f}" + (" (best so far, saved)" if improved else "")
        )
        _save_last(out, model, optimizer, step, elapsed, best)

    model.train()
    bar = tqdm(total=total, initial=step, desc="finetune", unit="step", disable=not cfg.progress)
    shown: dict[str, list[float]] = {}  # recent training figures, for the progress bar
    batches: list[np.ndarray] | None = None
    started = time.monotonic() - elapsed
    with open(metrics_path, "a", encoding="utf-8") as log:
        while step < total:
            elapsed = time.monotonic() - started
            if cfg.time_budget_s is not None and elapsed >= cfg.time_budget_s:
                break
            epoch, position = divmod(step, per_epoch)
            if position == 0 or batches is None:
                batches = batches_of(epoch)
                assert len(batches) >= per_epoch, "an epoch with fewer batches than planned"
            torch.manual_seed(cfg.seed * 1_000_003 + step)  # dropout: a function of the step
            factor = lr_factor(progress_of(step, elapsed), cfg.warmup_fraction)
            for group in optimizer.param_groups:
                group["lr"] = cfg.lr * factor
            optimizer.zero_grad(set_to_none=True)
            figures = train_step(batches[position])
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            step += 1
            log.write(
                json.dumps({"split": "train", "step": step, **figures, "lr": cfg.lr * factor})
                + "\n"
            )
            bar.update(1)
            for key, value in figures.items():
                shown.setdefault(key, []).append(value)
            postfix = {key[:3] if key != "loss" else key: f"{np.mean(v[-50:]):.4f}"
                       for key, v in shown.items()}  # fmt: skip
            bar.set_postfix({**postfix, "epoch": f"{step / per_epoch:.2f}"})
            elapsed = time.monotonic() - started
            if step % per_epoch == 0 or (cfg.eval_every and step % cfg.eval_every == 0):
                evaluate_and_keep(log)
        if evaluated_at != step or not (out / REPORT).is_file():
            evaluate_and_keep(log)
    bar.close()
    final: dict[str, Any] = json.loads((out / REPORT).read_text())
    plot_report(metrics_path, final, out / "report.png")
    return final


def _save_last(
    out: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    step: int,
    elapsed: float,
    best: float,
) -> None:
    """Weights and optimizer in one file, written atomically, so a kill never pairs the
    weights of one step with the optimizer of another."""
    last = out / LAST
    last.mkdir(exist_ok=True)
    ckpt.save_training_state(
        last / ckpt.STATE_FILE,
        {
            "model": ckpt.weights_to_save(model),
            "step": step,
            "elapsed": elapsed,
            "world_size": 1,
            "optimizer": optimizer.state_dict(),
            "data": {"best": best},
        },
    )


def _flat(figures: dict[str, Any]) -> dict[str, Any]:
    """The scalar figures of a report (per-class tables stay in eval_report.json)."""
    return {k: v for k, v in figures.items() if isinstance(v, int | float)}
