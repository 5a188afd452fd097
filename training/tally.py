"""Running sums of loss and accuracy between log lines, reduced across ranks when logged."""

from __future__ import annotations

import torch
import torch.distributed as dist

from .batches import Batch
from .distributed import Rank
from .model import PreTrainingOutput


class Tally:
    """Sums over the steps since the last log line, kept on the device to avoid syncs."""

    FIELDS = (
        "loss",
        "mlm_loss",
        "nsp_loss",
        "mlm_correct",
        "mlm_count",
        "nsp_correct",
        "nsp_count",
    )

    def __init__(self, device: torch.device) -> None:
        self.sums = torch.zeros(len(self.FIELDS), dtype=torch.float64, device=device)
        self.counts = {"mlm_count": 0, "nsp_count": 0}
        self.tokens = 0
        self.steps = 0

    @torch.no_grad()
    def add(self, out: PreTrainingOutput, batch: Batch, losses: tuple[torch.Tensor, ...]) -> None:
        total, mlm, nsp = (loss.detach().double() for loss in losses)
        mlm_hit = (out.mlm_logits.argmax(-1) == batch.masked_labels).sum()
        if batch.nsp_labels is not None:
            nsp_hit = (out.nsp_logits.argmax(-1) == batch.nsp_labels).sum()
            nsp_n = batch.nsp_labels.numel()
        else:
            nsp_hit, nsp_n = torch.zeros((), device=total.device), 0
        zero = torch.zeros((), dtype=torch.float64, device=total.device)
        # counts known on the host are added there: a tensor built from a Python number on the
        # GPU is a copy that waits for the queued work
        row = torch.stack([total, mlm, nsp, mlm_hit.double(), zero, nsp_hit.double(), zero])
        self.sums += row.to(self.sums.device)
        self.counts["mlm_count"] += batch.masked_labels.numel()
        self.counts["nsp_count"] += nsp_n
        self.tokens += batch.num_tokens

    def summary(self, micro_batches: int, rank: Rank) -> dict[str, float]:
        sums = self.sums.clone()
        for field, count in self.counts.items():
            sums[self.FIELDS.index(field)] += count
        tokens = torch.tensor([float(self.tokens)], dtype=torch.float64, device=sums.device)
        if rank.world > 1:
            packed = torch.cat([sums, tokens]).cpu()
            dist.all_reduce(packed)
            sums, tokens = packed[:-1] / rank.world, packed[-1:]
        values = dict(zip(self.FIELDS, sums.tolist(), strict=True))
        n = max(1, micro_batches)
        return {
            "loss": values["loss"] / n,
            "mlm_loss": values["mlm_loss"] / n,
            "nsp_loss": values["nsp_loss"] / n,
            "mlm_acc": values["mlm_correct"] / max(1.0, values["mlm_count"]),
            "nsp_acc": values["nsp_correct"] / max(1.0, values["nsp_count"]),
            "tokens": float(tokens.item()),
        }
