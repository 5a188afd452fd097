"""Dynamic batching: the one owner of the queue.

The trip of a request:
  route -> tokenizer -> `Batcher.submit(sequences)`: admitted only if it can finish before its
  deadline at the measured speed and the queue stays under `max_queued_tokens` (else 429 or
  413), one `Pending` per sequence, each with a future -> the forming loop (`_run`) waits at
  most `max_wait_ms` for company, and `take_batch` (a pure function) picks sequences under the
  padded-token budget and size cap, oldest first and then those closest in length -> the model
  call is handed to the model threads (threads.ModelThreads, shared by every model served)
  through a hand-off of one -> a model thread runs it and posts the outputs back to the event
  loop, where each sequence's slice resolves its future.
The forming loop and the model threads are joined by a hand-off of one (TEI's "prefetch one
batch"): the next call is formed as soon as a model thread has taken the current one, not
earlier (sequences can still join a better batch) and not later (the model never waits for the
event loop: with one call in flight 2 cores were ~13% idle under 32 single-sentence clients).
Each model has its own batcher (queue, admission, forming loop, hand-off of one); the model
threads take the models' calls in turns (ModelThreads), so models share the threads fairly.
One liveness rule (`Pending.live`): a sequence whose request went away or whose deadline
passed is dropped before compute, when batches are formed and again when the model thread
takes its call; one drop path (`_drop`). A backend error fails that call's futures only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from . import heap
from .backend import Backend, Floats
from .metrics import ModelMetrics
from .threads import ModelThreads

log = logging.getLogger("bertserve")
T = TypeVar("T")
IDLE_TRIM_S = 1.0  # an empty queue this long after IDLE_TRIM_TOKENS padded tokens: trim
IDLE_TRIM_TOKENS = 65_536


class Overloaded(Exception):
    """The queue is too full to finish this request in time; refused before any work (429,
    Retry-After: the estimated seconds until the queue ahead of it has drained)."""

    def __init__(self, message: str, retry_after_s: int, model: str = "") -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.model = model


class RequestTooLarge(Exception):
    """One request larger than the whole queue may hold: retrying cannot help (413)."""


class DeadlineExceeded(Exception):
    """A sequence waited longer than request_timeout_s (504)."""


class ModelError(Exception):
    """The backend failed on the batch this sequence was in (500)."""


class ShuttingDown(Exception):
    """The server is draining; new work is refused (503)."""


@dataclass
class RequestState:
    """Shared by a request's sequences, so that cancelling the request skips all of them."""

    cancelled: bool = False


@dataclass(eq=False)  # identity, not value: arrays do not compare as bools
class Pending:
    ids: np.ndarray  # (n,) int64 token ids with [CLS]/[SEP]
    type_ids: np.ndarray  # (n,) int64
    enqueued: float
    deadline: float
    request: RequestState
    future: asyncio.Future[tuple[Floats, Floats | None]] = field(repr=False)

    @property
    def length(self) -> int:
        return len(self.ids)

    def live(self, now: float) -> bool:
        """The one rule: wanted by its request, unanswered, and within its deadline."""
        return not (self.request.cancelled or self.future.done() or now >= self.deadline)


def take_batch(
    queue: Sequence[Pending], max_tokens: int, max_size: int, now: float, lookahead: int = 4
) -> tuple[list[Pending], list[Pending], list[Pending]]:
    """Chooses the next batch. Pure: reads `queue` (arrival order) and returns
    (batch in arrival order, remaining queue in arrival order, dropped entries).

    The oldest live entry always goes first, so nothing starves. Other live entries among the
    next `lookahead * max_size` are added closest-in-length first while the padded size
    (count x longest) stays within `max_tokens` and the count within `max_size`. Cancelled or
    expired entries are dropped. A single sequence longer than the budget still runs alone."""
    dropped = [p for p in queue if not p.live(now)]
    live = [p for p in queue if p.live(now)]
    if not live:
        return [], [], dropped
    anchor = live[0]
    window = live[1 : 1 + lookahead * max_size]
    chosen = {id(anchor)}
    longest, count = anchor.length, 1
    for candidate in sorted(window, key=lambda p: abs(p.length - anchor.length)):
        if count >= max_size:
            break
        new_longest = max(longest, candidate.length)
        if new_longest * (count + 1) > max_tokens:
            continue
        chosen.add(id(candidate))
        longest, count = new_longest, count + 1
    batch = [p for p in live if id(p) in chosen]
    remaining = [p for p in live if id(p) not in chosen]
    return batch, remaining, dropped


def split_by_padding(lengths: Sequence[int], max_padding: float) -> list[list[int]]:
    """Splits one batch into model calls, shortest sequences first, so that no call pads more
    than `max_padding` of its tokens. On CPUs, where compute grows with padded tokens and a
    call of 8 is as efficient as one of 64, this turns padding into saved work. Returns index
    groups into `lengths`; every index appears once."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups: list[list[int]] = []
    current: list[int] = []
    real = 0
    for index in order:
        length = lengths[index]  # the longest so far, since `order` is sorted
        if current and 1 - (real + length) / (length * (len(current) + 1)) > max_padding:
            groups.append(current)
            current, real = [], 0
        current.append(index)
        real += length
    if current:
        groups.append(current)
    return groups


def pad_batch(batch: Sequence[Pending], pad_id: int) -> tuple[np.ndarray, ...]:
    """-> input_ids, attention_mask, token_type_ids, each (B, T) int64."""
    width = max(p.length for p in batch)
    ids = np.full((len(batch), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(batch), width), dtype=np.int64)
    types = np.zeros((len(batch), width), dtype=np.int64)
    for row, p in enumerate(batch):
        ids[row, : p.length] = p.ids
        mask[row, : p.length] = 1
        types[row, : p.length] = p.type_ids
    return ids, mask, types


@dataclass
class _Outcome:
    """What the model thread posts back for one call: outputs, None when every sequence was
    dead by the time it took the call, or the backend's exception."""

    outputs: tuple[Floats, Floats | None] | None = None
    error: Exception | None = None
    real_tokens: int = 0
    seconds: float = 0.0


class Batcher:
    def __init__(
        self,
        backend: Backend,
        metrics: ModelMetrics,
        *,
        pad_id: int,
        max_batch_tokens: int,
        max_batch_size: int,
        max_wait_ms: float,
        max_queued_tokens: int,
        request_timeout_s: float,
        max_padding_ratio: float = 1.0,
        threads: ModelThreads | None = None,
    ) -> None:
        """`threads`: the model threads shared with other models' batchers (default: this
        batcher's own, `backend.workers` of them, stopped with it)."""
        self.backend = backend
        self._owns_threads = threads is None
        self.threads = threads or ModelThreads(backend.workers)
        self.workers = self.threads.workers  # model threads, each running one call at a time
        self.max_padding_ratio = max_padding_ratio
        self.metrics = metrics
        self.pad_id = pad_id
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000
        self.max_queued_tokens = max_queued_tokens
        # measured model speed in real (unpadded) tokens per second; None until a batch ran
        self.tokens_per_s: float | None = None
        self.request_timeout_s = request_timeout_s
        self.queue: list[Pending] = []
        self.queued_tokens = 0
        self.batches_run = 0
        self._wakeup = asyncio.Event()
        self._handoff_free = asyncio.Event()  # set: a model thread took the last call handed off
        self._handoff_free.set()
        self._in_flight = 0  # calls handed off and not yet delivered
        self._delivered = asyncio.Event()  # set whenever no call is in flight
        self._delivered.set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._tokens_since_trim = 0  # padded tokens handed off since memory last went back
        self._idle_trim: asyncio.TimerHandle | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._run(), name="bertserve-batcher")

    @property
    def alive(self) -> bool:
        return self._task is not None and not self._task.done()

    async def stop(self, drain_timeout_s: float = 30.0) -> None:
        """Refuses new work, lets queued sequences finish, then stops the loop."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            try:  # the forming loop ends by itself once the queue is empty
                await asyncio.wait_for(asyncio.shield(self._task), drain_timeout_s)
            except asyncio.TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
        await self._delivered.wait()  # every call handed off has run and been answered
        if self._owns_threads:
            await self.threads.shutdown()
        self._drop(self.queue, ShuttingDown("server is shutting down"))
        self.queue.clear()

    async def run_in_model_thread(self, fn: Callable[..., T], *args: object) -> T:
        """Runs a head on a model thread, so ONNX Runtime is only called from those."""
        return await self.threads.run(fn, *args)

    # -- the request side --------------------------------------------------------------------
    def submit(
        self, sequences: Sequence[tuple[np.ndarray, np.ndarray]], request: RequestState
    ) -> list[asyncio.Future[tuple[Floats, Floats | None]]]:
        """Queues a request's sequences all or nothing; raises Overloaded or ShuttingDown."""
        if self._closing:
            raise ShuttingDown("server is shutting down")
        asked = sum(len(ids) for ids, _ in sequences)
        self._admit(asked)
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        futures = []
        for ids, type_ids in sequences:
            future: asyncio.Future[tuple[Floats, Floats | None]] = loop.create_future()
            self.queue.append(
                Pending(ids, type_ids, now, now + self.request_timeout_s, request, future)
            )
            futures.append(future)
        self.queued_tokens += asked
        self._update_gauges()
        self._wakeup.set()
        return futures

    def cancel(self, request: RequestState) -> None:
        """Drops a gone request's queued sequences now, counted as cancelled: left for the
        forming loop, they held the queue (and its admission budget) until the model thread
        was free (measured 0.65 s). Sequences already in a model call finish."""
        request.cancelled = True
        mine = [p for p in self.queue if p.request is request]
        if not mine:
            return
        self.queue = [p for p in self.queue if p.request is not request]
        self.queued_tokens -= sum(p.length for p in mine)
        self._drop(mine)
        self._update_gauges()

    def precheck(self, at_least: int) -> None:
        """Admission with a lower bound of a request's tokens, before it is tokenized: what
        this refuses, the exact count would refuse too (in a burst of 500 requests the
        tokenizing of refused ones held the event loop for seconds)."""
        if self._closing:
            raise ShuttingDown("server is shutting down")
        self._admit(at_least)

    def _admit(self, asked: int) -> None:
        """Refuses a request that cannot finish before its deadline: by the measured speed
        (tokens/s of recent batches) once there is one, and by max_queued_tokens always."""
        if asked > self.max_queued_tokens:
            raise RequestTooLarge(
                f"request of {asked} tokens exceeds max_queued_tokens {self.max_queued_tokens}; "
                "split it into smaller requests"
            )
        speed = self.tokens_per_s
        drain_s = self.queued_tokens / speed if speed else 1.0
        if self.queued_tokens + asked > self.max_queued_tokens:
            raise Overloaded(
                f"server overloaded: {self.queued_tokens} tokens queued + {asked} asked > "
                f"max_queued_tokens {self.max_queued_tokens}",
                max(1, math.ceil(drain_s)),
                self.metrics.name,
            )
        # an empty queue admits: the request alone may still make it, and if not, 429 would
        # tell the client to retry what can never succeed
        ahead = self.queued_tokens
        if speed and ahead and (ahead + asked) / speed > self.request_timeout_s:
            wait = (self.queued_tokens + asked) / speed
            raise Overloaded(
                f"server overloaded: {self.queued_tokens} tokens queued ahead at ~{speed:.0f} "
                f"tokens/s would take {wait:.1f} s, over request_timeout_s "
                f"{self.request_timeout_s:g}",
                max(1, math.ceil(drain_s)),
                self.metrics.name,
            )

    def _measured(self, tokens: int, seconds: float) -> None:
        """Folds one call's speed into the estimate admission uses (moving average); under
        load every model thread runs a call, so the queue drains `workers` times as fast (an
        overestimate while other models take turns on the threads: admission errs towards
        admitting, and the deadline still drops what waits too long)."""
        if seconds <= 0:
            return
        speed = self.workers * tokens / seconds
        self.tokens_per_s = speed if self.tokens_per_s is None else (
            0.8 * self.tokens_per_s + 0.2 * speed
        )  # fmt: skip

    def _update_gauges(self) -> None:
        self.metrics.queue_depth.set(len(self.queue))
        self.metrics.queue_tokens.set(self.queued_tokens)

    def _drop(self, pendings: Sequence[Pending], reason: Exception | None = None) -> None:
        """The one drop path: fails sequences that will not be computed. Without `reason`,
        each is dropped for what made it dead: a cancelled request or a passed deadline."""
        for p in pendings:
            if p.request.cancelled:  # its future may be cancelled already, by the request
                self.metrics.rejected("cancelled")
                p.future.cancel()
            elif p.future.done():
                continue
            elif reason is not None:
                p.future.set_exception(reason)
            else:
                self.metrics.rejected("deadline")
                p.future.set_exception(
                    DeadlineExceeded(
                        f"queued longer than request_timeout_s ({self.request_timeout_s:g}s)"
                    )
                )

    # -- the forming loop (event loop) -------------------------------------------------------
    def _batch_is_full(self) -> bool:
        return len(self.queue) >= self.max_batch_size or self.queued_tokens >= self.max_batch_tokens

    async def _run(self) -> None:
        while not (self._closing and not self.queue):
            await self._wakeup.wait()
            self._wakeup.clear()
            while self.queue:
                # wait for company, at most max_wait_ms after the oldest arrived
                wait = self.queue[0].enqueued + self.max_wait_s - time.monotonic()
                if wait > 0 and not self._batch_is_full() and not self._closing:
                    try:
                        await asyncio.wait_for(self._wakeup.wait(), timeout=wait)
                        self._wakeup.clear()
                        continue
                    except asyncio.TimeoutError:
                        pass
                # form the batch as late as possible: once the model thread can take it next
                await self._handoff_free.wait()
                if not self.queue:  # a gone request's sequences left while we waited
                    continue
                now = time.monotonic()
                batch, self.queue, dropped = take_batch(
                    self.queue, self.max_batch_tokens, self.max_batch_size, now
                )
                self.queued_tokens -= sum(p.length for p in (*batch, *dropped))
                self._drop(dropped)
                self._update_gauges()
                for p in batch:
                    self.metrics.queue_duration.observe(now - p.enqueued)
                groups = split_by_padding([p.length for p in batch], self.max_padding_ratio)
                for number, group in enumerate(groups):
                    if number:
                        await self._handoff_free.wait()
                    self._hand_off([batch[i] for i in group])
            self._trim_when_idle()

    def _trim_when_idle(self) -> None:
        """Once the queue has stayed empty for IDLE_TRIM_S after much work, free memory goes
        back to the OS (heap.py): after a burst of 500 requests x 64 sentences the server held
        697 MiB (197 at start) a minute later, since small calls never trim."""
        if self._idle_trim is not None:
            self._idle_trim.cancel()
        if self._tokens_since_trim < IDLE_TRIM_TOKENS or self._loop is None:
            return

        def trim() -> None:
            if not self.queue and not self._closing:
                self._tokens_since_trim = 0
                self.threads.submit(heap.give_back)

        self._idle_trim = self._loop.call_later(IDLE_TRIM_S, trim)

    def _hand_off(self, call: list[Pending]) -> None:
        ids, mask, types = pad_batch(call, self.pad_id)
        real = int(mask.sum())
        self.metrics.batch_size.observe(len(call))
        self.metrics.batch_tokens.observe(ids.size)
        self.metrics.batch_padding_ratio.observe(1.0 - real / ids.size)
        self._handoff_free.clear()
        self._tokens_since_trim += ids.size
        self._in_flight += 1
        self._delivered.clear()
        self.threads.hand_off(self, self._model_call, call, ids, mask, types, real)

    # -- the model thread --------------------------------------------------------------------
    def _model_call(
        self, call: list[Pending], ids: np.ndarray, mask: np.ndarray, types: np.ndarray, real: int
    ) -> None:
        loop = self._loop
        assert loop is not None
        loop.call_soon_threadsafe(self._handoff_free.set)  # taken: form the next one now
        outcome = _Outcome(real_tokens=real)
        if any(p.live(time.monotonic()) for p in call):
            started = time.perf_counter()
            try:
                outcome.outputs = self.backend.hidden_states(ids, mask, types)
            except Exception as exc:  # the model failed: this call's requests fail, not the loop
                outcome.error = exc
            outcome.seconds = time.perf_counter() - started  # model time, not the wait
        loop.call_soon_threadsafe(self._deliver, call, outcome)

    # -- back on the event loop --------------------------------------------------------------
    def _deliver(self, call: list[Pending], outcome: _Outcome) -> None:
        self.batches_run += 1
        self._in_flight -= 1
        if not self._in_flight:
            self._delivered.set()
        if outcome.error is not None:
            log.error("model error on a batch of %d sequences", len(call), exc_info=outcome.error)
            self._drop(call, ModelError(f"model error: {outcome.error}"))
            return
        if outcome.outputs is None:  # every sequence died while the call waited
            self._drop(call)
            return
        self.metrics.inference_duration.observe(outcome.seconds)
        self._measured(outcome.real_tokens, outcome.seconds)
        hidden, pooled = outcome.outputs
        for row, p in enumerate(call):
            if not p.future.done():
                p.future.set_result(
                    (hidden[row, : p.length], None if pooled is None else pooled[row])
                )
