"""Contract 3's reader: the serving artifact directory and its manifest.

The service owns this reader; export writes what it reads. `load_artifact` verifies the format
version and the sha256 of every listed file, so a tampered, truncated or half-written artifact
is refused with one clear message.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
PRECISIONS = ("fp32", "int8", "fp16")


class ArtifactError(ValueError):
    """An artifact that must not be served."""


@dataclass(frozen=True)
class Variant:
    name: str
    precision: str
    encoder: Path
    mlm_head: Path | None
    nsp_head: Path | None
    rejected: bool
    parity: dict[str, Any]


@dataclass(frozen=True)
class Artifact:
    root: Path
    manifest: dict[str, Any]
    variants: dict[str, Variant]

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
    def hidden_size(self) -> int:
        return int(self.manifest["model"]["hidden_size"])

    @property
    def special_tokens(self) -> dict[str, int]:
        return dict(self.manifest["special_tokens"])

    @property
    def tokenizer_path(self) -> Path:
        return self.root / str(self.manifest.get("tokenizer", "tokenizer.json"))

    @property
    def name(self) -> str:
        return str(self.manifest.get("name", self.root.name))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_artifact(root: Path, verify: bool = True) -> Artifact:
    root = Path(root)
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        raise ArtifactError(f"{root} has no {MANIFEST}; export a model with bert-export first")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{manifest_path} is not valid JSON ({exc})") from exc
    if manifest.get("format") != FORMAT_VERSION:
        raise ArtifactError(
            f"{manifest_path} has format {manifest.get('format')!r}; this service reads "
            f"format {FORMAT_VERSION}"
        )
    for key in ("model", "max_seq_len", "special_tokens", "pooling", "files", "variants"):
        if key not in manifest:
            raise ArtifactError(f"{manifest_path} lacks {key!r}")
    if verify:
        for relative, expected in manifest["files"].items():
            path = root / relative
            if not path.is_file():
                raise ArtifactError(f"{root}: {relative} is listed in the manifest but missing")
            if sha256_file(path) != expected:
                raise ArtifactError(
                    f"{root}: {relative} does not match its sha256 (tampered or truncated)"
                )
    variants = {
        name: _variant(root, manifest["files"], name, entry)
        for name, entry in manifest["variants"].items()
    }
    if not variants:
        raise ArtifactError(f"{root}: the manifest lists no variants")
    return Artifact(root, manifest, variants)


def _variant(root: Path, hashed: dict[str, str], name: str, entry: dict[str, Any]) -> Variant:
    def file(key: str) -> Path | None:
        value = entry.get(key)
        if value is None:
            return None
        if value not in hashed:
            raise ArtifactError(f"{root}: variant {name} names {value}, which is not hashed")
        return root / str(value)

    encoder = file("encoder")
    if encoder is None:
        raise ArtifactError(f"{root}: variant {name} has no encoder")
    return Variant(
        name,
        str(entry.get("precision", name)),
        encoder,
        file("mlm_head"),
        file("nsp_head"),
        bool(entry.get("rejected", False)),
        dict(entry.get("parity", {})),
    )
