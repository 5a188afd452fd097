"""The three commands against hostile but ordinary input: every refusal is exit 2 (3 for a port
that is taken) with exactly one line on stderr, and changes nothing: a snapshot of every file's
hash in the workspace (inputs, outputs, neighbours) is the same before and after.

The commands run in-process through their `main(argv)` with the process's stderr captured at the
file-descriptor level, so native libraries' messages (ONNX Runtime, torch) would count too.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from bertserve.export.cli import main as export_main
from bertserve.service.cli import main as serve_main
from bertserve.training.cli import main as pretrain_main
from tests.conftest import DATA

Case = Callable[[Path], list[str]]  # builds what it needs in the workspace, returns argv


def snapshot(root: Path) -> dict[str, str]:
    """relative path -> sha256 of a file, 'dir', or 'link:<target>'; permissions included."""
    found: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        key = path.relative_to(root).as_posix()
        if path.is_symlink():
            found[key] = f"link:{os.readlink(path)}"
        elif path.is_dir():
            found[key] = f"dir:{path.stat().st_mode:o}"
        else:
            found[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


@pytest.fixture
def workspace(tmp_path, trained_checkpoint, tiny_artifact) -> Path:
    """ckpt/ (a finished run's files), art/ (an artifact), corpus.txt, notes/ (a user's folder)."""
    shutil.copytree(
        trained_checkpoint, tmp_path / "ckpt", ignore=shutil.ignore_patterns("checkpoint-*")
    )
    shutil.copytree(tiny_artifact, tmp_path / "art")
    shutil.copy(DATA / "english.txt", tmp_path / "corpus.txt")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "notes.txt").write_text("hi\n")
    return tmp_path


def refused(
    main: Callable[[list[str]], int],
    argv: list[str],
    root: Path,
    capfd: pytest.CaptureFixture[str],
    message: str,
    code: int = 2,
) -> None:
    before = snapshot(root)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        status = main(argv)
    finally:
        os.chdir(cwd)
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == code, err
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert ": error: " in lines[0] and message in lines[0], lines[0]
    assert snapshot(root) == before, "a refused command changed files"


# -- bert-export ----------------------------------------------------------------------------------
def _config_edit(**fields: object) -> Case:
    def build(ws: Path) -> list[str]:
        config = json.loads((ws / "ckpt" / "config.json").read_text())
        config.update(fields)
        (ws / "ckpt" / "config.json").write_text(json.dumps(config))
        return ["ckpt", "out"]

    return build


def _file(path: str, content: bytes) -> Case:
    def build(ws: Path) -> list[str]:
        (ws / path).write_bytes(content)
        return ["ckpt", "out"]

    return build


def _malicious_pickle(ws: Path) -> list[str]:
    import pickle

    class Exploit:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, ("touch pwned",))

    (ws / "ckpt" / "model.safetensors").unlink()
    with open(ws / "ckpt" / "pytorch_model.bin", "wb") as handle:
        pickle.dump({"bert.embeddings.word_embeddings.weight": Exploit()}, handle)
    return ["ckpt", "out"]


def _symlink_out(ws: Path) -> list[str]:
    (ws / "link").symlink_to(ws / "art")
    return ["ckpt", "link", "--overwrite"]


def _artifact_with_notes(ws: Path) -> list[str]:
    (ws / "art" / "notes.txt").write_text("mine\n")
    return ["ckpt", "art", "--overwrite"]


EXPORT_CASES: dict[str, tuple[Case, str]] = {
    "out holds a user's files": (lambda ws: ["ckpt", "notes"], "not a bertserve artifact"),
    "out holds a user's files, --overwrite": (
        lambda ws: ["ckpt", "notes", "--overwrite"],
        "not a bertserve artifact",
    ),
    "out is a file": (lambda ws: ["ckpt", "corpus.txt"], "not a folder"),
    "out is the checkpoint": (lambda ws: ["ckpt", "ckpt", "--overwrite"], "folder above it"),
    "out is above the checkpoint": (lambda ws: ["ckpt", ".", "--overwrite"], "folder above it"),
    "out is an artifact, no --overwrite": (lambda ws: ["ckpt", "art"], "--overwrite"),
    "artifact with a user's file": (_artifact_with_notes, "does not list (notes.txt)"),
    "out is a symlink": (_symlink_out, "symbolic link"),
    "zero attention heads": (_config_edit(num_attention_heads=0), "positive integer"),
    "negative positions": (_config_edit(max_position_embeddings=-5), "positive integer"),
    "sizes that do not fit the weights": (_config_edit(hidden_size=64), "do not fit"),
    "heads as a string": (_config_edit(num_attention_heads="2"), "positive integer"),
    "config is an array": (_file("ckpt/config.json", b"[1, 2]"), "not a JSON object"),
    "config is not JSON": (_file("ckpt/config.json", b"{model"), "not readable JSON"),
    "truncated safetensors": (_file("ckpt/model.safetensors", b"\x08\x00"), "unreadable"),
    "malicious pickle": (_malicious_pickle, "weights_only"),
    "missing checkpoint": (lambda ws: ["no-such-dir", "out"], "not a directory"),
    "unknown precision": (lambda ws: ["ckpt", "out", "--precision", "fp8"], "unknown precision"),
    "max-seq-len beyond positions": (
        lambda ws: ["ckpt", "out", "--max-seq-len", "100000"],
        "exceeds",
    ),
    "max-seq-len of 0": (lambda ws: ["ckpt", "out", "--max-seq-len", "0"], "at least 2"),
    "model id not cached, offline": (
        lambda ws: ["nobody/no-such-model", "out"],
        "Hugging Face cache",
    ),
}


@pytest.mark.parametrize("case", list(EXPORT_CASES))
def test_bert_export_refuses(case, workspace, capfd, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(workspace / "hf-home"))
    build, message = EXPORT_CASES[case]
    argv = build(workspace)
    refused(export_main, [*argv, "--no-progress"], workspace, capfd, message)
    assert not (workspace / "pwned").exists()


# -- bert-pretrain --------------------------------------------------------------------------------
def _copied_run_with_state(damage: bytes | None) -> Case:
    def build(ws: Path) -> list[str]:
        state = ws / "ckpt" / "checkpoint-3"
        state.mkdir()
        for name in ("config.json", "model.safetensors", "tokenizer.json", "train_config.json"):
            shutil.copy(ws / "ckpt" / name, state / name)
        (state / "training_state.pt").write_bytes(damage or b"")
        return ["--resume", "ckpt"]

    return build


NEW_RUN = ["--corpus", "corpus.txt", "--out", "run", "--max-steps", "1"]


def _run_with_a_user_file(ws: Path) -> list[str]:
    (ws / "ckpt" / "mine.txt").write_text("x")
    return ["--corpus", "corpus.txt", "--out", "ckpt", "--max-steps", "1", "--overwrite"]


def _one_document(ws: Path) -> list[str]:
    (ws / "one.txt").write_text("a single document " * 50 + "\n")
    return ["--nsp", "--corpus", "one.txt", "--out", "run", "--max-steps", "1"]


PRETRAIN_CASES: dict[str, tuple[Case, str]] = {
    "out holds a user's files": (
        lambda ws: ["--corpus", "corpus.txt", "--out", "notes", "--max-steps", "1"],
        "not a bertserve run (it holds notes.txt)",
    ),
    "out holds a run, no --resume": (
        lambda ws: ["--corpus", "corpus.txt", "--out", "ckpt", "--max-steps", "1"],
        "already holds a run",
    ),
    "out is a file": (
        lambda ws: ["--corpus", "corpus.txt", "--out", "corpus.txt", "--max-steps", "1"],
        "not a folder",
    ),
    "out holds a run and a user's file": (_run_with_a_user_file, "not the run's (mine.txt)"),
    "missing corpus": (
        lambda ws: ["--corpus", "nope.txt", "--out", "run", "--max-steps", "1"],
        "does not exist",
    ),
    "one document with NSP": (_one_document, "at least 2 documents"),
    "truncated training state": (_copied_run_with_state(b"PK\x03\x04trunc"), "damaged"),
    "empty training state": (_copied_run_with_state(None), "damaged"),
    "nothing to resume": (lambda ws: ["--resume", "notes"], "nothing to resume"),
    "model shape on resume": (
        lambda ws: [*_copied_run_with_state(b"x")(ws), "--layers", "3"],
        "cannot change on --resume",
    ),
    "max-seq-len too small": (lambda ws: [*NEW_RUN, "--max-seq-len", "4"], "at least 8"),
    "max-steps of 0": (
        lambda ws: ["--corpus", "corpus.txt", "--out", "run", "--max-steps", "0"],
        "at least 1",
    ),
}


@pytest.mark.parametrize("case", list(PRETRAIN_CASES))
def test_bert_pretrain_refuses(case, workspace, capfd):
    build, message = PRETRAIN_CASES[case]
    argv = build(workspace)
    refused(pretrain_main, [*argv, "--no-progress"], workspace, capfd, message)


# -- bert-serve -----------------------------------------------------------------------------------
def _manifest(ws: Path) -> dict[str, object]:
    return json.loads((ws / "art" / "manifest.json").read_text())


def _write_manifest(ws: Path, manifest: object) -> None:
    (ws / "art" / "manifest.json").write_text(json.dumps(manifest))


def _edit_manifest(edit: Callable[[dict], None]) -> Case:  # type: ignore[type-arg]
    def build(ws: Path) -> list[str]:
        manifest = _manifest(ws)
        edit(manifest)
        _write_manifest(ws, manifest)
        return ["--model", "art"]

    return build


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _outside_file(relative_form: str) -> Case:
    """The tokenizer entry pointed at a file outside the artifact, with its real hash."""

    def build(ws: Path) -> list[str]:
        secret = ws / "secret.json"
        secret.write_text((ws / "art" / "tokenizer.json").read_text())
        name = "../secret.json" if relative_form == "dotdot" else str(secret)
        manifest = _manifest(ws)
        manifest["files"][name] = _sha(secret)  # type: ignore[index]
        manifest["tokenizer"] = name
        _write_manifest(ws, manifest)
        return ["--model", "art"]

    return build


def _symlink_escape(ws: Path) -> list[str]:
    secret = ws / "secret.json"
    secret.write_text((ws / "art" / "tokenizer.json").read_text())
    (ws / "art" / "tokenizer.json").unlink()
    (ws / "art" / "tokenizer.json").symlink_to(secret)
    manifest = _manifest(ws)
    manifest["files"]["tokenizer.json"] = _sha(secret)  # type: ignore[index]
    _write_manifest(ws, manifest)
    return ["--model", "art"]


def _rehashed(relative: str, content: Callable[[bytes], bytes]) -> Case:
    """Replaces a file's bytes and updates its hash, so only parsing can catch it."""

    def build(ws: Path) -> list[str]:
        path = ws / "art" / relative
        path.write_bytes(content(path.read_bytes()))
        manifest = _manifest(ws)
        manifest["files"][relative] = _sha(path)  # type: ignore[index]
        _write_manifest(ws, manifest)
        return ["--model", "art"]

    return build


def _raw_manifest(content: bytes) -> Case:
    def build(ws: Path) -> list[str]:
        (ws / "art" / "manifest.json").write_bytes(content)
        return ["--model", "art"]

    return build


def _tampered(relative: str) -> Case:
    def build(ws: Path) -> list[str]:
        with open(ws / "art" / relative, "ab") as handle:
            handle.write(b" ")
        return ["--model", "art"]

    return build


def _unlisted_tokenizer(ws: Path) -> list[str]:
    shutil.copy(ws / "art" / "tokenizer.json", ws / "art" / "swapped.json")
    manifest = _manifest(ws)
    manifest["tokenizer"] = "swapped.json"
    _write_manifest(ws, manifest)
    return ["--model", "art"]


def _taken_port(ws: Path) -> list[str]:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    _HELD.append(holder)
    return ["--model", "art", "--port", str(holder.getsockname()[1])]


_HELD: list[socket.socket] = []


def _first_variant(edit: Callable[[dict], None]) -> Callable[[dict], None]:  # type: ignore[type-arg]
    return lambda m: edit(m["variants"]["fp32"])


SERVE_CASES: dict[str, tuple[Case, str, int]] = {
    "manifest is an array": (_raw_manifest(b"[1]"), "object", 2),
    "files as a list": (_edit_manifest(lambda m: m.update(files=["a"])), "files", 2),
    "variant as a string": (
        _edit_manifest(lambda m: m["variants"].update(fp32="fp32/encoder.onnx")),
        "variants.fp32",
        2,
    ),
    "max_seq_len as a string": (
        _edit_manifest(lambda m: m.update(max_seq_len="512")),
        "max_seq_len",
        2,
    ),
    "no variants": (_edit_manifest(lambda m: m.update(variants={})), "variants", 2),
    "unknown pooling": (_edit_manifest(lambda m: m.update(pooling="max")), "pooling", 2),
    "non-UTF-8 manifest": (_raw_manifest(b'{"format": 1, "\xff": 2}'), "UTF-8", 2),
    "truncated manifest": (_raw_manifest(b'{"format": 1, "mod'), "not valid", 2),
    "tokenizer not hashed": (_unlisted_tokenizer, "not listed", 2),
    "tokenizer tampered": (_tampered("tokenizer.json"), "sha256", 2),
    "../ path with its real hash": (_outside_file("dotdot"), "not inside the artifact", 2),
    "absolute path with its real hash": (_outside_file("absolute"), "not inside the artifact", 2),
    "symlink leaving the folder": (_symlink_escape, "outside the artifact", 2),
    "encoder outside the files": (
        _edit_manifest(_first_variant(lambda v: v.update(encoder="int8/encoder.onnx.bak"))),
        "not listed",
        2,
    ),
    "truncated ONNX, matching hash": (
        _rehashed("fp32/encoder.onnx", lambda b: b[: len(b) // 3]),
        "not a loadable ONNX graph",
        2,
    ),
    "random ONNX, matching hash": (
        _rehashed("fp32/encoder.onnx", lambda b: os.urandom(4096)),
        "not a loadable ONNX graph",
        2,
    ),
    "corrupt tokenizer, matching hash": (
        _rehashed("tokenizer.json", lambda b: b'{"version": "1.0", "model": 7}'),
        "not a usable tokenizer",
        2,
    ),
    "empty api key": (lambda ws: ["--model", "art", "--api-key", ""], "must not be empty", 2),
    "blank api key": (lambda ws: ["--model", "art", "--api-key", "  "], "must not be empty", 2),
    "missing artifact": (lambda ws: ["--model", "nothing-here"], "does not exist", 2),
    "second of two artifacts missing": (
        lambda ws: ["--model", "a=art", "--model", "b=nothing-here"],
        "model b: ",
        2,
    ),
    "two models of one name": (
        lambda ws: ["--model", "art", "--model", "art"],
        "two models are named",
        2,
    ),
    "artifact is a file": (lambda ws: ["--model", "corpus.txt"], "not a directory", 2),
    "folder without a manifest": (lambda ws: ["--model", "notes"], "no manifest.json", 2),
    "port already in use": (_taken_port, "cannot listen", 3),
}


@pytest.fixture(autouse=True)
def _never_serve(monkeypatch):
    """A case that is wrongly accepted fails here instead of serving forever."""
    import uvicorn

    def started(*args: object, **kwargs: object) -> None:
        raise AssertionError("bert-serve accepted the input and started serving")

    monkeypatch.setattr(uvicorn.Server, "run", started)


@pytest.mark.parametrize("case", list(SERVE_CASES))
def test_bert_serve_refuses(case, workspace, capfd, monkeypatch):
    build, message, code = SERVE_CASES[case]
    argv = build(workspace)
    monkeypatch.delenv("BERTSERVE_API_KEY", raising=False)
    try:
        refused(serve_main, [*argv, "--precision", "fp32"], workspace, capfd, message, code)
    finally:
        while _HELD:
            _HELD.pop().close()


def test_empty_api_key_from_the_environment_is_refused_too(workspace, capfd, monkeypatch):
    monkeypatch.setenv("BERTSERVE_API_KEY", "")
    refused(serve_main, ["--model", "art"], workspace, capfd, "must not be empty")


def test_an_unreadable_artifact_file_is_one_line(workspace, capfd, monkeypatch):
    # as root (CI) nothing is unreadable, so the OS's answer for a non-root user is simulated
    from bertserve.service import artifact

    def denied(path: Path) -> str:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(artifact, "sha256_file", denied)
    refused(serve_main, ["--model", "art"], workspace, capfd, "permission denied")
