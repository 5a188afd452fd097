"""Contract 2: the checkpoint directory, Hugging Face compatible.

  config.json            BertConfig (model_type bert, architectures BertForPreTraining)
  model.safetensors      BertForPreTraining parameter names; the decoder weight is tied to
                         the word embeddings and so not stored, as transformers does
  tokenizer.json, vocab.txt, tokenizer_config.json, special_tokens_map.json
  train_config.json      the run's settings
  training_state.pt      optimizer, step, elapsed time and data-stream state, for exact resume
                         (tensors and plain types only: it loads with weights_only=True)

A checkpoint-N directory is written under a temporary name and renamed when whole.
"""

from __future__ import annotations

import json
import pickle
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from bertserve.commands import one_line

from .config import BertConfig
from .io import apply_umask, write_atomic

STATE_FILE = "training_state.pt"
WEIGHTS_FILE = "model.safetensors"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


class CheckpointError(ValueError):
    """A directory that is not a usable checkpoint."""


# -- weights ------------------------------------------------------------------------------------
def weights_to_save(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: t.detach().contiguous().cpu() for name, t in model.state_dict().items()}


def save_weights(model: torch.nn.Module, path: Path) -> None:
    tensors = weights_to_save(model)
    write_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))


def normalize_hf_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Maps the spellings found in HF BERT checkpoints onto our names: old TF-style LayerNorm
    gamma/beta, the tied decoder (dropped: it is the word embedding), decoder.bias (the same
    tensor as predictions.bias), and non-persistent buffers."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        name = name.replace("LayerNorm.gamma", "LayerNorm.weight")
        name = name.replace("LayerNorm.beta", "LayerNorm.bias")
        if name.endswith(("position_ids", "token_type_ids")) or name == (
            "cls.predictions.decoder.weight"
        ):
            continue
        if name == "cls.predictions.decoder.bias":
            out.setdefault("cls.predictions.bias", tensor)
            continue
        out[name] = tensor
    return out


def read_state_dict(directory: Path) -> dict[str, torch.Tensor]:
    """model.safetensors, or pytorch_model.bin read with weights_only=True (never full pickle)."""
    safetensors_path = directory / WEIGHTS_FILE
    if safetensors_path.is_file():
        try:
            return load_file(str(safetensors_path))
        except Exception as exc:  # safetensors raises its own error types for bad headers
            raise CheckpointError(
                f"{safetensors_path} is unreadable ({one_line(exc, 300)})"
            ) from exc
    bin_path = directory / "pytorch_model.bin"
    if bin_path.is_file():
        try:
            with warnings.catch_warnings():  # its pickle-protocol notes are not the user's concern
                warnings.simplefilter("ignore")
                state = torch.load(bin_path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:  # torch's refusal of anything but plain tensors
            detail = next(
                (line.strip() for line in str(exc).splitlines() if "Unsupported" in line),
                one_line(exc, 300),
            )
            raise CheckpointError(
                f"{bin_path} holds Python objects besides tensors, which could run code when "
                f"loaded; refused (torch.load weights_only=True: {detail[:200]})"
            ) from exc
        except Exception as exc:
            raise CheckpointError(f"{bin_path} is unreadable ({one_line(exc, 300)})") from exc
        if not isinstance(state, dict):
            raise CheckpointError(f"{bin_path} does not hold a state dict")
        return dict(state)
    raise CheckpointError(f"{directory} has neither {WEIGHTS_FILE} nor pytorch_model.bin")


def bert_weights(directory: Path) -> dict[str, torch.Tensor]:
    """A BERT folder's tensors under our names (`bert.*`, `cls.*`, `classifier.*`): HF
    spellings mapped by normalize_hf_state_dict, and a bare BertModel's (sentence-transformers
    folders store one) given the `bert.` prefix."""
    state = normalize_hf_state_dict(read_state_dict(directory))
    if not any(name.startswith("bert.") for name in state):
        state = {
            (n if n.startswith(("cls.", "classifier.")) else f"bert.{n}"): t
            for n, t in state.items()
        }
    return state


def load_model(directory: Path) -> Any:
    """A BertForPreTraining from a checkpoint directory (ours or HF's BertForPreTraining)."""
    from .model import BertForPreTraining

    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise CheckpointError(f"{directory} has no config.json")
    model = BertForPreTraining(BertConfig.load(directory / "config.json"))
    state = normalize_hf_state_dict(read_state_dict(directory))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{directory}: weights do not match BertForPreTraining "
            f"(missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    return model


# -- checkpoint directories ---------------------------------------------------------------------
def list_checkpoints(run_dir: Path, complete_only: bool = True) -> list[tuple[int, Path]]:
    found = []
    if run_dir.is_dir():
        for child in run_dir.iterdir():
            match = _CHECKPOINT.match(child.name)
            if match and (not complete_only or (child / STATE_FILE).is_file()):
                found.append((int(match.group(1)), child))
    return sorted(found)


def remove_tree(path: Path) -> None:
    """Renames first, so a kill mid-delete never leaves a half checkpoint under a real name."""
    doomed = path.with_name(f".deleting-{path.name}")
    path.rename(doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def clean_stale(run_dir: Path) -> None:
    """Removes temporary directories left by a run that was killed while writing."""
    for child in run_dir.glob(".*checkpoint-*"):
        if child.is_dir():
            shutil.rmtree(child, ignore_errors=True)


def resolve_resume(path: Path) -> Path:
    """A run directory (its latest checkpoint-N) or one checkpoint directory."""
    if (path / STATE_FILE).is_file() and _CHECKPOINT.match(path.name):
        return path
    checkpoints = list_checkpoints(path)
    if checkpoints:
        return checkpoints[-1][1]
    if (path / STATE_FILE).is_file():
        return path
    raise CheckpointError(f"nothing to resume in {path}: no checkpoint-N with {STATE_FILE}")


def write_checkpoint(run_dir: Path, step: int, fill: Any, keep: int) -> Path:
    """Calls fill(tmp_dir) to write the files, renames tmp_dir to checkpoint-{step}, then
    deletes all but the newest `keep` checkpoints."""
    final = run_dir / f"checkpoint-{step}"
    tmp = Path(tempfile.mkdtemp(prefix=f".checkpoint-{step}.", dir=run_dir))
    apply_umask(tmp, directory=True)
    try:
        fill(tmp)
        if final.exists():
            remove_tree(final)
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for _, old in list_checkpoints(run_dir, complete_only=False)[:-keep] if keep > 0 else []:
        remove_tree(old)
    return final


def save_training_state(path: Path, state: dict[str, Any]) -> None:
    payload = dict(state)
    payload["data"] = json.dumps(payload["data"])  # numpy RNG states hold 128-bit ints
    write_atomic(path, lambda tmp: torch.save(payload, tmp))


def load_training_state(path: Path) -> dict[str, Any]:
    try:
        state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
        state["data"] = json.loads(state["data"])
        absent = [k for k in ("step", "elapsed", "world_size", "optimizer") if k not in state]
        if absent:
            raise KeyError(f"no {', '.join(absent)}")
    except Exception as exc:  # truncated zip, foreign pickle, missing keys
        raise CheckpointError(
            f"{path} is damaged or not a bertserve training state ({one_line(exc, 300)}); resume "
            "from an earlier checkpoint-N"
        ) from exc
    return state


def save_model(model: Any, directory: Path) -> None:
    """config.json + model.safetensors: enough for `from_pretrained` and for export."""
    directory.mkdir(parents=True, exist_ok=True)
    model.config.save(directory / "config.json")
    save_weights(model, directory / WEIGHTS_FILE)
