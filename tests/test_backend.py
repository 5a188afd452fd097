"""The ONNX Runtime backend on its own, below the batcher."""

from __future__ import annotations

import numpy as np

from bertserve.service.artifact import load_artifact
from bertserve.service.backend import OnnxBackend


def test_the_io_binding_path_gives_the_plain_run_outputs(tiny_artifact):
    """On CUDA the encoder runs through an IO binding; the same code runs on CPU here and must
    return what session.run returns."""
    backend = OnnxBackend(load_artifact(tiny_artifact), "cpu", "fp32", 2)
    ids = np.array([[2, 10, 11, 12, 3, 0], [2, 13, 3, 14, 3, 0]], dtype=np.int64)
    mask = (ids != 0).astype(np.int64)
    types = np.zeros_like(ids)
    plain = backend.encode(ids, mask, types)
    backend.io_binding = True
    bound = backend.encode(ids, mask, types)
    for a, b in zip(plain, bound, strict=True):
        assert a is not None and b is not None
        assert a.shape == b.shape and np.array_equal(a, b)
