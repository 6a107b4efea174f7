"""Running the real command in a subprocess, on tiny configurations, for the fault tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

TINY = ["task.num_train=64", "task.num_valid=32", "task.num_test=32", "model.hidden=16", "model.layers=2",
        "train.batch_size=16", "train.eval_batch_size=64", "train.compile=off"]


def env(**extra: str) -> dict:
    """The environment of a test subprocess: CPU, one thread, this checkout first on the path."""
    out = {**os.environ, "RELAXBENCH_DEVICE": "cpu", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out.update(extra)
    return out


def run_args(results: Path, method: str = "strict", epochs: int = 2, extra=(), seed: int = 0) -> list[str]:
    return ["run", "--task", "nbody", "--backbone", "egnn", "--method", method, "--train-size", "32",
            "--epochs", str(epochs), "--seed", str(seed), "--results", str(results), "--quiet", *TINY,
            "train.eval_every=1", *extra]


def relaxbench(args: list[str], *, timeout: float = 300, cwd: Path | None = None, **env_extra: str):
    """``relaxbench ARGS`` in a fresh process; returns the CompletedProcess (text)."""
    return subprocess.run([sys.executable, "-m", "benchmark", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env(**env_extra), cwd=cwd or REPO)


def popen(args: list[str], **env_extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "benchmark", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env(**env_extra), cwd=REPO)


def files(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).rglob("*") if p.is_file()) if Path(folder).exists() else []


def leftovers(folder: Path) -> list[Path]:
    """Temporary or probe files left behind anywhere under ``folder``."""
    return [p for p in files(folder) if p.name.startswith((".tmp-", ".probe-"))]


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]
