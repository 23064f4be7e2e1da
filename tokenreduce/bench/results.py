"""The benchmark's results file: rewritten as each measurement finishes, with what produced it.

Every update writes the whole JSON to a temporary file and renames it over the old one, so an
interrupted run leaves a complete, readable file with the measurements that finished (and
``"complete": false``). The header records the machine, the versions of Python, torch,
transformers, NumPy and tokenreduce, the git commit of the tokenreduce source (when it is a git
checkout) and the options.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

import tokenreduce as tr


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except ImportError:
        return None


def source_commit() -> dict[str, Any] | None:
    """``{"commit", "dirty"}`` of the git checkout holding the tokenreduce package, or ``None``."""
    where = Path(tr.__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                                capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(status.strip())}


def environment() -> dict[str, Any]:
    """What the numbers were measured on and with."""
    info: dict[str, Any] = {
        "python": platform.python_version(), "torch": torch.__version__, "transformers": _version("transformers"),
        "numpy": _version("numpy"), "tokenreduce": tr.__version__, "git": source_commit(),
        "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "cpu_threads": torch.get_num_threads(),
    }
    if hasattr(os, "getloadavg"):
        info["load_average_at_start"] = round(os.getloadavg()[0], 2)
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
    return info


class ResultsFile:
    """The results of one run, kept in memory and written to ``path`` (if any) on every change."""

    def __init__(self, path: str | Path | None, header: dict[str, Any]) -> None:
        self.path = Path(path) if path else None
        self.data: dict[str, Any] = {**header, "complete": False}
        self.write()

    def part(self, name: str) -> dict[str, Any]:
        """The mutable section of a benchmark part (``{"runs": [...], "notes": [...]}``)."""
        return self.data.setdefault(name, {"runs": [], "notes": []})

    def update(self, name: str, **fields: Any) -> None:
        """Set fields of a part and write the file."""
        self.part(name).update(fields)
        self.write()

    def finish(self) -> None:
        self.data["complete"] = True
        self.write()

    def write(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(self.path.name + ".partial")
        partial.write_text(json.dumps(self.data, indent=2) + "\n", encoding="utf-8")
        os.replace(partial, self.path)
