"""The command line: listings, a run end to end, and one-line errors that write nothing."""

from __future__ import annotations

import json

import pytest

from benchmark.cli import main
from conftest import TINY_TASK_OVERRIDES


def test_ls_lists_registries(capsys):
    assert main(["ls"]) == 0
    out = capsys.readouterr().out
    assert "nbody" in out and "egnn" in out and "strict" in out
    assert main(["ls", "methods", "str*"]) == 0
    assert capsys.readouterr().out.split()[0] == "strict"


def test_run_end_to_end(tmp_path, capsys):
    args = ["run", "--task", "nbody", "--backbone", "egnn", "--method", "strict", "--train-size", "32",
            "--epochs", "2", "--results", str(tmp_path), "--quiet", "model.hidden=8"] + TINY_TASK_OVERRIDES["nbody"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "nbody/egnn/strict n=32 seed=0: completed" in out
    path = out.strip().splitlines()[-1].split("record: ")[1]
    record = json.loads(open(path).read())
    assert record["provenance"]["command"][:2] == ["relaxbench", "run"]


@pytest.mark.parametrize("args,needle", [
    (["--task", "nbdy"], "unknown task 'nbdy'; did you mean 'nbody'"),
    (["--backbone", "segn"], "unknown backbone 'segn'; did you mean 'segnn'"),
    (["--method", "strct"], "unknown method 'strct'; did you mean 'strict'?"),
    (["--seed", "-1"], "--seed=-1: must be >= 0"),
    (["--seed", "x"], "argument --seed: invalid int value: 'x'"),
    (["--train-size", "0"], "--train-size=0: must be >= 1"),
    (["--train-size", "20000"], "train_size=20000: allowed 1..10000"),
    (["--epochs", "0"], "--epochs=0: must be >= 1"),
    (["train.lr=abc"], "train.lr='abc': expected a number"),
    (["train.lr=0"], "train.lr=0.0: must be > 0"),
    (["lr"], "override 'lr' is not of the form key=value"),
    (["bogus=1"], "unknown key 'bogus'"),
    (["--preset", "nope"], "preset='nope'"),
])
def test_bad_input_one_line_error_no_record(tmp_path, capsys, args, needle):
    base = {"--task": "nbody", "--backbone": "egnn", "--method": "strict"}
    flags = dict(base)
    rest = []
    i = 0
    while i < len(args):
        if args[i].startswith("--"):
            flags[args[i]] = args[i + 1]
            i += 2
        else:
            rest.append(args[i])
            i += 1
    argv = ["run"] + [x for kv in flags.items() for x in kv] + ["--results", str(tmp_path), "--quiet"] + rest
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_results_must_be_a_folder(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert main(["run", "--task", "nbody", "--backbone", "egnn", "--method", "strict", "--results", str(f)]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_data_command_writes_original_layout(tmp_path):
    out = tmp_path / "nb"
    assert main(["data", "nbody", "--out", str(out), "--num-train", "3", "--num-valid", "2", "--num-test", "2",
                 "--quiet"]) == 0
    import numpy as np
    with np.load(out / "train.npz", allow_pickle=False) as z:
        assert z["loc"].shape == (3, 49, 3, 5) and z["loc"].dtype == np.float64
        assert z["edges"].shape == (3, 5, 5) and z["charges"].shape == (3, 5, 1)
