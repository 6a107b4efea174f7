"""Where a run's numbers come from: the commit of the code, package versions, the device.

:func:`provenance` is what a record's ``provenance`` holds for the process that finished the run
(its ``segments`` list each process that trained it, see :mod:`benchmark.train`).
"""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path, PurePath
from typing import Any

__all__ = ["code_version", "device_name", "provenance"]


def code_version(where: Path | str | None = None) -> str | None:
    """The commit of the checkout holding this code (or ``where``), or ``None`` outside git.

    ``-dirty`` marks uncommitted changes to tracked files outside the top-level ``results/``
    folder: records, reports and manifests are what runs write, not the code they ran."""
    here = Path(where) if where is not None else Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if out.returncode == 0:
            sha = out.stdout.strip()
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                                    ":(top)", ":(top,exclude)results"],
                                   cwd=here, capture_output=True, text=True, timeout=5).stdout.strip()
            return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return None


_NOW = object()


def device_name(device: Any = None) -> str:
    """``"cpu"`` or the GPU's model name (``None`` means the CPU)."""
    import torch
    device = torch.device(device) if device is not None else torch.device("cpu")
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def portable_command(argv: list[str]) -> list[str]:
    """The command line as a record keeps it: an absolute path (a results root, a data file) is kept
    as its last component, so a record names no folder of the machine it ran on.

    >>> portable_command(["relaxbench", "run", "--results", "/srv/x/results", "--results=/y/r", "seed=1"])
    ['relaxbench', 'run', '--results', 'results', '--results=r', 'seed=1']
    """
    out = []
    for arg in argv:
        head, eq, value = str(arg).partition("=")
        if eq and value.startswith("/") and head.startswith("-"):
            out.append(f"{head}={PurePath(value).name or value}")
        elif str(arg).startswith("/"):
            out.append(PurePath(arg).name or str(arg))
        else:
            out.append(str(arg))
    return out


def provenance(argv: list[str] | None = None, device: Any = None, git_sha: Any = _NOW) -> dict[str, Any]:
    """Git SHA, package versions, device and command line of this process. ``git_sha``: the commit
    read when the run started (the code that ran), else it is read now."""
    import numpy
    import torch
    versions = {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__}
    for name in ("e3nn", "scipy", "escnn"):
        mod = sys.modules.get(name)
        if mod is not None:
            versions[name] = getattr(mod, "__version__", "?")
    try:
        from importlib.metadata import version
        versions["relaxbench"] = version("relaxbench")
    except Exception:
        versions["relaxbench"] = "unknown"
    return {"git_sha": code_version() if git_sha is _NOW else git_sha, "packages": versions,
            "device": device_name(device), "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(terse=True),
            "command": portable_command(list(sys.argv if argv is None else argv))}
