"""A stand-in model for API and batcher tests: no torch, no ONNX file, so they also run on the
`serve` install. Its outputs are a deterministic function of each row alone (batch-invariant,
like the fp32 encoder), so a served vector can be checked against the fake run by hand.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from bertserve.service.app import create_app
from bertserve.service.artifact import Artifact, Variant
from bertserve.service.backend import Backend
from bertserve.service.settings import Settings

DATA = Path(__file__).parent / "data"
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
HIDDEN = 128
MAX_SEQ_LEN = 64


def fake_tokenizer_json(words: int = 3000) -> str:
    """A bert-base-style WordPiece (lower-cased, CJK characters split) over tests/data's most
    frequent words and every character with its ## form: built from a fixed vocabulary, so the
    same on every run."""
    text = "\n".join(
        (DATA / name).read_text(encoding="utf-8") for name in ("english.txt", "chinese.txt")
    )
    lowered = text.lower()
    common = [w for w, _ in Counter(re.findall(r"[a-z]+", lowered)).most_common(words)]
    characters = sorted({c for c in lowered if not c.isspace()})
    vocab = [*SPECIALS, *characters, *(f"##{c}" for c in characters if c.isalnum())]
    vocab += [w for w in common if w not in set(vocab)]
    tokenizer = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True, handle_chinese_chars=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    tokenizer.add_special_tokens(SPECIALS)
    cls, sep = vocab.index("[CLS]"), vocab.index("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    return str(tokenizer.to_str())


def fake_artifact(
    root: Path,
    *,
    mlm: bool = True,
    nsp: bool = True,
    labels: list[str] | None = None,
    normalize: bool = False,
) -> Artifact:
    """An in-memory artifact with one fp32 variant whose head files are never opened."""
    tokenizer_json = fake_tokenizer_json()
    vocab = Tokenizer.from_str(tokenizer_json).get_vocab()
    root.mkdir(parents=True, exist_ok=True)
    (root / "tokenizer.json").write_text(tokenizer_json, encoding="utf-8")
    manifest: dict[str, Any] = {
        "format": 1,
        "name": "fake",
        "model": {"hidden_size": HIDDEN, "vocab_size": len(vocab)},
        "max_seq_len": MAX_SEQ_LEN,
        "special_tokens": {t: vocab[t] for t in SPECIALS},
        "pooling": "mean",
        "normalize": normalize,
        "lowercase": True,
        "tokenizer": "tokenizer.json",
        "files": {},
        "variants": {"fp32": {"precision": "fp32", "encoder": "fake.onnx"}},
    }
    if labels:
        manifest["labels"] = labels
        manifest["problem_type"] = (
            "regression" if len(labels) == 1 else "single_label_classification"
        )
    head = root / "fake.onnx"  # never read: FakeBackend stands in for the sessions
    variant = Variant(
        name="fp32",
        precision="fp32",
        encoder=head,
        mlm_head=head if mlm else None,
        nsp_head=head if nsp else None,
        rejected=False,
        parity={},
        batch_invariant=True,
        classifier_head=head if labels else None,
    )
    return Artifact(root, manifest, {"fp32": variant}, root / "tokenizer.json", tokenizer_json)


class FakeBackend:
    """The `Backend` contract with random fixed weights: hidden = tanh(token + position
    embedding) on real tokens, zero on padding; the heads are small products. Wrap it in
    CountingBackend to count, delay or fail its calls."""

    precision = "fp32"
    batch_invariant = True
    provider = "CPUExecutionProvider"
    workers = 1
    threads_per_call = 1

    def __init__(self, artifact: Artifact, pooler: bool = True, seed: int = 0) -> None:
        variant = artifact.variants["fp32"]
        self.has_pooler = pooler
        self.has_mlm = variant.mlm_head is not None
        self.has_nsp = variant.nsp_head is not None
        self.has_classifier = variant.classifier_head is not None
        rng = np.random.default_rng(seed)
        vocab_size = int(artifact.manifest["model"]["vocab_size"])
        self.tokens = rng.standard_normal((vocab_size, HIDDEN)).astype(np.float32)  # (V, H)
        self.positions = rng.standard_normal((MAX_SEQ_LEN, HIDDEN)).astype(np.float32)  # (T, H)
        self.nsp = rng.standard_normal((HIDDEN, 2)).astype(np.float32)  # (H, 2)
        classes = len(artifact.manifest.get("labels") or [0])
        self.classifier = rng.standard_normal((HIDDEN, classes)).astype(np.float32)  # (H, C)

    def hidden_states(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray | None]:
        length = input_ids.shape[1]
        hidden = np.tanh(self.tokens[input_ids] + self.positions[:length])  # (B, T, H)
        hidden *= attention_mask[..., None]
        pooled = np.tanh(hidden[:, 0]) if self.has_pooler else None  # (B, H)
        return hidden.astype(np.float32), pooled

    def warm_up(self) -> int:
        ids = np.ones((1, MAX_SEQ_LEN), np.int64)
        self.hidden_states(ids, ids, np.zeros_like(ids))
        return 1

    def mlm_logits(self, hidden: np.ndarray) -> np.ndarray:
        return (hidden @ self.tokens.T).astype(np.float32)  # (n, V)

    def nsp_logits(self, pooled: np.ndarray) -> np.ndarray:
        return (pooled @ self.nsp).astype(np.float32)  # (B, 2)

    def classifier_logits(self, pooled: np.ndarray) -> np.ndarray:
        return (pooled @ self.classifier).astype(np.float32)  # (B, C)


class CountingBackend:
    """Any backend (the real ONNX one, or FakeBackend), counting encoder calls and delaying or
    failing them on request, for the batcher's and the edge's tests."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self._lock = threading.Lock()
        self.calls = 0
        self.fail_next = 0
        self.delay_s = 0.0
        for name in (
            "precision",
            "batch_invariant",
            "provider",
            "has_pooler",
            "has_mlm",
            "has_nsp",
            "has_classifier",
            "workers",
        ):
            setattr(self, name, getattr(inner, name))

    def hidden_states(self, ids: Any, mask: Any, types: Any) -> Any:
        with self._lock:  # model threads may call at once
            self.calls += 1
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.fail_next:
            self.fail_next -= 1
            raise RuntimeError("injected fault")
        return self.inner.hidden_states(ids, mask, types)

    def warm_up(self) -> int:
        self.calls += 1
        return self.inner.warm_up()

    def mlm_logits(self, hidden: Any) -> Any:
        return self.inner.mlm_logits(hidden)

    def nsp_logits(self, pooled: Any) -> Any:
        return self.inner.nsp_logits(pooled)

    def classifier_logits(self, pooled: Any) -> Any:
        return self.inner.classifier_logits(pooled)


def serve_app(
    artifact: Artifact,
    backend: Backend,
    test: Callable[[httpx.AsyncClient, Any], Awaitable[None]],
    **overrides: Any,
) -> None:
    """Runs `test(client, backend)` against the app (lifespan included) over an in-process ASGI
    transport."""
    settings = Settings(model=artifact.root, threads=2, **{"precision": "fp32", **overrides})
    app = create_app(settings, backend, artifact)

    async def main() -> None:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                await test(client, backend)

    asyncio.run(main())


def serve_fake(
    root: Path,
    test: Callable[[httpx.AsyncClient, CountingBackend], Awaitable[None]],
    *,
    mlm: bool = True,
    nsp: bool = True,
    pooler: bool = True,
    labels: list[str] | None = None,
    **overrides: Any,
) -> None:
    """`serve_app` over a fake artifact written under `root` and a counted FakeBackend."""
    artifact = fake_artifact(root, mlm=mlm, nsp=nsp, labels=labels)
    serve_app(artifact, CountingBackend(FakeBackend(artifact, pooler=pooler)), test, **overrides)


def serve_models(
    models: list[tuple[str, Artifact, Backend]],
    test: Callable[[httpx.AsyncClient], Awaitable[None]],
    **overrides: Any,
) -> None:
    """Runs `test(client)` against one app serving several models (name, artifact, backend),
    the first the default, over an in-process ASGI transport."""
    from bertserve.service.models import ServedModel

    served = [ServedModel(name, artifact, backend) for name, artifact, backend in models]
    settings = Settings(
        model=[f"{m.name}={m.artifact.root}" for m in served],
        threads=2,
        **{"precision": "fp32", **overrides},
    )
    app = create_app(settings, models=served)

    async def main() -> None:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                await test(client)

    asyncio.run(main())
