"""Shared fixtures: a private data cache, tiny task configurations and a quick run builder.

Tests never read data outside the project: generated data go to a per-session temporary folder
(``RELAXBENCH_DATA``), and the tiny configurations below generate in well under a second.
"""

from __future__ import annotations

import os

import pytest
import torch

# tiny data sets for fast tests: (key=value overrides per task)
TINY_TASK_OVERRIDES = {
    "nbody": ["task.num_train=64", "task.num_valid=32", "task.num_test=32"],
    "nbody-field": ["task.num_train=64", "task.num_valid=32", "task.num_test=32"],
    # the height feature breaks E(3) (task.group): the registry-wide contract runs without it
    "mocap-run": ["task.height=false"],
    "rotmnist": ["task.num_valid=32", "task.num_test=32"],
}
# small backbones keep every registry-parametrised training test fast
TINY_MODEL_OVERRIDES = {
    "egnn": ["model.hidden=16", "model.layers=2", "model.branch_hidden=16"],
    "segnn": ["model.hidden=16", "model.layers=2", "model.branch_hidden=16"],
    "egno": ["model.hidden=16", "model.layers=2", "model.branch_hidden=16"],
    "p4m-cnn": ["model.fields=4,8"],
    "cnn": ["model.channels=8,16"],
}


def tiny_overrides(task: str, backbone: str, extra=()) -> list[str]:
    """Tiny data and model overrides; entries of ``extra`` replace those with the same key."""
    items = (list(TINY_TASK_OVERRIDES.get(task, [])) + list(TINY_MODEL_OVERRIDES.get(backbone, []))
             + ["train.batch_size=16", "train.eval_batch_size=64", "train.compile=off"] + list(extra))
    merged = {}
    for item in items:
        merged[item.split("=", 1)[0]] = item
    return list(merged.values())


@pytest.fixture(scope="session", autouse=True)
def _private_data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("relaxbench-data")
    old = os.environ.get("RELAXBENCH_DATA")
    os.environ["RELAXBENCH_DATA"] = str(root)
    # the numbers the tests pin are CPU numbers; tests that use a GPU ask for it explicitly
    old_device = os.environ.get("RELAXBENCH_DEVICE")
    os.environ["RELAXBENCH_DEVICE"] = "cpu"
    torch.set_num_threads(1)
    yield root
    if old is None:
        os.environ.pop("RELAXBENCH_DATA", None)
    else:
        os.environ["RELAXBENCH_DATA"] = old
    if old_device is None:
        os.environ.pop("RELAXBENCH_DEVICE", None)
    else:
        os.environ["RELAXBENCH_DEVICE"] = old_device


@pytest.fixture
def tiny_config():
    """``tiny_config(method, task="nbody", backbone="egnn", epochs=2, extra=[...], **resolve_kwargs)``."""
    from benchmark.experiment import resolve

    def make(method: str, task: str = "nbody", backbone: str = "egnn", epochs: int = 2, extra=(), **kw):
        kw.setdefault("train_size", 48)
        return resolve(task, backbone, method, overrides=tiny_overrides(task, backbone, extra),
                       epochs=epochs, **kw)
    return make


def interrupted_and_resumed(cfg, tmp_path, stop_at: int = 2) -> tuple[dict, dict]:
    """The record of ``cfg`` trained straight, and that of the same run stopped after the
    evaluation at epoch ``stop_at`` and resumed from its checkpoint."""
    from benchmark.train import RunInterrupted, train
    straight, _ = train(cfg, results=tmp_path / "a", progress=False)

    def stop(epoch, row):
        if epoch == stop_at:
            raise RunInterrupted

    with pytest.raises(RunInterrupted):
        train(cfg, results=tmp_path / "b", progress=False, on_evaluation=stop)
    resumed, _ = train(cfg, results=tmp_path / "b", resume=True, progress=False)
    return straight, resumed
