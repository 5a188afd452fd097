"""The ONNX Runtime backend on its own, below the batcher."""

from __future__ import annotations

import numpy as np

from bertserve.service.artifact import load_artifact
from bertserve.service.backend import OnnxBackend
from bertserve.service.shapes import ShapeBuckets


def test_the_io_binding_path_gives_the_plain_run_outputs(tiny_artifact):
    """On CUDA the encoder runs through an IO binding; the same code runs on CPU here and must
    return what session.run returns."""
    backend = OnnxBackend(load_artifact(tiny_artifact), "cpu", "fp32", 2)
    ids = np.array([[2, 10, 11, 12, 3, 0], [2, 13, 3, 14, 3, 0]], dtype=np.int64)
    mask = (ids != 0).astype(np.int64)
    types = np.zeros_like(ids)
    plain = backend.hidden_states(ids, mask, types)
    backend.io_binding = True
    bound = backend.hidden_states(ids, mask, types)
    for a, b in zip(plain, bound, strict=True):
        assert a is not None and b is not None
        assert a.shape == b.shape and np.array_equal(a, b)


def test_shape_buckets_pad_and_cut_back_without_changing_outputs(tiny_artifact):
    """On CUDA batches are padded to bucket shapes (service/shapes.py); the same code runs on
    CPU here: real rows and positions must come back as they were, in shape and value."""
    backend = OnnxBackend(load_artifact(tiny_artifact), "cpu", "fp32", 2)
    rng = np.random.default_rng(0)
    ids = rng.integers(5, 90, (3, 11)).astype(np.int64)  # (B, T): 3 rows of 11
    mask = np.ones_like(ids)
    mask[1, 7:] = 0
    types = np.zeros_like(ids)
    plain_hidden, plain_pooled = backend.hidden_states(ids, mask, types)
    backend.buckets = ShapeBuckets(max_batch_size=6, max_seq_len=40)  # as OnnxBackend on CUDA
    assert backend.warm_up() == 4 * 3  # rows 1,2,4,6 x 16,32,40
    padded = backend.buckets.pad(ids, mask, types)
    assert [a.shape for a in padded] == [(4, 16)] * 3
    assert padded[1][3].tolist() == [1] + [0] * 15  # an added row attends to one position
    hidden, pooled = backend.hidden_states(ids, mask, types)
    assert hidden.shape == plain_hidden.shape
    assert np.abs(hidden - plain_hidden)[mask.astype(bool)].max() <= 1e-5
    if plain_pooled is not None:
        assert pooled is not None and np.abs(pooled - plain_pooled).max() <= 1e-5
    wide = rng.integers(5, 90, (7, 41)).astype(np.int64)  # beyond the last buckets: as it is
    assert [a.shape for a in backend.buckets.pad(wide, wide, wide)] == [(7, 41)] * 3
