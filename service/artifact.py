"""Contract 3's reader: the serving artifact directory and its manifest.

The service owns this reader; export writes what it reads. `load_artifact` refuses, with one
clear `ArtifactError`, anything it should not serve:
- a manifest that is not the shape below (validated by `Manifest`, strict types: a string where
  a number belongs is an error, not a conversion);
- a path that leaves the folder: absolute, `..`, or a symlink whose target is outside it;
- a file the service opens that is not listed in `files` with its sha256 (the tokenizer included),
  or that does not match its hash;
- a tokenizer that does not parse.
The ONNX graphs are parsed by the backend, which maps a broken graph to `ArtifactError` too.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError

from bertserve.commands import one_line

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
PRECISIONS = ("fp32", "int8", "fp16")
_SHA256 = r"^[0-9a-f]{64}$"


class ArtifactError(ValueError):
    """An artifact that must not be served."""


# -- the manifest's shape -----------------------------------------------------------------------
class _Loose(BaseModel):
    # fields this reader does not use are kept (parity figures, fusions, versions, ...)
    model_config = ConfigDict(extra="allow", strict=True)


class ModelConfig(_Loose):
    hidden_size: StrictInt = Field(gt=0)
    vocab_size: StrictInt = Field(gt=0)


class VariantEntry(_Loose):
    precision: Literal["fp32", "int8", "fp16"]
    encoder: str
    mlm_head: str | None = None
    nsp_head: str | None = None
    classifier_head: str | None = None
    rejected: StrictBool = False
    parity: dict[str, Any] = Field(default_factory=dict)
    # whether a sentence's vector is independent of its batch; artifacts from before the
    # field existed quantized int8 per batch, hence the precision-based default
    batch_invariant: StrictBool | None = None


class Manifest(_Loose):
    format: Literal[1]
    name: str | None = None
    model: ModelConfig
    max_seq_len: StrictInt = Field(gt=0)
    special_tokens: dict[str, StrictInt]
    pooling: Literal["mean", "cls", "pooler"]
    normalize: StrictBool = True
    lowercase: StrictBool = True
    tokenizer: str = "tokenizer.json"
    files: dict[str, str]
    variants: dict[str, VariantEntry] = Field(min_length=1)
    # a sequence classifier's class names in id order (one name for regression)
    labels: list[str] | None = Field(None, min_length=1)
    problem_type: Literal["single_label_classification", "regression"] | None = None
    # what turns a one-logit classifier's output into a rerank score (sentence-transformers'
    # CrossEncoder activation_fn; absent: sigmoid, as CrossEncoder and TEI do)
    score_activation: Literal["sigmoid", "identity"] | None = None
    # the `dimensions` an embedding model was trained to be cut to (MatryoshkaLoss)
    matryoshka_dims: list[Annotated[StrictInt, Field(gt=0)]] | None = None


def _first_problem(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"]) or "the document"
    return f"{where}: {error['msg']}"


# -- the loaded artifact ------------------------------------------------------------------------
@dataclass(frozen=True)
class Variant:
    name: str
    precision: str
    encoder: Path
    mlm_head: Path | None
    nsp_head: Path | None
    rejected: bool
    parity: dict[str, Any]
    batch_invariant: bool
    classifier_head: Path | None = None


@dataclass(frozen=True)
class Artifact:
    root: Path
    manifest: dict[str, Any]  # the validated manifest as plain JSON (for /info)
    variants: dict[str, Variant]
    tokenizer_path: Path
    tokenizer_json: str  # read once, after its hash was checked

    @property
    def max_seq_len(self) -> int:
        return int(self.manifest["max_seq_len"])

    @property
    def pooling(self) -> str:
        return str(self.manifest["pooling"])

    @property
    def normalize(self) -> bool:
        return bool(self.manifest.get("normalize", True))

    @property
    def matryoshka_dims(self) -> list[int] | None:
        dims = self.manifest.get("matryoshka_dims")
        return [int(d) for d in dims] if dims else None

    @property
    def hidden_size(self) -> int:
        return int(self.manifest["model"]["hidden_size"])

    @property
    def special_tokens(self) -> dict[str, int]:
        return dict(self.manifest["special_tokens"])

    @property
    def name(self) -> str:
        return str(self.manifest.get("name") or self.root.name)

    @property
    def labels(self) -> list[str]:
        return list(self.manifest.get("labels") or [])

    @property
    def regression(self) -> bool:
        return self.manifest.get("problem_type") == "regression"

    @property
    def score_activation(self) -> str:
        return str(self.manifest.get("score_activation") or "sigmoid")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def contained(root: Path, relative: str) -> Path:
    """`root / relative`, refused unless it stays inside `root` once every symlink is resolved.
    `relative` must be a plain relative POSIX path: no absolute path, no `..`, no backslash."""
    pure = PurePosixPath(relative)
    if not relative or pure.is_absolute() or ".." in pure.parts or "\\" in relative:
        raise ArtifactError(f"{root}: path {relative!r} in the manifest is not inside the artifact")
    real_root = root.resolve()
    path = (root / pure).resolve()
    if not path.is_relative_to(real_root):
        raise ArtifactError(f"{root}: {relative} leads outside the artifact (symlink to {path})")
    return path


def _read_manifest(root: Path) -> Manifest:
    manifest_path = root / MANIFEST
    if manifest_path.is_symlink() or not manifest_path.is_file():
        raise ArtifactError(f"{root} has no {MANIFEST}; export a model with bert-export first")
    try:
        data = json.loads(manifest_path.read_bytes().decode("utf-8"))
    except PermissionError as exc:
        raise ArtifactError(f"cannot read {manifest_path}: permission denied") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{manifest_path} is not valid UTF-8 JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ArtifactError(f"{manifest_path} is not a JSON object")
    if data.get("format") != FORMAT_VERSION:
        raise ArtifactError(
            f"{manifest_path} has format {data.get('format')!r}; this service reads "
            f"format {FORMAT_VERSION}"
        )
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        raise ArtifactError(f"{manifest_path}: {_first_problem(exc)}") from exc


def _verify(root: Path, relative: str, expected: str) -> Path:
    path = contained(root, relative)
    if not re.match(_SHA256, expected):
        raise ArtifactError(f"{root}: the sha256 of {relative} in the manifest is malformed")
    if not path.is_file():
        raise ArtifactError(f"{root}: {relative} is listed in the manifest but missing")
    try:
        actual = sha256_file(path)
    except PermissionError as exc:
        raise ArtifactError(f"cannot read {path}: permission denied") from exc
    except OSError as exc:
        raise ArtifactError(f"cannot read {path} ({exc.strerror})") from exc
    if actual != expected:
        raise ArtifactError(f"{root}: {relative} does not match its sha256 (tampered or truncated)")
    return path


def load_artifact(root: Path, verify: bool = True) -> Artifact:
    """The artifact at `root`, every path contained and every file it names hashed; with
    verify=False the hashes are not recomputed (paths are still checked)."""
    root = Path(root)
    if not root.exists():
        raise ArtifactError(f"{root} does not exist; export a model with bert-export first")
    if not root.is_dir():
        raise ArtifactError(f"{root} is not a directory; give the folder bert-export wrote")
    manifest = _read_manifest(root)
    files: dict[str, Path] = {}
    for relative, expected in manifest.files.items():
        files[relative] = _verify(root, relative, expected) if verify else contained(root, relative)

    def hashed(relative: str | None, what: str) -> Path | None:
        if relative is None:
            return None
        if relative not in files:
            raise ArtifactError(f"{root}: {what} {relative} is not listed in the manifest's files")
        return files[relative]

    tokenizer_path = hashed(manifest.tokenizer, "tokenizer")
    assert tokenizer_path is not None
    tokenizer_json = _read_tokenizer(tokenizer_path)
    variants = {}
    if manifest.labels is None and any(v.classifier_head for v in manifest.variants.values()):
        raise ArtifactError(f"{root}: the manifest has a classifier head but no labels")
    for name, entry in manifest.variants.items():
        encoder = hashed(entry.encoder, f"variant {name}'s encoder")
        assert encoder is not None
        variants[name] = Variant(
            name,
            entry.precision,
            encoder,
            hashed(entry.mlm_head, f"variant {name}'s MLM head"),
            hashed(entry.nsp_head, f"variant {name}'s NSP head"),
            entry.rejected,
            dict(entry.parity),
            entry.batch_invariant
            if entry.batch_invariant is not None
            else entry.precision != "int8",
            hashed(entry.classifier_head, f"variant {name}'s classifier head"),
        )
    return Artifact(
        root, manifest.model_dump(mode="json"), variants, tokenizer_path, tokenizer_json
    )


def _read_tokenizer(path: Path) -> str:
    from tokenizers import Tokenizer

    try:
        text = path.read_bytes().decode("utf-8")
        Tokenizer.from_str(text)
    except PermissionError as exc:
        raise ArtifactError(f"cannot read {path}: permission denied") from exc
    except Exception as exc:  # tokenizers raises its own exception type for a bad document
        reason = one_line(exc, 200)
        raise ArtifactError(f"{path} is not a usable tokenizer ({reason})") from exc
    return text
