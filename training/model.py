"""BERT for pretraining, post-LN as in the original (Devlin et al. 2018), in one readable file.

Parameter names follow transformers' `BertForPreTraining`, so `state_dict()` is a Hugging Face
checkpoint as it stands. Attention runs through `F.scaled_dot_product_attention`.

Dimension letters used in the shape comments:
  B = batch, T = sequence length, H = hidden size, nh = heads, hs = head size (H / nh),
  I = intermediate (feed-forward) size, V = vocabulary size, N = number of masked positions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import BertConfig

_ACTIVATIONS = {
    "gelu": F.gelu,
    "relu": F.relu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
}


class BertEmbeddings(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size, cfg.pad_token_id)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)  # (T,)
        x = (
            self.word_embeddings(input_ids)  # (B, T, H)
            + self.position_embeddings(positions)  # (T, H), broadcast over B
            + self.token_type_embeddings(token_type_ids)  # (B, T, H)
        )
        return self.dropout(self.LayerNorm(x))


class BertSelfAttention(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.value = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.dropout_p = cfg.attention_probs_dropout_prob
        # ONNX export sets this False: three projections and the explicit
        # softmax(QK^T/sqrt(d) + mask)V graph are the pattern onnxruntime.transformers fuses
        # into its Attention kernel.
        self.use_sdpa = True

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        """x: (B, T, H) float; keep: (B, 1, 1, T) bool, True where a key may be attended, or
        None when no position is padding (SDPA may then pick its flash kernel)."""
        B, T, H = x.shape
        hs = H // self.num_heads
        if not self.use_sdpa:
            q, k, v = (
                proj(x).view(B, T, self.num_heads, hs).transpose(1, 2)  # (B, nh, T, hs)
                for proj in (self.query, self.key, self.value)
            )
            scores = q @ k.transpose(-1, -2) / math.sqrt(hs)  # (B, nh, T, T)
            if keep is not None:
                scores = scores + (1.0 - keep.to(q.dtype)) * -10000.0  # HF's additive mask
            y = scores.softmax(-1) @ v  # (B, nh, T, hs)
            return y.transpose(1, 2).reshape(B, T, H)
        # one (H, 3H) GEMM instead of three; the parameters keep Hugging Face's names, and the
        # concatenation is a (3H, H) copy, small beside the (B*T, H) x (H, 3H) product
        weight = torch.cat([self.query.weight, self.key.weight, self.value.weight])  # (3H, H)
        bias = torch.cat([self.query.bias, self.key.bias, self.value.bias])  # (3H,)
        qkv = F.linear(x, weight, bias).view(B, T, 3, self.num_heads, hs)  # (B, T, 3, nh, hs)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, nh, T, hs)
        dropout = self.dropout_p if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, dropout_p=dropout)
        return y.transpose(1, 2).reshape(B, T, H)  # (B, T, H)


class BertSelfOutput(nn.Module):
    """Projection, dropout, residual, then LayerNorm: the post-LN order of the original."""

    def __init__(self, cfg: BertConfig, in_size: int) -> None:
        super().__init__()
        self.dense = nn.Linear(in_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class BertAttention(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.self = BertSelfAttention(cfg)
        self.output = BertSelfOutput(cfg, cfg.hidden_size)

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        return self.output(self.self(x, keep), x)


class BertIntermediate(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.act = _ACTIVATIONS[cfg.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(x))  # (B, T, I)


class BertLayer(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.attention = BertAttention(cfg)
        self.intermediate = BertIntermediate(cfg)
        self.output = BertSelfOutput(cfg, cfg.intermediate_size)

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        x = self.attention(x, keep)
        return self.output(self.intermediate(x), x)  # (B, T, H)


class BertEncoder(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(cfg) for _ in range(cfg.num_hidden_layers))

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        for layer in self.layer:
            x = layer(x, keep)
        return x


class BertPooler(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(hidden[:, 0]))  # (B, H) from the [CLS] position


class BertModel(nn.Module):
    """The encoder: embeddings, N post-LN transformer layers, and the [CLS] pooler."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.embeddings = BertEmbeddings(cfg)
        self.encoder = BertEncoder(cfg)
        self.pooler = BertPooler(cfg)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """input_ids, attention_mask, token_type_ids: (B, T) int; attention_mask None = no
        padding. Returns (B, T, H), (B, H)."""
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        # no mask at all when nothing is padding: SDPA's flash kernel takes no mask
        keep = None if attention_mask is None else attention_mask.bool()[:, None, None, :]
        hidden = self.encoder(self.embeddings(input_ids, token_type_ids), keep)  # (B, T, H)
        return hidden, self.pooler(hidden)


class BertPredictionHeadTransform(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.act = _ACTIVATIONS[cfg.hidden_act]
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.act(self.dense(x)))


class BertLMPredictionHead(nn.Module):
    """Transform, then a decoder that shares its weight with the word embeddings, plus a bias."""

    def __init__(self, cfg: BertConfig, word_embeddings: nn.Embedding) -> None:
        super().__init__()
        self.transform = BertPredictionHeadTransform(cfg)
        self.word_embeddings = [word_embeddings]  # a list, so it is not registered twice
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        decoder = self.word_embeddings[0].weight  # (V, H), tied
        return F.linear(self.transform(x), decoder, self.bias)  # (N, V)


class BertPreTrainingHeads(nn.Module):
    def __init__(self, cfg: BertConfig, word_embeddings: nn.Embedding) -> None:
        super().__init__()
        self.predictions = BertLMPredictionHead(cfg, word_embeddings)
        self.seq_relationship = nn.Linear(cfg.hidden_size, 2)


@dataclass
class PreTrainingOutput:
    mlm_logits: torch.Tensor  # (N, V) at the gathered positions, or (B, T, V) when none given
    nsp_logits: torch.Tensor  # (B, 2); index 0 = IsNext, 1 = NotNext (as HF and the original)
    hidden: torch.Tensor  # (B, T, H)


class BertForPreTraining(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.config = cfg
        self.bert = BertModel(cfg)
        self.cls = BertPreTrainingHeads(cfg, self.bert.embeddings.word_embeddings)
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        """Truncated-free normal(0, 0.02) as BERT's TF code and HF use; LayerNorm to identity."""
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=std)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=std)
            if module.padding_idx is not None:
                module.weight.data[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        masked_positions: torch.Tensor | None = None,
    ) -> PreTrainingOutput:
        """masked_positions: (N,) int indices into the flattened (B*T) tokens. When given, the
        MLM head runs only there, which saves the (B*T, H) x (H, V) matmul that dominates
        small models; when None it runs on every token (HF's behaviour)."""
        hidden, pooled = self.bert(input_ids, attention_mask, token_type_ids)
        if masked_positions is not None:
            selected = hidden.reshape(-1, hidden.shape[-1]).index_select(0, masked_positions)
            mlm_logits = self.cls.predictions(selected)  # (N, V)
        else:
            mlm_logits = self.cls.predictions(hidden)  # (B, T, V)
        nsp_logits = self.cls.seq_relationship(pooled)  # (B, 2)
        return PreTrainingOutput(mlm_logits, nsp_logits, hidden)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def pretraining_loss(
    out: PreTrainingOutput, masked_labels: torch.Tensor, nsp_labels: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The original objective: MLM cross-entropy over the masked positions plus NSP
    cross-entropy on [CLS]. masked_labels: (N,) token ids aligned with `masked_positions`;
    nsp_labels: (B,) with 0 = IsNext, 1 = NotNext, or None to train MLM only.
    Returns (total, mlm, nsp), each a scalar; nsp is 0 without labels."""
    mlm = F.cross_entropy(out.mlm_logits.float(), masked_labels)
    if nsp_labels is None:
        nsp = torch.zeros((), device=mlm.device)
    else:
        nsp = F.cross_entropy(out.nsp_logits.float(), nsp_labels)
    return mlm + nsp, mlm, nsp


def flops_per_token(cfg: BertConfig, seq_len: int, masked_fraction: float = 0.15) -> float:
    """Training FLOPs per token (backward = 2x forward), for MFU figures. Counts the matmuls:
    Q, K, V and output projections, the feed-forward, attention scores and the MLM head at the
    masked share of positions."""
    hidden, inter, vocab = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    per_layer = 2 * (4 * hidden * hidden + 2 * hidden * inter) + 2 * 2 * seq_len * hidden
    head = masked_fraction * 2 * (hidden * hidden + hidden * vocab)
    return 3 * (cfg.num_hidden_layers * per_layer + head)
