"""Bad input is refused before anything is written, with one line naming the key and the value.

Every test runs the real command (``python -m benchmark``) in a subprocess, from a fresh folder,
with its results and data folders inside ``tmp_path``: exit status 2, exactly one line on stderr,
no traceback, and nothing under the results (or data) folder.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import tiny_overrides

ROOT = Path(__file__).resolve().parents[2]


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(RELAXBENCH_DATA=str(tmp_path / "data"), RELAXBENCH_DEVICE="cpu", OMP_NUM_THREADS="1")
    # the project is importable from any working directory
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def _relaxbench(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmark", *args], cwd=tmp_path, env=_env(tmp_path),
                          capture_output=True, text=True, timeout=300)


def _assert_refused(tmp_path: Path, proc: subprocess.CompletedProcess, *needles: str) -> str:
    err = proc.stderr
    assert proc.returncode == 2, (proc.returncode, proc.stdout, err)
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("relaxbench: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    for folder in (tmp_path / "results", tmp_path / "data"):
        assert not folder.exists() or not any(folder.iterdir()), f"{folder} was written to"
    return lines[0]


def _run(tmp_path: Path, *args: str, epochs: str | None = "1") -> subprocess.CompletedProcess:
    """``relaxbench run`` of a tiny strict EGNN run with ``args`` added (flags and key=value)."""
    base = ["run", "--task", "nbody", "--backbone", "egnn", "--method", "strict", "--train-size", "16",
            "--results", str(tmp_path / "results"), "--quiet"]
    if epochs is not None:
        base += ["--epochs", epochs]
    return _relaxbench(tmp_path, *base, *tiny_overrides("nbody", "egnn"), *args)


def _suite(tmp_path: Path, text: str) -> subprocess.CompletedProcess:
    path = tmp_path / "suite.yaml"
    path.write_text(text)
    return _relaxbench(tmp_path, "suite", "run", str(path), "--dry-run", "--results", str(tmp_path / "results"))


SUITE = """\
name: bad
protocol: tiny
grid:
  tasks: [nbody]
  backbones: [egnn]
  methods: [strict]
  train_sizes: [16]
  seeds: {seeds}
overrides: [{overrides}]
{extra}
"""


def _suite_text(seeds="[0]", overrides="", extra="") -> str:
    shared = ", ".join(tiny_overrides("nbody", "egnn") + ([overrides] if overrides else []))
    return SUITE.format(seeds=seeds, overrides=shared, extra=extra)


# -- 1. numbers must be finite ------------------------------------------------------------------
@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "1e999"])
def test_non_finite_float_refused(tmp_path, value):
    _assert_refused(tmp_path, _run(tmp_path, f"train.lr={value}"), f"train.lr='{value}'", "finite number")


def test_non_finite_optional_float_refused(tmp_path):
    _assert_refused(tmp_path, _run(tmp_path, "train.grad_clip=inf"), "train.grad_clip='inf'", "finite")


# -- 2. seeds fit 64 bits -----------------------------------------------------------------------
@pytest.mark.parametrize("seed", [str(2**64), str(2**63)])
def test_seed_beyond_64_bits_refused(tmp_path, seed):
    _assert_refused(tmp_path, _run(tmp_path, "--seed", seed), f"--seed={seed}", "2**63")


def test_suite_seed_beyond_64_bits_refused(tmp_path):
    proc = _suite(tmp_path, _suite_text(seeds=f"[0, {2**64}]"))
    _assert_refused(tmp_path, proc, f"seed={2**64}", "2**63")


def test_largest_seed_accepted(tmp_path):
    from benchmark.experiment import MAX_SEED, resolve
    assert resolve("nbody", "egnn", "strict", seed=MAX_SEED - 1).seed == MAX_SEED - 1


# -- 3. threads ---------------------------------------------------------------------------------
@pytest.mark.parametrize("threads", ["-3", "0"])
def test_bad_threads_refused(tmp_path, threads):
    _assert_refused(tmp_path, _run(tmp_path, "--threads", threads), f"--threads={threads}: must be >= 1")


# -- 4. suite YAML: duplicate keys and malformed text --------------------------------------------
def test_duplicate_top_level_key_refused(tmp_path):
    text = _suite_text(extra="epochs: 2\npreset: null\nepochs: 3")
    line = text.splitlines().index("epochs: 3") + 1
    proc = _suite(tmp_path, text)
    _assert_refused(tmp_path, proc, "suite.yaml", f"line {line}, column 1: duplicate key 'epochs'")


def test_duplicate_nested_key_refused(tmp_path):
    text = _suite_text().replace("  seeds: [0]", "  seeds: [0]\n  seeds: [1]")
    line = text.splitlines().index("  seeds: [1]") + 1
    proc = _suite(tmp_path, text)
    _assert_refused(tmp_path, proc, f"line {line}, column 3: duplicate key 'seeds'")


def test_duplicate_key_in_cell_rule_refused(tmp_path):
    text = _suite_text(extra="cells:\n  - where: {method: strict, method: strict}\n    overrides: []")
    line = text.splitlines().index("  - where: {method: strict, method: strict}") + 1
    proc = _suite(tmp_path, text)
    _assert_refused(tmp_path, proc, f"line {line}, column 29: duplicate key 'method'")


def test_merge_key_may_be_overridden(tmp_path):
    text = _suite_text(extra="wandb:\n  <<: {project: a}\n  project: b")
    proc = _suite(tmp_path, text)
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "results").exists()


def test_malformed_yaml_names_line_and_column(tmp_path):
    text = _suite_text().replace("  tasks: [nbody]", "  tasks: [nbody")
    proc = _suite(tmp_path, text)
    _assert_refused(tmp_path, proc, "suite.yaml: line 5, column 12: not valid YAML")


def test_a_python_tag_in_a_suite_file_is_refused_and_never_runs(tmp_path):
    """Suite files are untrusted bytes: a tag that would build a Python object (and run a shell
    command) is refused by the safe loader, with its line, and nothing runs."""
    marker = tmp_path / "pwned"
    text = _suite_text() + f"description: !!python/object/apply:os.system ['touch {marker}']\n"
    proc = _suite(tmp_path, text)
    _assert_refused(tmp_path, proc, "suite.yaml: line", "not valid YAML", "python/object/apply:os.system")
    assert not marker.exists()


# -- 5. did you mean ----------------------------------------------------------------------------
@pytest.mark.parametrize("override,key,close", [
    ("hiden=32", "'hiden'", "did you mean model.hidden?"),
    ("train.lrr=1", "'train.lrr'", "did you mean train.lr?"),
    ("model.hiden=32", "'model.hiden'", "did you mean model.hidden?"),
    ("trian.lr=1", "'trian.lr'", "did you mean train.lr?"),
])
def test_key_typo_did_you_mean(tmp_path, override, key, close):
    line = _assert_refused(tmp_path, _run(tmp_path, override), f"unknown key {key}", close)
    assert "allowed: " in line


def test_unlike_key_has_no_suggestion(tmp_path):
    line = _assert_refused(tmp_path, _run(tmp_path, "zzzzzz=1"), "unknown key 'zzzzzz'; allowed: ")
    assert "did you mean" not in line


# -- 6. a closed pipe ---------------------------------------------------------------------------
def test_closed_stdout_pipe_exits_quietly(tmp_path):
    """Like ``relaxbench suite run FILE --dry-run | head -1``: the reader goes after one line."""
    # enough output that the writer is still writing when the reader closes: a dry run of 1400 runs
    # (about 80 kB, more than a pipe holds; on Linux the pipe is also shrunk to one page)
    seeds = "[" + ", ".join(map(str, range(200))) + "]"
    path = tmp_path / "suite.yaml"
    path.write_text(_suite_text(seeds=seeds).replace("methods: [strict]", 'methods: "*"'))
    proc = subprocess.Popen([sys.executable, "-m", "benchmark", "suite", "run", str(path), "--dry-run",
                             "--results", str(tmp_path / "results")], cwd=tmp_path, env=_env(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        import fcntl
        fcntl.fcntl(proc.stdout.fileno(), fcntl.F_SETPIPE_SZ, 4096)
    except (ImportError, AttributeError, OSError):
        pass
    first = proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 141, err
    assert first.strip(), "no first line"
    assert "Traceback" not in err and "BrokenPipe" not in err and "Exception ignored" not in err, err
    assert not (tmp_path / "results").exists()


# -- 7. epochs given once -----------------------------------------------------------------------
@pytest.mark.parametrize("override", ["train.epochs=20", "epochs=20"])
def test_epochs_flag_and_override_conflict(tmp_path, override):
    proc = _run(tmp_path, override, epochs="10")
    _assert_refused(tmp_path, proc, f"--epochs=10 conflicts with {override}", "give the number of epochs once")


def test_suite_epochs_and_shared_override_conflict(tmp_path):
    proc = _suite(tmp_path, _suite_text(overrides="train.epochs=20", extra="epochs: 10"))
    line = _assert_refused(tmp_path, proc, "epochs: 10 conflicts with overrides: train.epochs=20")
    assert "--epochs" not in line


def test_suite_epochs_and_cell_override_conflict(tmp_path):
    extra = "epochs: 10\ncells:\n  - where: {method: strict}\n    overrides: [epochs=20]"
    proc = _suite(tmp_path, _suite_text(extra=extra))
    line = _assert_refused(tmp_path, proc, "epochs: 10 conflicts with cells[0].overrides: epochs=20")
    assert "--epochs" not in line


def test_shipped_suites_still_load():
    from benchmark.suite.spec import load_spec, shipped_suites
    for name in shipped_suites():
        assert load_spec(name).runs()
