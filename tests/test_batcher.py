"""The batcher's two loops with a slow stand-in model: a hand-off of one, and a drain at stop."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np

from bertserve.service.batcher import Batcher, RequestState
from bertserve.service.metrics import Metrics


class SlowModel:
    """Returns zeros after `seconds`; records, as each call ends, how many calls were handed
    off and not yet started."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.handed_off = 0
        self.started = 0
        self.waiting_seen: list[int] = []
        self.calls = 0
        self.running = 0
        self.lock = threading.Lock()

    def encode(
        self, ids: np.ndarray, mask: np.ndarray, types: np.ndarray
    ) -> tuple[np.ndarray, None]:
        with self.lock:
            self.running += 1
            assert self.running == 1, "two model calls at once"
        time.sleep(self.seconds)
        # at the end of a call: the loop had the whole call to hand the next one off
        self.waiting_seen.append(self.handed_off - self.started)
        with self.lock:
            self.running -= 1
            self.calls += 1
        return np.zeros((*ids.shape, 4), np.float32), None


def test_one_call_waits_behind_the_running_one_and_stop_drains_every_sequence():
    async def main() -> None:
        model = SlowModel(0.02)
        batcher = Batcher(
            model,  # type: ignore[arg-type]
            Metrics(),
            pad_id=0,
            max_batch_tokens=64,
            max_batch_size=2,
            max_wait_ms=0,
            max_queued_tokens=100_000,
            request_timeout_s=30,
            max_padding_ratio=0.1,
        )
        # count calls handed to the model thread and calls it started
        hand_off, model_call = batcher._hand_off, batcher._model_call

        def counting_hand_off(call: list) -> None:  # type: ignore[type-arg]
            model.handed_off += 1
            hand_off(call)

        def counting_model_call(*args: object) -> None:
            model.started += 1
            model_call(*args)  # type: ignore[arg-type]

        batcher._hand_off = counting_hand_off  # type: ignore[method-assign]
        batcher._model_call = counting_model_call  # type: ignore[method-assign]
        batcher.start()
        rng = np.random.default_rng(0)
        futures, expected = [], []
        for _ in range(12):  # requests of 1-3 sequences of mixed lengths
            lengths = [int(n) for n in rng.integers(3, 20, rng.integers(1, 4))]
            sequences = [(np.ones(n, np.int64), np.zeros(n, np.int64)) for n in lengths]
            futures += batcher.submit(sequences, RequestState())
            expected += lengths
        await asyncio.sleep(0.03)  # some calls have run, most are still queued
        await batcher.stop()
        assert all(f.done() and f.exception() is None for f in futures)
        assert [len(f.result()[0]) for f in futures] == expected  # each its own slice
        assert model.calls >= len(futures) / 2  # at most 2 sequences per call
        # the next call is formed while the current one runs, never more than one ahead
        assert max(model.waiting_seen) <= 1 and 1 in model.waiting_seen

    asyncio.run(main())
