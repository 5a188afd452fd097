"""Where a process stands among `bert-serve --workers N`: its index and the count."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WorkerPlace:
    index: int  # 0..count-1; a restarted worker keeps its index
    count: int
