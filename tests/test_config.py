"""Typed configuration: overrides parse to declared types, bad values give one-line errors."""

from __future__ import annotations

import pytest

from benchmark.config import ConfigError, TrainConfig, apply_overrides, parse_overrides, validate
from benchmark.experiment import resolve


def test_overrides_parse_to_types():
    cfg = apply_overrides(TrainConfig(), parse_overrides(["lr=1e-3", "epochs=7", "grad_clip=none",
                                                           "dtype=float64"]))
    assert cfg.lr == 1e-3 and cfg.epochs == 7 and cfg.grad_clip is None and cfg.dtype == "float64"


@pytest.mark.parametrize("text,value", [("true", True), ("False", False), ("yes", True), ("0", False)])
def test_booleans_are_strict(text, value):
    from benchmark.config import parse_value
    assert parse_value(text, bool, "k") is value


def test_boolean_rejects_other_strings():
    from benchmark.config import parse_value
    with pytest.raises(ConfigError, match="expected a boolean"):
        parse_value("maybe", bool, "method.learnable")


@pytest.mark.parametrize("override,needle", [
    ("train.lr=-1", "train.lr=-1.0: must be > 0"),
    ("train.epochs=two", "train.epochs='two': expected an integer"),
    ("train.optimizer=lbfgs", "train.optimizer='lbfgs': allowed values are adam, adamw, sgd"),
    ("task.clip=soft", "task.clip='soft': allowed values are component, norm"),
    ("nosuchkey=1", "unknown key 'nosuchkey'"),
    ("train.nosuch=1", "unknown key 'train.nosuch'"),
    ("model.hidden=0", "model.hidden=0: must be >= 1"),
])
def test_bad_values_name_key_value_and_allowed(override, needle):
    with pytest.raises(ConfigError) as info:
        resolve("nbody", "egnn", "strict", overrides=[override])
    msg = str(info.value)
    assert needle in msg
    assert "\n" not in msg


def test_bare_key_resolves_to_its_namespace():
    cfg = resolve("nbody", "egnn", "unconstrained", overrides=["lr=1e-3", "hidden=8", "gamma_learnable=true"])
    assert cfg.train.lr == 1e-3 and cfg.model_cfg.hidden == 8 and cfg.method_cfg.gamma_learnable is True


def test_schedule_layers_and_preset():
    base = resolve("nbody", "egnn", "strict")
    assert (base.train.lr, base.train.batch_size, base.train.weight_decay) == (5e-4, 100, 1e-12)
    ace = resolve("nbody", "egnn", "strict", preset="ace")
    assert ace.train.lr == 9e-4 and ace.hash != base.hash
    user = resolve("nbody", "egnn", "strict", preset="ace", overrides=["train.lr=1e-4"])
    assert user.train.lr == 1e-4
    with pytest.raises(ConfigError, match="presets of nbody/egnn are ace"):
        resolve("nbody", "egnn", "strict", preset="nope")


def test_strict_builds_no_branch():
    assert resolve("nbody", "egnn", "strict").model_cfg.branch == "none"
    with pytest.raises(ConfigError, match="uses no branch"):
        resolve("nbody", "egnn", "strict", overrides=["model.branch=mlp"])


def test_hash_depends_on_values_only():
    a = resolve("nbody", "egnn", "strict", overrides=["train.lr=0.001"])
    b = resolve("nbody", "egnn", "strict", overrides={"lr": "1e-3"})
    c = resolve("nbody", "egnn", "strict", overrides=["train.lr=0.002"])
    assert a.hash == b.hash != c.hash


def test_train_size_bounds():
    with pytest.raises(ConfigError, match="train_size=20000: allowed 1..10000"):
        resolve("nbody", "egnn", "strict", train_size=20000)
    with pytest.raises(ConfigError, match="allowed 1..64"):
        resolve("nbody", "egnn", "strict", train_size=100, overrides=["task.num_train=64"])


def test_validate_catches_wrong_type_set_in_code():
    import dataclasses
    bad = dataclasses.replace(TrainConfig(), epochs="3")
    with pytest.raises(ConfigError, match="epochs"):
        validate(bad, prefix="train.")
