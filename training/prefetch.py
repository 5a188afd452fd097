"""Training batches built in a worker process, a few steps ahead of the training loop.

Pairing, masking and padding run in Python at about 6.5k pairs/s: on a GPU that is less than
BERT-base consumes, so the loop would wait on its own data. A forked worker keeps `depth`
batches ready. Every batch travels with the data stream's state *after* it, and `state_dict()`
is the state after the last batch the loop took, so a checkpoint resumes exactly at the next
batch the loop would have used, however far the worker had run ahead.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
from multiprocessing.synchronize import Event
from typing import Any

from .batches import Batch, BatchSource

_POLL_S = 1.0  # how often a waiting loop checks that the worker is still alive


def _produce(source: BatchSource, batch_size: int, out: Any, stop: Event, parent: int) -> None:
    def wanted() -> bool:  # a parent killed with SIGKILL cannot set `stop`: watch for it too
        return not stop.is_set() and os.getppid() == parent

    try:
        while wanted():
            batch = source.next_batch(batch_size)
            item = (batch, source.state_dict())
            while wanted():
                try:
                    out.put(item, timeout=_POLL_S)
                    break
                except queue.Full:
                    continue
    except BaseException as exc:  # any failure goes to the loop, which raises it
        out.put(RuntimeError(f"the batch worker failed: {type(exc).__name__}: {exc}"))
    finally:
        out.cancel_join_thread()  # exit at once even when the loop left batches unread


class PrefetchedBatches:
    """`next_batch` / `state_dict` / `set_max_seq_len` like a BatchSource, from a worker."""

    def __init__(self, source: BatchSource, batch_size: int, depth: int = 8) -> None:
        self.source = source  # the loop's copy: only ever at the last consumed state
        self.batch_size = batch_size
        self.depth = depth
        self.state = source.state_dict()
        self._start()

    @property
    def pairs(self) -> Any:
        return self.source.pairs

    def _start(self) -> None:
        # fork: the worker inherits the token store instead of pickling it; it only runs numpy
        context = mp.get_context("fork")
        self._queue: Any = context.Queue(self.depth)
        self._stop = context.Event()
        self._worker = context.Process(
            target=_produce,
            args=(self.source, self.batch_size, self._queue, self._stop, os.getpid()),
            name="bert-batches",
            daemon=True,
        )
        self._worker.start()

    def next_batch(self, batch_size: int) -> Batch:
        if batch_size != self.batch_size:
            raise ValueError(f"the worker builds batches of {self.batch_size}, not {batch_size}")
        while True:
            try:
                item = self._queue.get(timeout=_POLL_S)
                break
            except queue.Empty:
                if not self._worker.is_alive():
                    raise RuntimeError(
                        f"the batch worker exited (code {self._worker.exitcode})"
                    ) from None
        if isinstance(item, Exception):
            raise item
        batch, self.state = item
        return batch  # type: ignore[no-any-return]

    def state_dict(self) -> dict[str, Any]:
        return self.state  # type: ignore[no-any-return]

    def set_max_seq_len(self, max_seq_len: int) -> None:
        """Restarts the worker from the last consumed state with the new length: batches it
        had built ahead at the old length are dropped, and the stream stays exact."""
        self.close()
        self.source.load_state_dict(self.state)
        self.source.pairs.set_max_seq_len(max_seq_len)
        self._start()

    def close(self) -> None:
        self._stop.set()
        self._worker.join(timeout=5)
        if self._worker.is_alive():
            self._worker.terminate()
            self._worker.join()
        self._queue.close()
        self._queue.cancel_join_thread()
