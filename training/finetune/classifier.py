"""BERT for sentence and sentence-pair tasks: Hugging Face's `BertForSequenceClassification`.

pooled [CLS] (the pooler) -> dropout -> linear head; parameter names `bert.*` and
`classifier.*` as transformers has them, so a saved folder loads there strictly. Starts from any
BERT folder: our checkpoints, transformers' BertModel / BertForPreTraining / BertForMaskedLM /
BertForSequenceClassification, and sentence-transformers folders (a bare BertModel).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bertserve.commands import last_line

from ..checkpoint import CheckpointError, bert_weights, save_weights
from ..config import BertConfig
from ..io import write_text_atomic
from ..model import BertModel

SINGLE_LABEL = "single_label_classification"
REGRESSION = "regression"


class BertForSequenceClassification(nn.Module):
    def __init__(
        self, cfg: BertConfig, labels: list[str], problem_type: str, dropout: float | None = None
    ) -> None:
        super().__init__()
        self.config = cfg
        self.labels = labels  # class names; one entry (the target's name) for regression
        self.problem_type = problem_type
        self.bert = BertModel(cfg)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob if dropout is None else dropout)
        self.classifier = nn.Linear(cfg.hidden_size, len(labels))
        nn.init.normal_(self.classifier.weight, std=cfg.initializer_range)
        nn.init.zeros_(self.classifier.bias)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> torch.Tensor:
        """(B, T) int x3 -> logits (B, C); for regression C = 1, the score."""
        _, pooled = self.bert(input_ids, attention_mask, token_type_ids)  # (B, H)
        return self.classifier(self.dropout(pooled))  # (B, C)

    def hf_config(self) -> dict[str, Any]:
        data = self.config.to_hf_dict()
        data["architectures"] = ["BertForSequenceClassification"]
        data.pop("trained_heads", None)
        data["id2label"] = {str(i): name for i, name in enumerate(self.labels)}
        data["label2id"] = {name: i for i, name in enumerate(self.labels)}
        data["num_labels"] = len(self.labels)
        data["problem_type"] = self.problem_type
        return data

    def save(self, directory: Path) -> None:
        """config.json + model.safetensors, loadable by transformers' from_pretrained."""
        directory.mkdir(parents=True, exist_ok=True)
        write_text_atomic(directory / "config.json", json.dumps(self.hf_config(), indent=2) + "\n")
        save_weights(self, directory / "model.safetensors")


def read_config(directory: Path) -> dict[str, Any]:
    path = directory / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{directory} has no config.json; is it a BERT folder?")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not readable JSON ({exc})") from exc
    if not isinstance(data, dict) or data.get("model_type", "bert") != "bert":
        raise CheckpointError(f"{path} is not a BERT config (model_type must be 'bert')")
    return data


def read_bert(directory: Path) -> tuple[dict[str, Any], BertConfig, dict[str, torch.Tensor]]:
    """config.json (as written, and parsed) and the folder's tensors under our names; the
    pooler's are left out where the checkpoint never trained it (MLM-only pretraining)."""
    raw = read_config(directory)
    try:
        cfg = BertConfig.from_dict(raw)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{directory}/config.json: {exc}") from exc
    untrained_pooler = cfg.trained_heads is not None and "nsp" not in cfg.trained_heads
    cfg.trained_heads = None
    state = bert_weights(directory)
    if untrained_pooler:
        state = {k: v for k, v in state.items() if not k.startswith("bert.pooler.")}
    return raw, cfg, state


def load_fitting(
    model: nn.Module, state: dict[str, torch.Tensor], directory: Path, fresh: tuple[str, ...]
) -> list[str]:
    """Loads `state` into `model`; returns the missing tensors, which may only be those
    starting with `fresh` (they start from their initialization)."""
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        reason = last_line(exc, "size mismatch")
        raise CheckpointError(f"{directory}: weights do not fit config.json ({reason})") from exc
    other = [k for k in missing if not k.startswith(fresh)]
    if unexpected or other:
        raise CheckpointError(
            f"{directory}: weights do not fit the BERT config (missing {other[:3]}, "
            f"unexpected {unexpected[:3]})"
        )
    return list(missing)


def from_pretrained(
    directory: Path, labels: list[str], problem_type: str, dropout: float | None = None
) -> tuple[BertForSequenceClassification, list[str]]:
    """A classifier whose encoder comes from `directory`. Returns it and the names of the
    tensors that start fresh (the head; the pooler too where the checkpoint has none or never
    trained it, as after MLM-only pretraining)."""
    raw, cfg, weights = read_bert(directory)
    model = BertForSequenceClassification(cfg, labels, problem_type, dropout)
    state = {k: v for k, v in weights.items() if k.startswith("bert.")}
    head = raw.get("id2label")
    same_head = (
        isinstance(head, dict)
        and [head.get(str(i)) for i in range(len(head))] == labels
        and raw.get("problem_type", SINGLE_LABEL) == problem_type
    )
    if same_head:  # continuing from a classifier with these very labels keeps its head
        state.update({k: v for k, v in weights.items() if k.startswith("classifier.")})
    fresh = load_fitting(model, state, directory, ("classifier.", "bert.pooler."))
    return model, fresh


def load_classifier(directory: Path) -> BertForSequenceClassification:
    """A folder that bert-finetune (or transformers) wrote, head included."""
    raw = read_config(directory)
    id2label = raw.get("id2label") or {}
    labels = [str(id2label.get(str(i), f"LABEL_{i}")) for i in range(len(id2label))]
    if not labels:
        raise CheckpointError(f"{directory}/config.json has no id2label")
    problem = raw.get("problem_type") or (REGRESSION if len(labels) == 1 else SINGLE_LABEL)
    model, fresh = from_pretrained(directory, labels, problem)
    if any(name.startswith("classifier.") for name in fresh):
        raise CheckpointError(f"{directory} has no classifier weights")
    return model
