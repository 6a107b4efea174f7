"""Registry guarantees: duplicates raise, unknown names suggest, wildcards list, entry points load."""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass
from importlib import metadata

import pytest

from benchmark.registry import BACKBONES, METHODS, TASKS, DuplicateNameError, Registry, UnknownNameError


def test_duplicate_name_raises():
    reg = Registry("widget")

    @reg.register("a")
    class A:
        pass

    with pytest.raises(DuplicateNameError, match="already registered"):
        @reg.register("a")
        class B:
            pass


def test_unknown_name_suggests_and_lists():
    reg = Registry("widget")
    for name in ("ace-eq", "ace-elastic", "remul"):
        reg.add(name, object())
    with pytest.raises(UnknownNameError) as info:
        reg.get("ace-equ")
    msg = str(info.value)
    assert "did you mean 'ace-eq'" in msg
    assert "ace-elastic, ace-eq, remul" in msg


def test_wildcard_listing():
    reg = Registry("widget")
    for name in ("ace-eq", "ace-elastic", "remul", "strict"):
        reg.add(name, object())
    assert reg.list("ace-*") == ["ace-elastic", "ace-eq"]
    assert reg.list("*e*") == ["ace-elastic", "ace-eq", "remul"]
    assert reg.list() == sorted(reg.list())


def test_config_must_be_frozen_dataclass():
    reg = Registry("widget")

    @dataclass
    class Loose:
        x: int = 1

    with pytest.raises(TypeError, match="frozen"):
        reg.register("w", config=Loose)


def test_entry_point_discovery(monkeypatch):
    module = types.ModuleType("fake_plugin_methods")

    class PluginMethod:
        """A method living in another package."""

    module.PluginMethod = PluginMethod
    monkeypatch.setitem(sys.modules, "fake_plugin_methods", module)
    ep = metadata.EntryPoint(name="plugin-method", value="fake_plugin_methods:PluginMethod",
                             group="relaxbench.test-plugins")

    def fake_entry_points(group=None):
        return [ep] if group == "relaxbench.test-plugins" else []

    monkeypatch.setattr(metadata, "entry_points", fake_entry_points)
    reg = Registry("method", entry_point_group="relaxbench.test-plugins")
    assert reg.list() == ["plugin-method"]
    assert reg.get("plugin-method").obj is PluginMethod


def test_builtin_registries_are_populated():
    assert "nbody" in TASKS.list()
    assert "egnn" in BACKBONES.list()
    assert {"strict", "unconstrained"} <= set(METHODS.list())


def test_registries_refuse_what_does_not_subclass_their_base():
    """What the harness reads is declared on the base classes, so the registries check it."""
    from benchmark.method import Method
    from benchmark.registry import BACKBONES, METHODS, TASKS
    for registry, what in ((METHODS, "Method"), (BACKBONES, "HomotopyModel"), (TASKS, "Task")):
        with pytest.raises(TypeError, match=f"must be a subclass of .*{what}"):
            registry.register("not-a-subclass")(type("Plain", (), {}))
        assert "not-a-subclass" not in registry

    class UnknownVariant(Method):
        variants = ("projected", "smoothed")
    with pytest.raises(TypeError, match="variants=.*smoothed"):
        METHODS.register("unknown-variant")(UnknownVariant)

    class Repeated(Method):
        variants = ("relaxed", "relaxed")
    with pytest.raises(TypeError, match="distinct"):
        METHODS.register("repeated-variant")(Repeated)
    assert "unknown-variant" not in METHODS and "repeated-variant" not in METHODS


def test_every_registered_entry_keeps_its_declared_contract():
    from benchmark.method import VARIANTS
    from benchmark.registry import BACKBONES, METHODS, TASKS
    for name in METHODS.list():
        cls = METHODS.get(name).obj
        assert set(cls.variants) <= set(VARIANTS) and isinstance(cls.compile_safe, bool)
        assert isinstance(cls.uses_branch, bool)
    for name in BACKBONES.list():
        assert set(BACKBONES.get(name).obj.tasks) <= set(TASKS.list()) | {"*"}
