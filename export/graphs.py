"""Contract 3's graphs, exported from PyTorch with torch.onnx (TorchScript path, opset 17+).

encoder.onnx   input_ids, attention_mask, token_type_ids: int64 [batch, seq]
               -> last_hidden_state [batch, seq, hidden], pooler_output [batch, hidden]
mlm_head.onnx  hidden [n, hidden] -> logits [n, vocab]   (only the masked positions)
nsp_head.onnx  pooled [batch, hidden] -> logits [batch, 2]
classifier.onnx pooled [batch, hidden] -> logits [batch, labels]   (a sequence classifier)
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from bertserve.training.model import BertForPreTraining, BertSelfAttention

OPSET = 17


class EncoderGraph(nn.Module):
    def __init__(self, model: BertForPreTraining, with_pooler: bool) -> None:
        super().__init__()
        self.bert = model.bert
        self.with_pooler = with_pooler

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        hidden, pooled = self.bert(input_ids, attention_mask, token_type_ids)
        return (hidden, pooled) if self.with_pooler else (hidden,)


class MlmHeadGraph(nn.Module):
    def __init__(self, model: BertForPreTraining) -> None:
        super().__init__()
        self.predictions = model.cls.predictions
        self.decoder_weight = nn.Parameter(model.bert.embeddings.word_embeddings.weight.detach())

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        x = self.predictions.transform(hidden)  # (n, H)
        return torch.nn.functional.linear(x, self.decoder_weight, self.predictions.bias)  # (n, V)


class NspHeadGraph(nn.Module):
    def __init__(self, model: BertForPreTraining) -> None:
        super().__init__()
        self.seq_relationship = model.cls.seq_relationship

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.seq_relationship(pooled)  # (B, 2)


def _export(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    path: Path,
    inputs: list[str],
    outputs: list[str],
    axes: dict[str, dict[int, str]],
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation chatter
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=axes,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )


@torch.no_grad()
def export_encoder(model: BertForPreTraining, path: Path, with_pooler: bool) -> None:
    for module in model.modules():
        if isinstance(module, BertSelfAttention):
            module.use_sdpa = False  # the fusable attention pattern (see model.py)
    try:
        ids = torch.tensor([[2, 10, 11, 12, 3, 0], [2, 13, 3, 14, 3, 0]])
        mask = (ids != 0).long()
        types = torch.zeros_like(ids)
        outputs = ["last_hidden_state"] + (["pooler_output"] if with_pooler else [])
        axes = {
            name: {0: "batch", 1: "seq"}
            for name in ("input_ids", "attention_mask", "token_type_ids", "last_hidden_state")
        }
        axes["pooler_output"] = {0: "batch"}
        _export(
            EncoderGraph(model, with_pooler).eval(),
            (ids, mask, types),
            path,
            ["input_ids", "attention_mask", "token_type_ids"],
            outputs,
            axes,
        )
    finally:
        for module in model.modules():
            if isinstance(module, BertSelfAttention):
                module.use_sdpa = True


@torch.no_grad()
def export_mlm_head(model: BertForPreTraining, path: Path) -> None:
    hidden = torch.randn(3, model.config.hidden_size)
    _export(
        MlmHeadGraph(model).eval(),
        (hidden,),
        path,
        ["hidden"],
        ["logits"],
        {"hidden": {0: "n"}, "logits": {0: "n"}},
    )


@torch.no_grad()
def export_classifier_head(head: nn.Linear, path: Path) -> None:
    """BertForSequenceClassification's head: dropout is identity at inference, so the pooled
    output goes straight into the linear layer."""
    pooled = torch.randn(2, head.in_features)
    _export(
        head.eval(),
        (pooled,),
        path,
        ["pooled"],
        ["logits"],
        {"pooled": {0: "batch"}, "logits": {0: "batch"}},
    )


@torch.no_grad()
def export_nsp_head(model: BertForPreTraining, path: Path) -> None:
    pooled = torch.randn(2, model.config.hidden_size)
    _export(
        NspHeadGraph(model).eval(),
        (pooled,),
        path,
        ["pooled"],
        ["logits"],
        {"pooled": {0: "batch"}, "logits": {0: "batch"}},
    )
