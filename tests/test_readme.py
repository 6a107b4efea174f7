"""The README's worked example of a method is real code: it registers, trains and resumes."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest

from benchmark.registry import METHODS
from benchmark.train import RunInterrupted, train

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture
def example_method(monkeypatch):
    block = re.search(r"```python\n(# baselines/gamma_decay.py.*?)```", README.read_text(), re.S).group(1)
    module = types.ModuleType("readme_gamma_decay")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(block, "README.md", "exec"), module.__dict__)
    yield module
    METHODS.unregister("gamma-decay")


def test_readme_method_trains_and_resumes(example_method, tiny_config, tmp_path):
    assert "gamma-decay" in METHODS.list()
    cfg = tiny_config("gamma-decay", epochs=4, extra=["train.eval_every=2", "method.mu0=0.5"])
    full, _ = train(cfg, results=tmp_path / "full", progress=False)
    assert full["status"] == "completed"
    assert full["diagnostics"]["mu"] == pytest.approx(0.5 * 2 ** 4)
    assert set(full["variants"]) == {"projected", "relaxed"}

    def stop(epoch, row):
        if epoch == 2:
            raise RunInterrupted()
    with pytest.raises(RunInterrupted):
        train(cfg, results=tmp_path / "cut", progress=False, on_evaluation=stop)
    resumed, _ = train(cfg, results=tmp_path / "cut", progress=False)
    assert resumed["variants"] == full["variants"] and resumed["curves"] == full["curves"]
