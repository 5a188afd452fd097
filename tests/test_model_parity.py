"""Our BertForPreTraining against transformers', both directions, and padding invariance."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from bertserve.training.checkpoint import load_model, save_model  # noqa: E402
from bertserve.training.config import BertConfig  # noqa: E402
from bertserve.training.model import BertForPreTraining, pretraining_loss  # noqa: E402

TINY = BertConfig(
    vocab_size=120,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=64,
)


def _inputs(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, TINY.vocab_size, (3, 20), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 12:] = 0  # padded rows
    mask[2, 7:] = 0
    ids[mask == 0] = 0
    types = torch.zeros_like(ids)
    types[:, 10:] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def _trained_like(model: torch.nn.Module) -> torch.nn.Module:
    """Random non-trivial values everywhere, LayerNorms and biases included."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def _compare(ours: BertForPreTraining, theirs, inputs) -> None:
    ours.eval()
    theirs.eval()
    with torch.no_grad():
        a = ours(**inputs)
        b = theirs(**inputs)
    real = inputs["attention_mask"].bool()
    assert (a.mlm_logits[real] - b.prediction_logits[real]).abs().max() <= 1e-5
    assert (a.nsp_logits - b.seq_relationship_logits).abs().max() <= 1e-5


def test_our_checkpoint_loads_in_transformers(tmp_path):
    torch.manual_seed(0)
    ours = _trained_like(BertForPreTraining(TINY))
    save_model(ours, tmp_path)
    theirs, info = transformers.BertForPreTraining.from_pretrained(
        tmp_path, output_loading_info=True, attn_implementation="eager"
    )
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    _compare(ours, theirs, _inputs())


def test_transformers_checkpoint_loads_in_ours(tmp_path):
    hf_cfg = transformers.BertConfig(**{k: v for k, v in TINY.__dict__.items()})
    torch.manual_seed(0)
    theirs = _trained_like(transformers.BertForPreTraining(hf_cfg))
    theirs.save_pretrained(tmp_path)
    ours = load_model(tmp_path)
    _compare(ours, theirs, _inputs(3))


def test_outputs_do_not_depend_on_padding_or_batch_company():
    torch.manual_seed(0)
    model = _trained_like(BertForPreTraining(TINY)).eval()
    inputs = _inputs()
    with torch.no_grad():
        batched = model(**inputs)
        for row in range(3):
            length = int(inputs["attention_mask"][row].sum())
            alone = model(**{k: v[row : row + 1, :length] for k, v in inputs.items()})
            diff = (batched.hidden[row, :length] - alone.hidden[0]).abs().max()
            assert diff <= 1e-5, (row, diff)
            assert (batched.nsp_logits[row] - alone.nsp_logits[0]).abs().max() <= 1e-5


def test_full_rows_without_a_mask_match_padded_rows_in_loss_and_gradients():
    """Batches with no padding run with no mask (SDPA's flash kernel on a GPU): the same rows
    padded to a wider batch with a mask must give the same loss and the same gradients."""
    g = torch.Generator().manual_seed(4)
    ids = torch.randint(5, TINY.vocab_size, (2, 16), generator=g)  # (B, T), every slot a token
    types = torch.zeros_like(ids)
    types[:, 9:] = 1
    cols = torch.tensor([2, 5, 11, 3, 14])
    rows = torch.tensor([0, 0, 0, 1, 1])
    labels = torch.randint(5, TINY.vocab_size, (5,), generator=g)
    nsp = torch.tensor([0, 1])

    def loss_and_grads(width: int, with_mask: bool):
        torch.manual_seed(0)
        model = _trained_like(BertForPreTraining(TINY)).eval()  # no dropout: exact comparison
        padded = torch.zeros(2, width, dtype=torch.long)
        padded[:, :16] = ids
        padded_types = torch.zeros_like(padded)
        padded_types[:, :16] = types
        mask = (torch.arange(width) < 16).long().expand(2, width) if with_mask else None
        out = model(padded, mask, padded_types, rows * width + cols)
        loss = pretraining_loss(out, labels, nsp)[0]
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    loss_free, grads_free = loss_and_grads(16, with_mask=False)
    loss_padded, grads_padded = loss_and_grads(24, with_mask=True)
    assert abs(float(loss_free - loss_padded)) <= 1e-6
    for name, grad in grads_free.items():
        assert (grad - grads_padded[name]).abs().max() <= 1e-5, name


def test_masked_positions_gather_equals_full_head():
    torch.manual_seed(0)
    model = _trained_like(BertForPreTraining(TINY)).eval()
    inputs = _inputs()
    positions = torch.tensor([1, 5, 20 + 3, 40 + 6])  # flattened (row * T + col)
    with torch.no_grad():
        full = model(**inputs).mlm_logits.reshape(-1, TINY.vocab_size)
        gathered = model(**inputs, masked_positions=positions).mlm_logits
    assert torch.allclose(full[positions], gathered, atol=1e-6)


def test_worked_example_loss_is_ce_at_masks_plus_nsp(tmp_path):
    """[CLS] calculus is a [MASK] of math [SEP] it [MASK] developed by newton and leibniz [SEP]
    with targets IsNext, 'branch', 'was'."""
    from tokenizers import Tokenizer
    from tokenizers.implementations import BertWordPieceTokenizer

    words = [
        "calculus",
        "is",
        "a",
        "branch",
        "of",
        "math",
        "it",
        "was",
        "developed",
        "by",
        "newton",
        "and",
        "leibniz",
    ]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok: Tokenizer = BertWordPieceTokenizer(str(tmp_path / "vocab.txt"))._tokenizer
    enc = tok.encode("calculus is a [MASK] of math", "it [MASK] developed by newton and leibniz")
    assert enc.tokens == [
        "[CLS]",
        "calculus",
        "is",
        "a",
        "[MASK]",
        "of",
        "math",
        "[SEP]",
        "it",
        "[MASK]",
        "developed",
        "by",
        "newton",
        "and",
        "leibniz",
        "[SEP]",
    ]
    ids = torch.tensor([enc.ids])
    types = torch.tensor([enc.type_ids])
    mask_positions = torch.tensor([4, 9])
    labels = torch.tensor([tok.token_to_id("branch"), tok.token_to_id("was")])
    is_next = torch.tensor([0])

    cfg = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
    )
    torch.manual_seed(0)
    model = _trained_like(BertForPreTraining(cfg)).eval()
    with torch.no_grad():
        out = model(ids, torch.ones_like(ids), types, masked_positions=mask_positions)
        total, mlm, nsp = pretraining_loss(out, labels, is_next)
        full = model(ids, torch.ones_like(ids), types)
        logits = full.mlm_logits[0]  # (T, V)
        expected_mlm = (
            -torch.log_softmax(logits[4], -1)[labels[0]]
            - torch.log_softmax(logits[9], -1)[labels[1]]
        ) / 2
        expected_nsp = -torch.log_softmax(full.nsp_logits[0], -1)[0]
    assert torch.allclose(mlm, expected_mlm, atol=1e-6)
    assert torch.allclose(nsp, expected_nsp, atol=1e-6)
    assert torch.allclose(total, expected_mlm + expected_nsp, atol=1e-6)

    # and transformers computes the same total from the same weights
    save_model(model, tmp_path / "m")
    hf = transformers.BertForPreTraining.from_pretrained(tmp_path / "m").eval()
    hf_labels = torch.full_like(ids, -100)
    hf_labels[0, 4], hf_labels[0, 9] = labels
    with torch.no_grad():
        hf_out = hf(
            input_ids=ids, token_type_ids=types, labels=hf_labels, next_sentence_label=is_next
        )
    assert abs(float(hf_out.loss) - float(total)) <= 1e-5
