"""A small fixed set of batch shapes for GPU providers.

ONNX Runtime's CUDA provider pays about 45 ms the first time the fp16 encoder meets a new
(batch, length) shape, against 1.6 ms for a shape it has seen (measured on an H200, ORT 1.31,
BERT-base; bench/results/gpu-2026-11-27.json). A dynamic batcher makes almost every batch a new
shape, so served throughput fell to 1% of the raw figure. On CUDA each batch is therefore padded
up to the next bucket (powers of two in batch size, a short ladder of lengths), and every bucket
is run once at start-up. Padded rows and columns are masked and cut off again: no output changes.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

Ints = npt.NDArray[np.int64]

_LENGTHS = (16, 32, 64, 96, 128, 192, 256, 384, 512)


class ShapeBuckets:
    def __init__(self, max_batch_size: int, max_seq_len: int) -> None:
        sizes = [1 << i for i in range(max_batch_size.bit_length()) if 1 << i < max_batch_size]
        self.sizes = [*sizes, max_batch_size]  # (batch rows) 1, 2, 4, ..., max_batch_size
        self.lengths = [n for n in _LENGTHS if n < max_seq_len] + [max_seq_len]

    def shapes(self) -> list[tuple[int, int]]:
        return [(rows, cols) for rows in self.sizes for cols in self.lengths]

    @staticmethod
    def _up(value: int, buckets: list[int]) -> int:
        return next((b for b in buckets if b >= value), value)  # beyond the last: as it is

    def pad(self, input_ids: Ints, attention_mask: Ints, token_type_ids: Ints) -> list[Ints]:
        """(B, T) x3 -> (B', T') x3 with B' >= B, T' >= T the bucket. Added rows attend to
        their first position only, so no row is fully masked."""
        rows, cols = input_ids.shape
        to_rows, to_cols = self._up(rows, self.sizes), self._up(cols, self.lengths)
        if (to_rows, to_cols) == (rows, cols):
            return [input_ids, attention_mask, token_type_ids]
        padded = []
        for array in (input_ids, attention_mask, token_type_ids):
            out = np.zeros((to_rows, to_cols), dtype=np.int64)
            out[:rows, :cols] = array
            padded.append(out)
        padded[1][rows:, 0] = 1
        return padded
