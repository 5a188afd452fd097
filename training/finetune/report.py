"""Evaluation figures of a fine-tuned classifier or regressor, and its report PNG.

Classification: accuracy, macro-F1, per-class precision / recall / F1 and support, the
confusion matrix (rows: true class, columns: predicted), and with class weights the weighted
accuracy WSDM 2019 was scored by (each example counts its true class's weight). Regression:
Pearson and Spearman correlation (scipy), MSE.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..io import write_atomic


def classification_report(
    predicted: np.ndarray, true: np.ndarray, labels: list[str], weights: np.ndarray | None = None
) -> dict[str, Any]:
    """predicted, true: (N,) class ids; weights: (C,) per-class weights or None."""
    classes = len(labels)
    confusion = np.bincount(true * classes + predicted, minlength=classes * classes).reshape(
        classes, classes
    )  # (C, C): [true, predicted]
    hits = np.diag(confusion).astype(np.float64)
    predicted_count = confusion.sum(axis=0)
    support = confusion.sum(axis=1)
    precision = np.divide(hits, predicted_count, out=np.zeros(classes), where=predicted_count > 0)
    recall = np.divide(hits, support, out=np.zeros(classes), where=support > 0)
    denominator = precision + recall
    f1 = np.divide(
        2 * precision * recall, denominator, out=np.zeros(classes), where=denominator > 0
    )
    report: dict[str, Any] = {
        "examples": len(true),
        "accuracy": float((predicted == true).mean()),
        "macro_f1": float(f1.mean()),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(labels)
        },
        "labels": labels,
        "confusion_matrix": confusion.tolist(),
    }
    if weights is not None:
        w = weights[true]
        report["weighted_accuracy"] = float((w * (predicted == true)).sum() / w.sum())
        report["class_weights"] = {name: float(weights[i]) for i, name in enumerate(labels)}
    return report


def regression_report(predicted: np.ndarray, true: np.ndarray) -> dict[str, Any]:
    from scipy.stats import pearsonr, spearmanr

    constant = np.ptp(predicted) == 0 or np.ptp(true) == 0
    return {
        "examples": len(true),
        "pearson": 0.0 if constant else float(pearsonr(predicted, true)[0]),
        "spearman": 0.0 if constant else float(spearmanr(predicted, true)[0]),
        "mse": float(np.mean((predicted - true) ** 2)),
    }


def headline(report: dict[str, Any]) -> tuple[str, float]:
    """The metric the best checkpoint is chosen by: weighted accuracy when class weights are
    given, else accuracy; Spearman for regression; for embeddings, Spearman of cosine on
    scored pairs, else nDCG@10 of retrieval."""
    for name in ("weighted_accuracy", "accuracy", "spearman", "spearman_cosine", "ndcg@10"):
        if name in report:
            return name, float(report[name])
    raise KeyError("a report without a headline metric")


def plot_report(metrics: Path, report: dict[str, Any], png: Path) -> None:
    """Learning curve (train loss, eval metric by step) and, for classification, the
    confusion matrix of the best checkpoint."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    train = [(r["step"], r["loss"]) for r in rows if r["split"] == "train"]
    evals = [r for r in rows if r["split"] == "eval"]
    has_matrix = "confusion_matrix" in report
    fig, axes = plt.subplots(1, 2 if has_matrix else 1, figsize=(12 if has_matrix else 6, 4.5))
    curve = axes[0] if has_matrix else axes
    if train:
        curve.plot(*zip(*train, strict=True), label="train loss", alpha=0.7)
    curve.set(xlabel="step", ylabel="loss", title="learning curve")
    if evals:
        name, _ = headline(evals[0])
        metric_ax = curve.twinx()
        points = [(r["step"], r[name]) for r in evals]
        metric_ax.plot(*zip(*points, strict=True), "o-", color="tab:orange", label=f"eval {name}")
        metric_ax.set_ylabel(f"eval {name}")
        metric_ax.legend(loc="lower right")
    curve.legend(loc="upper right")
    if has_matrix:
        matrix = np.array(report["confusion_matrix"])
        ax = axes[1]
        ax.imshow(matrix, cmap="Blues")
        labels = report["labels"]
        ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
        ax.set_yticks(range(len(labels)), labels)
        ax.set(xlabel="predicted", ylabel="true", title="confusion matrix (best checkpoint)")
        for (i, j), value in np.ndenumerate(matrix):
            color = "white" if value > matrix.max() / 2 else "black"
            ax.text(j, i, str(value), ha="center", va="center", color=color)
    fig.tight_layout()
    write_atomic(png, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
