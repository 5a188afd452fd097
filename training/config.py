"""Model and training configuration.

`BertConfig` round-trips to the `config.json` that Hugging Face's `BertConfig` reads, so a
checkpoint directory is rebuilt from its own file, never from constants in code.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class BertConfig:
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072  # feed-forward width, 4x hidden in the original
    hidden_act: str = "gelu"  # exact (erf) GELU, as the original
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2  # segment A / segment B
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    # which pretraining heads a bertserve run trained ("mlm", "nsp"); None: not recorded (a
    # Hugging Face checkpoint). Export leaves out a head, and the pooler that only NSP trains,
    # when the run never trained it. transformers keeps the key as a plain attribute.
    trained_heads: list[str] | None = None

    def __post_init__(self) -> None:
        for name in (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "max_position_embeddings",
            "type_vocab_size",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, not {value!r}")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "layer_norm_eps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ValueError(f"{name} must be a non-negative number, not {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not a multiple of "
                f"num_attention_heads {self.num_attention_heads}"
            )
        if self.hidden_act not in ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu"):
            raise ValueError(f"unsupported hidden_act {self.hidden_act!r}")

    def to_hf_dict(self) -> dict[str, Any]:
        return {
            "model_type": "bert",
            "architectures": ["BertForPreTraining"],
            **dataclasses.asdict(self),
            "position_embedding_type": "absolute",
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BertConfig:
        """Builds from a config.json dict, ignoring HF fields this model has no use for."""
        if data.get("model_type", "bert") != "bert":
            raise ValueError(f"model_type is {data.get('model_type')!r}, not 'bert'")
        if data.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError("only absolute position embeddings are supported")
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def save(self, path: Path) -> None:
        from .io import write_text_atomic

        write_text_atomic(path, json.dumps(self.to_hf_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> BertConfig:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


# Size presets: (layers, hidden, heads). intermediate = 4 * hidden.
PRESETS: dict[str, tuple[int, int, int]] = {
    "tiny": (2, 128, 2),
    "mini": (4, 256, 4),
    "small": (4, 512, 8),
    "medium": (8, 512, 8),
    "base": (12, 768, 12),
    "large": (24, 1024, 16),
}


def preset(name: str, **overrides: Any) -> BertConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    layers, hidden, heads = PRESETS[name]
    values: dict[str, Any] = {
        "num_hidden_layers": layers,
        "hidden_size": hidden,
        "num_attention_heads": heads,
        "intermediate_size": 4 * hidden,
    }
    values.update({k: v for k, v in overrides.items() if v is not None})
    return BertConfig(**values)


@dataclass
class TrainConfig:
    """Everything about a run that is not the model's shape; saved as train_config.json."""

    out: str = "runs/bert"
    corpus: list[str] = field(default_factory=list)  # empty: the embedded default corpus
    preset: str = "tiny"
    seed: int = 0
    # tokenizer
    vocab_size: int = 30522  # upper bound for a trained WordPiece vocabulary
    lowercase: bool = True
    tokenizer: str | None = None  # path to tokenizer.json or vocab.txt to reuse
    # data
    max_seq_len: int = 128
    # the original's schedule: max_seq_len for most of the run, long_seq_len for the last
    # long_fraction of it (steps, or the time budget) to learn the long positions
    long_seq_len: int | None = None
    long_fraction: float = 0.1
    short_seq_prob: float = 0.1  # share of pairs with a shorter random target length
    masked_lm_prob: float = 0.15
    max_predictions: int = 20  # per sequence; the original uses 20 at length 128
    # MLM only by default: at equal budget NSP cost MLM accuracy (bench/pretrain_quality.py)
    nsp: bool = False  # True: the original's [CLS] A [SEP] B [SEP] pairs with next-sentence loss
    pack: bool = False  # MLM only: sequences packed to max_seq_len, no padding at all
    static_masking: bool = False
    whole_word_masking: bool = False
    eval_fraction: float = 0.02  # share of documents held out for evaluation
    eval_batches: int = 20
    # optimisation
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 5e-4  # 1e-3 left post-LN mini on the unigram plateau in 2 of 4 10-min runs
    weight_decay: float = 0.01
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-6
    warmup_steps: int = 100
    schedule: str = "wsd"  # wsd: warmup, stable, decay (won at 5 min); linear: decay from warmup
    decay_fraction: float = 0.2  # wsd: the share of the run (steps or budget) spent decaying
    clip_norm: float = 1.0
    max_steps: int | None = None
    time_budget_s: float | None = None
    compile: str = "auto"  # torch.compile: on, off, or auto (on CUDA)
    # batches built in a worker process: on, off, or auto (on CUDA, where the loop outruns them)
    data_worker: str = "auto"
    bf16: str = "auto"  # autocast: on, off, or auto (on CUDA and on CPUs with native bf16)
    device: str = "auto"
    # bookkeeping
    log_every: int = 10
    eval_every: int = 200
    save_every: int = 500
    keep_checkpoints: int = 2
    progress: bool = True

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2) + "\n"


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")


def parse_duration(text: str) -> float:
    """'90s', '10m', '1.5h' or a bare number of seconds -> seconds."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"cannot read duration {text!r}; write e.g. 90s, 10m or 2h")
    value, unit = float(match.group(1)), match.group(2) or "s"
    return value * {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit]
