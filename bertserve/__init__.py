"""bertserve: pretrain a BERT encoder, export it to ONNX, serve it over HTTP.

The three stages are the subpackages `bertserve.training`, `bertserve.export` and
`bertserve.service` (folders `training/`, `export/`, `service/` in the repository). This module
imports none of them, so a serve-only install never touches torch.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

try:
    __version__ = version("bertserve")
except PackageNotFoundError:  # a source checkout that was never installed
    __version__ = "0+unknown"

# In a source checkout used without an install (PYTHONPATH=., as bench/gpu_check.sh does), the
# stages sit beside this folder rather than inside it. Installed, they are inside.
_checkout = Path(__file__).resolve().parent.parent
if (_checkout / "pyproject.toml").is_file() and (_checkout / "service" / "cli.py").is_file():
    __path__.append(str(_checkout))
