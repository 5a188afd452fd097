"""The model behind the batcher: ONNX Runtime sessions for one variant of an artifact.

The contract the batcher and routes rely on is small (`Backend`): run the encoder on a padded
batch, run the MLM head on gathered hidden states, run the NSP head on pooled states. Tests swap
in fakes that honour the same contract.
"""

from __future__ import annotations

import logging
import os
from typing import Protocol

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from bertserve.commands import one_line

from . import heap
from .artifact import Artifact, ArtifactError, Variant
from .settings import Settings
from .shapes import ShapeBuckets

log = logging.getLogger("bertserve")

Ints = npt.NDArray[np.int64]
Floats = npt.NDArray[np.float32]


class Backend(Protocol):
    precision: str
    batch_invariant: bool  # an input's outputs do not depend on the rest of its batch
    provider: str
    has_pooler: bool
    has_mlm: bool
    has_nsp: bool
    has_classifier: bool
    workers: int  # calls that may run at once, each from its own thread
    threads_per_call: int  # ONNX Runtime threads of one call

    def hidden_states(
        self, input_ids: Ints, attention_mask: Ints, token_type_ids: Ints
    ) -> tuple[Floats, Floats | None]:
        """(B, T) int64 x3 -> last_hidden_state (B, T, H) float32, pooler_output (B, H)."""
        ...

    def warm_up(self) -> int:
        """Runs the model before the first request; returns how many shapes it ran."""
        ...

    def mlm_logits(self, hidden: Floats) -> Floats:
        """(n, H) -> (n, V)."""
        ...

    def nsp_logits(self, pooled: Floats) -> Floats:
        """(B, H) -> (B, 2); column 0 is IsNext."""
        ...

    def classifier_logits(self, pooled: Floats) -> Floats:
        """(B, H) -> (B, C), the sequence classifier's logits (C = 1: a regression score)."""
        ...


def choose_variant(
    artifact: Artifact, device: str, precision: str | None, available: list[str]
) -> tuple[Variant, str]:
    """Returns (variant, provider). CUDA + fp16 when a GPU is usable, else CPU + int8, else fp32.
    A rejected variant, or one whose vectors depend on the batch (dynamically quantized int8),
    is only served when asked for by name."""
    cuda_ok = "CUDAExecutionProvider" in available
    if device == "cuda" and not cuda_ok:
        raise ArtifactError(
            "--device cuda: this onnxruntime has no CUDA provider "
            "(install bertserve[gpu] on a machine with a GPU)"
        )
    provider = "CUDAExecutionProvider" if cuda_ok and device != "cpu" else "CPUExecutionProvider"
    if precision is not None:
        if precision not in artifact.variants:
            raise ArtifactError(
                f"the artifact has no {precision} variant (it has {', '.join(artifact.variants)})"
            )
        variant = artifact.variants[precision]
        if variant.rejected:
            log.warning(
                "serving %s although it missed its parity gate: %s", precision, variant.parity
            )
        if not variant.batch_invariant:
            log.warning(
                "serving %s, whose vectors depend on the other inputs in their batch", precision
            )
        return variant, provider
    order = ["fp16", "fp32"] if provider.startswith("CUDA") else ["int8", "fp32"]
    for name in order:
        variant_or_none = artifact.variants.get(name)
        if variant_or_none is None or variant_or_none.rejected:
            continue
        if not variant_or_none.batch_invariant:
            log.info(
                "not serving %s by default: its vectors depend on the batch (re-export with "
                "bert-export's default --quantization, or pass --precision %s)",
                name,
                name,
            )
            continue
        return variant_or_none, provider
    raise ArtifactError("the artifact has no variant that passed its parity gate")


def split_threads(threads: int, workers: int, provider: str) -> tuple[int, int]:
    """-> (workers, ONNX Runtime threads per call). On the CPU the default is one worker per
    core, each call on one thread: a call split over 2 threads waits at every operator for the
    slower one, and the event loop keeps taking one of the 2 cores, so the model ran at about
    the speed of one core whenever the loop worked (served 0.56x raw ORT at 32 clients). Calls
    side by side on one thread each never wait for each other. On CUDA one worker feeds the GPU."""
    cores = threads or len(os.sched_getaffinity(0))
    if workers == 0:
        workers = cores if provider == "CPUExecutionProvider" else 1
    return workers, max(1, cores // workers)


GIVE_BACK_AFTER_TOKENS = 4096  # calls of this many padded tokens hand memory back to the OS


class OnnxBackend:
    def __init__(
        self,
        artifact: Artifact,
        device: str = "auto",
        precision: str | None = None,
        threads: int = 0,
        max_batch_size: int = 64,
        workers: int = 0,
    ) -> None:
        """`max_batch_size`: the most sequences one call gets (the batcher's cap); on CUDA it
        bounds the shape buckets. `threads` are shared by `workers` calls at once (0 each:
        split_threads's defaults)."""
        variant, provider = choose_variant(
            artifact, device, precision, ort.get_available_providers()
        )
        self.precision = variant.precision
        self.batch_invariant = variant.batch_invariant
        self.provider = provider
        self.workers, self.threads_per_call = split_threads(threads, workers, provider)
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads_per_call
        options.log_severity_level = 3
        # ORT's idle workers spin by default; on a small CPU that spinning takes the cores the
        # event loop needs to parse requests and write responses between batches
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # ORT's CPU arena keeps the peak of every call: one (32, 512) call left 2 GiB held for
        # good, and shrinking it after long calls still left 450-800 MiB pinned (a call's
        # outputs are views into the arena). Without it, and with glibc mapping buffers over
        # 4 MiB on their own (heap.py), a call's peak was 20-30% lower and memory goes back
        # when it ends; (32, 512) calls were up to 14% slower, short ones the same (MiniLM int8,
        # measured side by side).
        options.enable_cpu_mem_arena = False
        heap.map_large_buffers()
        providers = (
            [provider] if provider == "CPUExecutionProvider" else [provider, "CPUExecutionProvider"]
        )

        def open_session(path: object) -> ort.InferenceSession:
            try:
                return ort.InferenceSession(str(path), options, providers=providers)
            except Exception as exc:  # ORT raises its own types for an unparsable graph
                reason = one_line(exc, 200)
                raise ArtifactError(f"{path} is not a loadable ONNX graph ({reason})") from exc

        self.encoder = open_session(variant.encoder)
        if self.encoder.get_providers()[0] != provider:
            # ORT falls back to the CPU silently when the CUDA provider's libraries (CUDA,
            # cuBLAS, cuDNN) cannot be loaded: say so, and refuse when CUDA was asked for
            reason = (
                "onnxruntime could not start its CUDA provider (are the CUDA 12/13, cuBLAS and "
                "cuDNN libraries it was built for on LD_LIBRARY_PATH?)"
            )
            if device == "cuda":
                raise ArtifactError(f"--device cuda: {reason}")
            log.warning("%s; serving on the CPU", reason)
            self.provider = provider = "CPUExecutionProvider"
        # on CUDA, inputs and outputs go through an IO binding: ORT copies the (B, T) ids to
        # the device once and the outputs straight into host arrays it allocates
        self.io_binding = provider != "CPUExecutionProvider"
        # on CUDA, batches are padded to a few shapes that warm_up() runs once (see shapes.py)
        self.buckets = (
            ShapeBuckets(max_batch_size, artifact.max_seq_len)
            if provider != "CPUExecutionProvider"
            else None
        )
        outputs = [o.name for o in self.encoder.get_outputs()]
        self.has_pooler = "pooler_output" in outputs
        self.mlm = open_session(variant.mlm_head) if variant.mlm_head else None
        self.nsp = open_session(variant.nsp_head) if variant.nsp_head else None
        self.classifier = open_session(variant.classifier_head) if variant.classifier_head else None
        self.has_mlm = self.mlm is not None
        self.has_nsp = self.nsp is not None and self.has_pooler
        self.has_classifier = self.classifier is not None and self.has_pooler

    @classmethod
    def for_settings(cls, artifact: Artifact, settings: Settings) -> OnnxBackend:
        """The backend `settings` ask for (device, precision, threads, batch cap, workers)."""
        return cls(
            artifact,
            settings.device,
            settings.precision,
            settings.threads,
            settings.max_batch_size,
            settings.model_workers,
        )

    def hidden_states(
        self, input_ids: Ints, attention_mask: Ints, token_type_ids: Ints
    ) -> tuple[Floats, Floats | None]:
        rows, cols = input_ids.shape
        arrays = [input_ids, attention_mask, token_type_ids]
        if self.buckets is not None:
            arrays = self.buckets.pad(*arrays)
        feeds = dict(zip(("input_ids", "attention_mask", "token_type_ids"), arrays, strict=True))
        if self.io_binding:
            outputs = self._run_bound(feeds)
        else:
            outputs = self.encoder.run(None, feeds)
            if rows * cols >= GIVE_BACK_AFTER_TOKENS:
                heap.give_back()  # the call's smaller buffers, in glibc's free lists
        hidden = np.asarray(outputs[0][:rows, :cols], dtype=np.float32)  # (B, T, H)
        pooled = np.asarray(outputs[1][:rows], dtype=np.float32) if len(outputs) > 1 else None
        return hidden, pooled

    def warm_up(self) -> int:
        """Runs the encoder once; with shape buckets, once per bucket. Returns the runs made."""
        shapes = self.buckets.shapes() if self.buckets is not None else [(1, 8)]
        for rows, cols in shapes:
            ids = np.ones((rows, cols), dtype=np.int64)
            self.hidden_states(ids, np.ones_like(ids), np.zeros_like(ids))
        return len(shapes)

    def _run_bound(self, feeds: dict[str, Ints]) -> list[npt.NDArray[np.float32]]:
        binding = self.encoder.io_binding()
        for name, array in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(array))
        for output in self.encoder.get_outputs():
            binding.bind_output(output.name, "cpu")
        self.encoder.run_with_iobinding(binding)
        return list(binding.copy_outputs_to_cpu())

    def mlm_logits(self, hidden: Floats) -> Floats:
        assert self.mlm is not None
        return np.asarray(self.mlm.run(None, {"hidden": hidden})[0], dtype=np.float32)

    def nsp_logits(self, pooled: Floats) -> Floats:
        assert self.nsp is not None
        return np.asarray(self.nsp.run(None, {"pooled": pooled})[0], dtype=np.float32)

    def classifier_logits(self, pooled: Floats) -> Floats:
        assert self.classifier is not None
        return np.asarray(self.classifier.run(None, {"pooled": pooled})[0], dtype=np.float32)
