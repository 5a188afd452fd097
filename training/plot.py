"""Loss and accuracy curves from metrics.jsonl, as one PNG."""

from __future__ import annotations

import json
from pathlib import Path

from .io import write_atomic


def plot_metrics(metrics: Path, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    train = [r for r in rows if r["split"] == "train"]
    evals = [r for r in rows if r["split"] == "eval"]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for key, style in (("loss", "-"), ("mlm_loss", "--"), ("nsp_loss", ":")):
        points = [(r["step"], r[key]) for r in train if key in r]
        if points:
            loss_ax.plot(*zip(*points, strict=True), style, label=f"train {key}")
    points = [(r["step"], r["mlm_loss"]) for r in evals]
    if points:
        loss_ax.plot(*zip(*points, strict=True), "o-", label="eval mlm_loss")
    loss_ax.set(xlabel="step", ylabel="loss", title="loss")
    # train mlm_acc scores the training masking (10% of positions keep their token); eval
    # mlm_acc is strict (every scored position [MASK]), so the labels say which is which
    names = {("train", "mlm_acc"): "train mlm_acc (training masking)",
             ("eval", "mlm_acc"): "eval mlm_acc (all [MASK])",
             ("eval", "mlm_acc_training_masking"): "eval mlm_acc (training masking)"}  # fmt: skip
    for split, rs, style in (("train", train, "-"), ("eval", evals, "o-")):
        for key in ("mlm_acc", "mlm_acc_training_masking", "nsp_acc"):
            points = [(r["step"], r[key]) for r in rs if key in r]
            if points:
                label = names.get((split, key), f"{split} {key}")
                acc_ax.plot(*zip(*points, strict=True), style, label=label)
    acc_ax.set(xlabel="step", ylabel="accuracy", title="accuracy", ylim=(0, 1))
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    write_atomic(png, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
