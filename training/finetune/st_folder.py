"""The folder an embedding run writes: sentence-transformers' layout, so `SentenceTransformer(out)`
loads it as it is, and bert-export reads its pooling and normalization from it.

    modules.json                         Transformer (the root), Pooling, [Normalize]
    config.json, model.safetensors       a transformers BertModel
    tokenizer.json, vocab.txt, ...       the tokenizer
    sentence_bert_config.json            max_seq_length, do_lower_case
    1_Pooling/config.json                mean or [CLS]
    2_Normalize/                         when embeddings are L2-normalized
    config_sentence_transformers.json    versions, cosine similarity
    bertserve_embedding.json             how it was trained: loss, pooling, Matryoshka dims
"""

from __future__ import annotations

import json
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ..checkpoint import weights_to_save
from ..io import write_atomic, write_text_atomic
from .encoder import SentenceEncoder

TRAINING_FILE = "bertserve_embedding.json"
FILES = frozenset(
    {
        "modules.json",
        "config.json",
        "model.safetensors",
        "sentence_bert_config.json",
        "config_sentence_transformers.json",
        TRAINING_FILE,
        "1_Pooling",
        "2_Normalize",
    }
)


def read_st_settings(path: Path) -> tuple[str | None, bool, int | None, bool | None]:
    """(pooling, normalize, max_seq_length, do_lower_case) of a sentence-transformers folder;
    (None, False, None, None) for any other. ValueError for a pooling other than mean or cls."""
    pooling, normalize, max_len, lower = None, False, None, None
    modules_file = path / "modules.json"
    if modules_file.is_file():
        for module in json.loads(modules_file.read_text(encoding="utf-8")):
            kind = str(module.get("type", ""))
            normalize = normalize or kind.endswith("Normalize")
            if kind.endswith("Pooling"):
                config_file = path / module.get("path", "1_Pooling") / "config.json"
                if config_file.is_file():
                    pool = json.loads(config_file.read_text(encoding="utf-8"))
                    if pool.get("pooling_mode_cls_token"):
                        pooling = "cls"
                    elif pool.get("pooling_mode_mean_tokens"):
                        pooling = "mean"
                    else:
                        raise ValueError(f"{config_file}: only cls and mean pooling are supported")
    sbert = path / "sentence_bert_config.json"
    if sbert.is_file():
        settings = json.loads(sbert.read_text(encoding="utf-8"))
        max_len, lower = settings.get("max_seq_length"), settings.get("do_lower_case")
    return pooling, normalize, max_len, lower


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"


def _json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def save_st_folder(
    model: SentenceEncoder,
    out: Path,
    normalize: bool,
    max_seq_len: int,
    lowercase: bool,
    training: dict[str, Any],
) -> None:
    """The encoder's files (the tokenizer's are written by the caller)."""
    config = model.config.to_hf_dict()
    config["architectures"] = ["BertModel"]
    config.pop("trained_heads", None)
    _json(out / "config.json", config)
    tensors = {  # BertModel's own names, no prefix
        name: tensor
        for name, tensor in weights_to_save(model.bert).items()
        if model.pooler_trained or not name.startswith("pooler.")
    }
    write_atomic(
        out / "model.safetensors",
        lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}),
    )
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
    ]
    if normalize:
        modules.append(
            {"idx": 2, "name": "2", "path": "2_Normalize",
             "type": "sentence_transformers.models.Normalize"}
        )  # fmt: skip
        (out / "2_Normalize").mkdir(exist_ok=True)
    _json(out / "modules.json", modules)
    _json(
        out / "1_Pooling" / "config.json",
        {
            "word_embedding_dimension": model.config.hidden_size,
            "pooling_mode_cls_token": model.pooling == "cls",
            "pooling_mode_mean_tokens": model.pooling == "mean",
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
            "pooling_mode_weightedmean_tokens": False,
            "pooling_mode_lasttoken": False,
            "include_prompt": True,
        },
    )
    _json(out / "sentence_bert_config.json", {"max_seq_length": max_seq_len,
                                              "do_lower_case": False})  # fmt: skip
    _json(
        out / "config_sentence_transformers.json",
        {
            "__version__": {
                "sentence_transformers": _version("sentence-transformers"),
                "transformers": _version("transformers"),
                "pytorch": torch.__version__,
                "bertserve": _version("bertserve"),
            },
            "prompts": {},
            "default_prompt_name": None,
            "similarity_fn_name": "cosine",
        },
    )
    _json(out / TRAINING_FILE, {"pooling": model.pooling, "normalize": normalize, **training})
