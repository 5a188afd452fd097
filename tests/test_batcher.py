"""The batcher on its own, with stand-in models: admission, the hand-off of one between the
forming loop and the model threads, and the drain at stop."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from bertserve.service.batcher import Batcher, Overloaded, RequestState, RequestTooLarge
from bertserve.service.metrics import Metrics


def make_batcher(model: object, **limits: float) -> Batcher:
    settings: dict[str, float] = {
        "max_batch_tokens": 1024,
        "max_batch_size": 32,
        "max_wait_ms": 1,
        "max_queued_tokens": 100_000,
        "request_timeout_s": 30,
        **limits,
    }
    return Batcher(model, Metrics().of("m"), pad_id=0, **settings)  # type: ignore[arg-type]


class SlowModel:
    """Returns zeros after `seconds`; records, as each call ends, how many calls were handed
    off and not yet started."""

    def __init__(self, seconds: float, workers: int = 1) -> None:
        self.seconds = seconds
        self.workers = workers  # the batcher's model threads, and the calls allowed at once
        self.most_running = 0
        self.handed_off = 0
        self.started = 0
        self.waiting_seen: list[int] = []
        self.calls = 0
        self.running = 0
        self.lock = threading.Lock()

    def hidden_states(
        self, ids: np.ndarray, mask: np.ndarray, types: np.ndarray
    ) -> tuple[np.ndarray, None]:
        with self.lock:
            self.running += 1
            assert self.running <= self.workers, "more model calls at once than workers"
            self.most_running = max(self.most_running, self.running)
        time.sleep(self.seconds)
        # at the end of a call: the loop had the whole call to hand the next one off
        self.waiting_seen.append(self.handed_off - self.started)
        with self.lock:
            self.running -= 1
            self.calls += 1
        return np.zeros((*ids.shape, 4), np.float32), None


@pytest.mark.parametrize("workers", [1, 2])
def test_one_call_waits_behind_the_running_ones_and_stop_drains_every_sequence(workers: int):
    async def main() -> None:
        model = SlowModel(0.02, workers)
        batcher = make_batcher(
            model,
            max_batch_tokens=64,
            max_batch_size=2,
            max_wait_ms=0,
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
        # the next call is formed while the current ones run, never more than one ahead
        assert max(model.waiting_seen) <= 1 and 1 in model.waiting_seen
        assert model.most_running == workers  # every model thread was kept busy

    asyncio.run(main())


def test_admission_refuses_by_estimated_wait_with_that_wait_as_retry_after():
    async def main() -> None:
        batcher = make_batcher(SlowModel(0.0), request_timeout_s=2.0)  # never called
        batcher._admit(500)  # no speed measured yet: only the token cap applies
        batcher._measured(1000, 10.0)  # 100 tokens/s
        batcher._admit(500)  # an empty queue admits even a request that may run long
        batcher.queued_tokens = 450
        with pytest.raises(Overloaded) as refused:
            batcher._admit(100)  # 550 tokens at 100/s = 5.5 s > 2 s
        assert refused.value.retry_after_s == 5  # ceil(450 / 100)
        assert "request_timeout_s 2" in str(refused.value)
        batcher.queued_tokens = 100
        batcher._admit(50)  # 150 tokens = 1.5 s: in time
        with pytest.raises(RequestTooLarge):
            batcher._admit(200_000)

    asyncio.run(main())
