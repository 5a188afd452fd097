"""Pretraining's learning-rate schedule and sequence-length phases: functions of the step and
the elapsed time alone, so a resumed run repeats them exactly."""

from __future__ import annotations

from .config import TrainConfig


def lr_factor(cfg: TrainConfig, step: int, elapsed: float) -> float:
    """Linear warmup over warmup_steps, then
    linear: linear decay to 0 at max_steps (or, with only a time budget, at its end);
    wsd: constant, then linear decay to 0 over the last decay_fraction of the run, so most of a
    short budget is spent at the peak rate."""
    warm = (step + 1) / max(1, cfg.warmup_steps)
    if cfg.max_steps:
        progress, decay_start = step / cfg.max_steps, cfg.warmup_steps / cfg.max_steps
    elif cfg.time_budget_s:
        progress, decay_start = elapsed / cfg.time_budget_s, 0.0
    else:
        return max(0.0, min(warm, 1.0))
    if cfg.schedule == "wsd":
        decay_start = max(decay_start, 1.0 - cfg.decay_fraction)
    decay = (1.0 - progress) / max(1e-9, 1.0 - decay_start)
    return max(0.0, min(warm, decay, 1.0))


def in_long_phase(cfg: TrainConfig, step: int, elapsed: float) -> bool:
    """True in the last long_fraction of the run (by steps, else by the time budget)."""
    if cfg.max_steps:
        return step >= (1.0 - cfg.long_fraction) * cfg.max_steps
    if cfg.time_budget_s:
        return elapsed >= (1.0 - cfg.long_fraction) * cfg.time_budget_s
    return False
