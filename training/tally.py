"""Running sums of loss and accuracy between log lines, reduced across ranks when logged."""

from __future__ import annotations

import torch
import torch.distributed as dist

from .batches import Batch
from .distributed import Rank
from .model import PreTrainingOutput


class Tally:
    """Sums over the steps since the last log line: losses and hits on the device (no syncs),
    counts the host knows when the batch is built on the host."""

    FIELDS = ("loss", "mlm_loss", "nsp_loss", "mlm_correct", "nsp_correct")  # on the device
    COUNTS = ("mlm_count", "nsp_count", "tokens")  # on the host

    def __init__(self, device: torch.device) -> None:
        self.sums = torch.zeros(len(self.FIELDS), dtype=torch.float64, device=device)
        self.counts = dict.fromkeys(self.COUNTS, 0)

    @torch.no_grad()
    def add(self, out: PreTrainingOutput, batch: Batch, losses: tuple[torch.Tensor, ...]) -> None:
        total, mlm, nsp = (loss.detach().double() for loss in losses)
        mlm_hit = (out.mlm_logits.argmax(-1) == batch.masked_labels).sum()
        if batch.nsp_labels is not None:
            nsp_hit = (out.nsp_logits.argmax(-1) == batch.nsp_labels).sum()
            self.counts["nsp_count"] += batch.nsp_labels.numel()
        else:
            nsp_hit = torch.zeros((), device=total.device)
        row = torch.stack([total, mlm, nsp, mlm_hit.double(), nsp_hit.double()])
        self.sums += row.to(self.sums.device)
        self.counts["mlm_count"] += batch.masked_labels.numel()
        self.counts["tokens"] += batch.num_tokens

    def summary(self, micro_batches: int, rank: Rank) -> dict[str, float]:
        counts = torch.tensor(
            [float(self.counts[name]) for name in self.COUNTS],
            dtype=torch.float64,
            device=self.sums.device,
        )
        packed = torch.cat([self.sums, counts])
        if rank.world > 1:
            dist.all_reduce(packed)  # on the sums' device: NCCL reduces CUDA tensors only
            packed[:3] /= rank.world  # the three losses: the mean over ranks; hits and counts add
        values = dict(zip(self.FIELDS + self.COUNTS, packed.tolist(), strict=True))
        n = max(1, micro_batches)
        return {
            "loss": values["loss"] / n,
            "mlm_loss": values["mlm_loss"] / n,
            "nsp_loss": values["nsp_loss"] / n,
            "mlm_acc": values["mlm_correct"] / max(1.0, values["mlm_count"]),
            "nsp_acc": values["nsp_correct"] / max(1.0, values["nsp_count"]),
            "tokens": values["tokens"],
        }
