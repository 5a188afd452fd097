"""What `bert-export` reads: our checkpoints and Hugging Face / sentence-transformers BERT folders.

Accepted weights: BertModel, BertForMaskedLM or BertForPreTraining (ours or transformers'), as
model.safetensors or pytorch_model.bin (read with weights_only=True). A sentence-transformers
folder adds the default pooling (1_Pooling/config.json), the max length
(sentence_bert_config.json) and whether embeddings are normalized (a Normalize module).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer

from bertserve.commands import last_line, one_line
from bertserve.training.checkpoint import CheckpointError, bert_weights
from bertserve.training.config import BertConfig
from bertserve.training.finetune.st_folder import read_st_settings
from bertserve.training.model import BertForPreTraining
from bertserve.training.tokenizer import load_tokenizer


class SourceError(ValueError):
    """The folder is not a BERT checkpoint this exporter can read."""


@dataclass
class Source:
    path: Path
    config: BertConfig
    model: BertForPreTraining  # eval mode, fp32; heads present only where flags say so
    tokenizer: Tokenizer
    has_pooler: bool
    has_mlm: bool
    has_nsp: bool
    pooling: str  # default sentence pooling: mean, cls or pooler
    normalize: bool  # default: L2-normalize sentence embeddings
    max_seq_len: int
    lowercase: bool
    name: str  # shown in the manifest and /info
    # a BertForSequenceClassification's head (pooled -> logits), its class names in id order
    # (one name for regression) and transformers' problem_type; None for an encoder
    classifier: torch.nn.Linear | None = None
    labels: list[str] | None = None
    problem_type: str | None = None
    # an embedding model trained with MatryoshkaLoss (bert-finetune --task embedding): the
    # cut sizes it was trained at, from bertserve_embedding.json
    matryoshka_dims: list[int] | None = None
    # a cross-encoder's activation (sentence-transformers' activation_fn): sigmoid, identity
    score_activation: str | None = None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise SourceError(f"{path} is not readable JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise SourceError(f"{path} is not a JSON object")
    return data


def _sentence_transformers_settings(path: Path) -> tuple[str | None, bool, int | None, bool | None]:
    """(pooling, normalize, max_seq_length, do_lower_case) from a sentence-transformers folder."""
    try:
        return read_st_settings(path)
    except (OSError, ValueError) as exc:
        raise SourceError(str(exc)) from exc


def load_source(path: Path) -> Source:
    path = Path(path)
    if not path.is_dir():
        raise SourceError(f"{path} is not a directory")
    if not (path / "config.json").is_file():
        raise SourceError(
            f"{path} has no config.json; is it a Hugging Face or bertserve checkpoint?"
        )
    raw_config = _read_json(path / "config.json")
    if raw_config.get("model_type") != "bert":
        raise SourceError(
            f"{path}/config.json has model_type {raw_config.get('model_type')!r}; "
            "only 'bert' is supported"
        )
    try:
        config = BertConfig.from_dict(raw_config)
    except (TypeError, ValueError) as exc:
        raise SourceError(f"{path}/config.json: {exc}") from exc
    if not ((path / "tokenizer.json").is_file() or (path / "vocab.txt").is_file()):
        raise SourceError(f"{path} has neither tokenizer.json nor vocab.txt")
    try:
        state = bert_weights(path)
    except CheckpointError as exc:
        raise SourceError(str(exc)) from exc
    classifier = _classifier_head(path, raw_config, state)
    state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    model = BertForPreTraining(config)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # a tensor whose shape the config does not give
        reason = last_line(exc, "size mismatch")
        raise SourceError(f"{path}: weights do not fit config.json ({reason})") from exc
    # a run that never trained NSP has random NSP and pooler weights: leave both out
    untrained_nsp = config.trained_heads is not None and "nsp" not in config.trained_heads
    has_pooler = "bert.pooler.dense.weight" in state and not untrained_nsp
    has_mlm = "cls.predictions.transform.dense.weight" in state
    has_nsp = "cls.seq_relationship.weight" in state and not untrained_nsp
    optional = ("bert.pooler.", "cls.")
    required_missing = [k for k in missing if not k.startswith(optional)]
    if required_missing or unexpected:
        raise SourceError(
            f"{path}: weights do not fit the BERT config (missing {required_missing[:3]}, "
            f"unexpected {unexpected[:3]})"
        )
    model.eval()

    tokenizer_config = path / "tokenizer_config.json"
    tok_settings = _read_json(tokenizer_config) if tokenizer_config.is_file() else {}
    st_pooling, normalize, st_max_len, st_lower = _sentence_transformers_settings(path)
    lowercase = bool(st_lower if st_lower is not None else tok_settings.get("do_lower_case", True))
    try:
        tokenizer = load_tokenizer(path, lowercase=lowercase)
    except Exception as exc:
        raise SourceError(f"{path}: tokenizer unreadable ({exc})") from exc
    if tokenizer.get_vocab_size() > config.vocab_size:
        raise SourceError(
            f"{path}: tokenizer has {tokenizer.get_vocab_size()} tokens, "
            f"the model only {config.vocab_size}"
        )
    max_len = config.max_position_embeddings
    declared = st_max_len or tok_settings.get("model_max_length")
    if isinstance(declared, int) and 0 < declared < max_len:
        max_len = declared
    pooling = st_pooling or "mean"  # mean pooling beats [CLS] for an MLM-only encoder
    if classifier is not None and not has_pooler:
        raise SourceError(f"{path}: a sequence classifier needs the pooler it was trained on")
    labels, problem_type = _labels(raw_config) if classifier is not None else (None, None)
    return Source(
        path,
        config,
        model,
        tokenizer,
        has_pooler,
        has_mlm,
        has_nsp,
        pooling,
        normalize,
        max_len,
        lowercase,
        path.resolve().name,
        classifier,
        labels,
        problem_type,
        _matryoshka_dims(path),
        _score_activation(path, raw_config) if labels is not None and len(labels) == 1 else None,
    )


def _matryoshka_dims(path: Path) -> list[int] | None:
    training = path / "bertserve_embedding.json"
    if not training.is_file():
        return None
    dims = _read_json(training).get("matryoshka_dims")
    if dims is None:
        return None
    if not isinstance(dims, list) or not all(isinstance(d, int) and d > 0 for d in dims):
        raise SourceError(f"{training}: matryoshka_dims must be a list of positive integers")
    return dims


# sentence-transformers' CrossEncoder activations, by the class path it saves
ACTIVATIONS = {
    "torch.nn.modules.activation.Sigmoid": "sigmoid",
    "torch.nn.modules.linear.Identity": "identity",
}


def _score_activation(path: Path, raw_config: dict[str, Any]) -> str | None:
    """The activation a sentence-transformers CrossEncoder applies to its one logit, where
    its versions save it (config_sentence_transformers.json from v5, config.json's
    `sentence_transformers` from v4, `sbert_ce_default_activation_function` before)."""
    st_config = path / "config_sentence_transformers.json"
    saved = _read_json(st_config).get("activation_fn") if st_config.is_file() else None
    nested = raw_config.get("sentence_transformers")
    if saved is None and isinstance(nested, dict):
        saved = nested.get("activation_fn")
    saved = saved or raw_config.get("sbert_ce_default_activation_function")
    if saved is None:
        return None
    if saved not in ACTIVATIONS:
        raise SourceError(
            f"{path}: the cross-encoder's activation {saved!r} is not supported (Sigmoid or "
            "Identity)"
        )
    return ACTIVATIONS[saved]


def _classifier_head(
    path: Path, raw_config: dict[str, Any], state: dict[str, torch.Tensor]
) -> torch.nn.Linear | None:
    """The BertForSequenceClassification head (classifier.weight (C, H), .bias (C,)), if any."""
    weight, bias = state.get("classifier.weight"), state.get("classifier.bias")
    if weight is None and bias is None:
        return None
    if weight is None or bias is None or weight.ndim != 2 or bias.shape != weight.shape[:1]:
        raise SourceError(f"{path}: the classifier weights are incomplete or misshapen")
    head = torch.nn.Linear(weight.shape[1], weight.shape[0])
    head.load_state_dict({"weight": weight, "bias": bias})
    labels, _ = _labels(raw_config)
    if len(labels) != weight.shape[0]:
        raise SourceError(
            f"{path}: config.json names {len(labels)} labels, the classifier has "
            f"{weight.shape[0]} outputs"
        )
    return head.eval()


def _labels(raw_config: dict[str, Any]) -> tuple[list[str], str]:
    """(class names in id order, problem_type) as transformers reads them."""
    id2label = raw_config.get("id2label") or {}
    count = int(raw_config.get("num_labels") or len(id2label) or 2)
    labels = [str(id2label.get(str(i), id2label.get(i, f"LABEL_{i}"))) for i in range(count)]
    problem = raw_config.get("problem_type") or (
        "regression" if count == 1 else "single_label_classification"
    )
    if problem not in ("regression", "single_label_classification"):
        raise SourceError(f"problem_type {problem!r} is not supported (single-label or regression)")
    return labels, problem


@torch.no_grad()
def reference_outputs(source: Source, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """PyTorch outputs for the parity gate: hidden states, pooled output and head logits."""
    hidden, pooled = source.model.bert(
        batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
    )
    return {"last_hidden_state": hidden, "pooler_output": pooled}


# -- Hugging Face model ids -----------------------------------------------------------------------
_MODEL_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
# what an exporter reads; weights as safetensors first, pytorch_model.bin only when that is all
_HUB_FILES = ["*.json", "*.txt", "*.safetensors", "*/config.json"]


def resolve_checkpoint(spec: str, revision: str | None = None) -> tuple[Path, str | None]:
    """(folder, model id or None): an existing path as it is, else a Hugging Face model id
    (`org/name`) from huggingface_hub's cache, downloaded first unless HF_HUB_OFFLINE is set."""
    path = Path(spec)
    if path.exists() or not _MODEL_ID.match(spec) or spec.count("/") != 1:
        return path, None
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    except ImportError as exc:
        raise SourceError(
            f"{spec} is not a folder; model ids need huggingface_hub (pip install huggingface_hub)"
        ) from exc
    try:
        folder = Path(snapshot_download(spec, revision=revision, allow_patterns=_HUB_FILES))
        if not (folder / "model.safetensors").is_file():
            more = snapshot_download(spec, revision=revision, allow_patterns=["pytorch_model.bin"])
            folder = Path(more)
    except LocalEntryNotFoundError as exc:
        raise SourceError(
            f"{spec} is neither a folder nor in the Hugging Face cache, and the hub cannot be "
            "reached (offline?)"
        ) from exc
    except (HfHubHTTPError, OSError, ValueError) as exc:
        reason = one_line(exc, 200)
        raise SourceError(f"{spec}: cannot fetch from the Hugging Face hub ({reason})") from exc
    return folder, spec
