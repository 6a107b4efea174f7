"""Suite specifications: a YAML file describing a grid of benchmark runs.

A specification is read with YAML's safe loader (a key given twice in one mapping is an error, not
the last one silently winning) and checked before anything runs. Its keys::

    name: quick                      # the suite's name (default: the file's stem)
    protocol: "nbody 1000/500/500, egnn h32, 30 epochs"   # the label printed under every table
    description: "..."               # optional free text
    grid:                            # or a list of such mappings: the union of their runs
      tasks: [nbody]
      backbones: [egnn]
      methods: "*"                   # names or shell-style patterns; "*" is every registered method
      train_sizes: [500]
      seeds: [0, 1, 2]
      task_settings: {eps: [0.0, 0.1]}   # optional: a grid over task settings (task.eps=...), each
                                     # combination its own cell
    overrides: [train.eval_every=5]  # key=value for every run, as on the command line
    epochs: 30                       # optional shorthand for train.epochs (not both)
    preset: null                     # optional named preset of the task/backbone
    cells:                           # optional per-cell overrides, applied after the shared ones
      - where: {method: "ace-*"}     # keys: task, backbone, method, train_size, seed (value or list)
        overrides: [method.dual_lr=1e-3]
      - where: {method: lie-anneal}  # a cell may follow another paper's protocol: its preset
        preset: cr                   # replaces the suite's for the cells it matches (the last match wins)
    headline: declared               # or {method: variant}: the variant each method is ranked by
    reference: strict                # the method the significance tests compare against
    wandb: {project: relaxbench}     # optional
    executor: {partition: gpu, time: 60, cpus: 2, gpus: 0, mem: 8}   # optional, for slurm

Every error names the file, the key and what is allowed.
"""

from __future__ import annotations

import fnmatch
import itertools
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import yaml

from benchmark.config import ConfigError
from benchmark.experiment import RunConfig, resolve
from benchmark.registry import BACKBONES, METHODS, TASKS, UnknownNameError

__all__ = ["Spec", "SpecError", "PlannedRun", "Cell", "RunArgs", "load_spec", "shipped_suites",
           "parse_spec", "EXECUTOR_KEYS"]

TOP_KEYS = ("name", "protocol", "description", "grid", "overrides", "epochs", "preset", "cells",
            "headline", "reference", "wandb", "executor")
GRID_KEYS = ("tasks", "backbones", "methods", "train_sizes", "seeds")
OPTIONAL_GRID_KEYS = ("task_settings",)
WHERE_KEYS = ("task", "backbone", "method", "train_size", "seed")
EXECUTOR_KEYS = ("partition", "time", "cpus", "gpus", "mem", "array_parallelism", "account", "qos",
                 "constraint")


class SpecError(ConfigError):
    """A suite specification that cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class Cell:
    """One row of a suite's tables: everything but the seed. ``task_settings``: the values of the
    task settings a grid varies (``(("eps", 0.1),)``), empty where it varies none."""

    task: str
    backbone: str
    method: str
    train_size: int
    task_settings: tuple[tuple[str, Any], ...] = ()

    @property
    def task_label(self) -> str:
        """The task with the settings of the cell: ``nbody-field[eps=0.1]``."""
        if not self.task_settings:
            return self.task
        return f"{self.task}[{','.join(f'{k}={v}' for k, v in self.task_settings)}]"

    def setting_overrides(self) -> list[str]:
        return [f"task.{k}={v}" for k, v in self.task_settings]

    def label(self) -> str:
        return f"{self.task_label}/{self.backbone}/{self.method}/n{self.train_size}"


@dataclass(frozen=True)
class RunArgs:
    """The picklable arguments that rebuild a run's configuration in another process."""

    task: str
    backbone: str
    method: str
    seed: int
    train_size: int
    overrides: tuple[str, ...]
    preset: str | None
    epochs: int | None
    hash: str

    def resolve(self) -> RunConfig:
        cfg = resolve(self.task, self.backbone, self.method, seed=self.seed, train_size=self.train_size,
                      overrides=list(self.overrides), preset=self.preset, epochs=self.epochs)
        if cfg.hash != self.hash:
            raise RuntimeError(f"{cfg.run_id}: configuration hash {cfg.hash} differs from the planned "
                               f"{self.hash}; the code or registry changed between planning and running")
        return cfg


@dataclass(frozen=True)
class PlannedRun:
    cell: Cell
    seed: int
    cfg: RunConfig
    args: RunArgs

    @property
    def run_id(self) -> str:
        return self.cfg.run_id


@dataclass
class Spec:
    """A validated suite specification."""

    name: str
    protocol: str
    source: str                      # a shipped suite's name or the file's path
    path: Path
    tasks: list[str]
    backbones: list[str]
    methods: list[str]
    train_sizes: list[int]
    seeds: list[int]
    overrides: list[str] = field(default_factory=list)
    epochs: int | None = None
    preset: str | None = None
    cells: list[dict] = field(default_factory=list)
    headline: dict[str, str] = field(default_factory=dict)
    reference: str = "strict"
    description: str = ""
    wandb: dict = field(default_factory=dict)
    executor: dict = field(default_factory=dict)
    raw: dict = field(default_factory=dict)
    # a spec's grid may be a list of grids: their union, each with its own seeds
    grids: list[dict] = field(default_factory=list)
    # the grid over task settings (setting -> values) of a single grid
    task_settings: dict[str, list] = field(default_factory=dict)

    # -- grid -----------------------------------------------------------------------------------
    def _grids(self) -> list[dict]:
        return self.grids or [{"tasks": self.tasks, "backbones": self.backbones, "methods": self.methods,
                               "train_sizes": self.train_sizes, "seeds": self.seeds,
                               "task_settings": self.task_settings}]

    def _cells_with_seeds(self) -> list[tuple[Cell, list[int]]]:
        out: dict[Cell, list[int]] = {}
        for g in self._grids():
            settings = g.get("task_settings") or {}
            combos = [tuple(zip(settings, values)) for values in itertools.product(*settings.values())]
            for t, b, m, n, ts in itertools.product(g["tasks"], g["backbones"], g["methods"], g["train_sizes"],
                                                    combos):
                seeds = out.setdefault(Cell(t, b, m, n, ts), [])
                seeds.extend(s for s in g["seeds"] if s not in seeds)
        return list(out.items())

    def grid_cells(self) -> list[Cell]:
        return [cell for cell, _ in self._cells_with_seeds()]

    def overrides_for(self, cell: Cell, seed: int) -> list[str]:
        out = list(self.overrides) + cell.setting_overrides()
        values = {"task": cell.task, "backbone": cell.backbone, "method": cell.method,
                  "train_size": cell.train_size, "seed": seed}
        for rule in self.cells:
            if all(_matches(values[k], v) for k, v in rule["where"].items()):
                out.extend(rule["overrides"])
        return out

    def preset_for(self, cell: Cell, seed: int) -> str | None:
        """The preset of a cell: the suite's, or that of the last ``cells`` rule matching it that names one."""
        values = {"task": cell.task, "backbone": cell.backbone, "method": cell.method,
                  "train_size": cell.train_size, "seed": seed}
        preset = self.preset
        for rule in self.cells:
            if rule.get("preset") is not None and all(_matches(values[k], v) for k, v in rule["where"].items()):
                preset = rule["preset"]
        return preset

    def runs(self) -> list[PlannedRun]:
        """Every run of the grid, resolved and validated (cells in grid order, seeds innermost)."""
        planned = []
        for cell, seeds in self._cells_with_seeds():
            for seed in seeds:
                overrides = self.overrides_for(cell, seed)
                preset = self.preset_for(cell, seed)
                try:
                    cfg = resolve(cell.task, cell.backbone, cell.method, seed=seed, train_size=cell.train_size,
                                  overrides=overrides, preset=preset, epochs=self.epochs)
                except ConfigError as exc:
                    raise SpecError(f"{self.path}: cell {cell.label()} seed={seed}: {exc}") from None
                args = RunArgs(cell.task, cell.backbone, cell.method, seed, cell.train_size, tuple(overrides),
                               preset, self.epochs, cfg.hash)
                planned.append(PlannedRun(cell, seed, cfg, args))
        return planned

    def headline_of(self, method: str) -> str:
        """The variant ``method`` is ranked by in this suite."""
        if method in self.headline:
            return self.headline[method]
        return METHODS.get(method).obj.variants[0]

    def summary(self) -> dict[str, Any]:
        """A JSON-ready description (written to the suite's manifest)."""
        return {"name": self.name, "protocol": self.protocol, "source": self.source,
                "description": self.description, "tasks": self.tasks, "backbones": self.backbones,
                "methods": self.methods, "train_sizes": self.train_sizes, "seeds": self.seeds,
                "task_settings": {k: v for g in self._grids() for k, v in (g.get("task_settings") or {}).items()},
                "overrides": self.overrides, "epochs": self.epochs, "preset": self.preset, "cells": self.cells,
                "headline": {m: self.headline_of(m) for m in self.methods}, "reference": self.reference}


def _matches(value: Any, wanted: Any) -> bool:
    options = wanted if isinstance(wanted, list) else [wanted]
    for option in options:
        if isinstance(value, str) and isinstance(option, str):
            if fnmatch.fnmatchcase(value, option):
                return True
        elif value == option:
            return True
    return False


# -- locating a specification -------------------------------------------------------------------
def _specs_dir():
    return resources.files("benchmark.suite") / "specs"


def shipped_suites() -> list[str]:
    """Names of the suites shipped with the package."""
    return sorted(p.name[:-5] for p in _specs_dir().iterdir() if p.name.endswith(".yaml"))


class _DuplicateKeyError(yaml.constructor.ConstructorError):
    """A mapping of a suite file gives one key twice."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping, at any depth.

    Keys brought in by a merge (``<<: *anchor``) may still be overridden by the mapping's own keys.
    """

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node)
                except TypeError:  # an unhashable key: the base class reports it
                    continue
                if first is not key_node:
                    raise _DuplicateKeyError(
                        problem=f"duplicate key {key!r} (first given at line {first.start_mark.line + 1}, "
                                f"column {first.start_mark.column + 1})",
                        problem_mark=key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def _load_yaml(text: str, path: Path) -> Any:
    """The YAML document ``text``; any error is a one-line :class:`SpecError` with its line and column."""
    loader = _UniqueKeyLoader(text)      # a yaml.SafeLoader: plain data only, never Python objects
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = " ".join(str(exc.problem or exc.context or "not valid YAML").split())
        if isinstance(exc, _DuplicateKeyError):
            raise SpecError(f"{path}: {where}{problem}") from None
        context = f" ({' '.join(exc.context.split())})" if exc.context and exc.problem else ""
        raise SpecError(f"{path}: {where}not valid YAML: {problem}{context}") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    finally:
        loader.dispose()


def load_spec(spec: str | Path) -> Spec:
    """A shipped suite by name, or a YAML file by path."""
    text = str(spec)
    path = Path(text)
    if text in shipped_suites() and not path.is_file():
        res = _specs_dir() / f"{text}.yaml"
        return parse_spec(_load_yaml(res.read_text(), Path(str(res))), path=Path(str(res)), source=text)
    if not path.is_file():
        raise SpecError(f"suite {text!r}: neither a shipped suite nor a file; shipped suites: "
                        + ", ".join(shipped_suites()) + " (or give the path to a .yaml file)")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path}: cannot read: {exc}") from None
    return parse_spec(_load_yaml(text, path), path=path, source=str(path))


# -- validation ---------------------------------------------------------------------------------
def _err(path: Path, key: str, msg: str) -> SpecError:
    return SpecError(f"{path}: {key}: {msg}")


def _names(value: Any, registry, path: Path, key: str) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(v, str) for v in items):
        raise _err(path, key, f"expected a name, a pattern or a list of them, got {value!r}; "
                              f"allowed: {', '.join(registry.list())}")
    out: list[str] = []
    for item in items:
        if any(ch in item for ch in "*?["):
            found = registry.list(item)
            if not found:
                raise _err(path, key, f"pattern {item!r} matches no {registry.kind}; allowed: "
                                      + ", ".join(registry.list()))
        else:
            try:
                registry.get(item)
            except UnknownNameError as exc:
                raise _err(path, key, str(exc)) from None
            found = [item]
        out.extend(n for n in found if n not in out)
    return out


def _ints(value: Any, path: Path, key: str, minimum: int) -> list[int]:
    items = [value] if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(items, list) or not items or not all(isinstance(v, int) and not isinstance(v, bool)
                                                          and v >= minimum for v in items):
        raise _err(path, key, f"expected an integer >= {minimum} or a non-empty list of them, got {value!r}")
    if len(set(items)) != len(items):
        raise _err(path, key, f"repeated values in {items}")
    return list(items)


def _task_settings(value: Any, path: Path, key: str) -> dict[str, list]:
    """``{setting: [values]}``: a task setting (``eps`` or ``task.eps``) and the values the grid
    takes it through, scalars without repeats."""
    if value is None:
        return {}
    if not isinstance(value, dict) or not value:
        raise _err(path, key, f"expected a mapping of task settings to lists of values "
                              f"(e.g. {{eps: [0.0, 0.1]}}), got {value!r}")
    out: dict[str, list] = {}
    for name, values in value.items():
        setting = name[5:] if isinstance(name, str) and name.startswith("task.") else name
        if not isinstance(setting, str) or not setting.isidentifier():
            raise _err(path, f"{key}.{name}", "expected the name of a task setting")
        if setting in out:
            raise _err(path, f"{key}.{name}", f"task setting {setting!r} given twice")
        items = values if isinstance(values, list) else [values]
        if not items or not all(isinstance(v, (bool, int, float, str)) for v in items):
            raise _err(path, f"{key}.{name}", f"expected a non-empty list of values, got {values!r}")
        if len({repr(v) for v in items}) != len(items):
            raise _err(path, f"{key}.{name}", f"repeated values in {items}")
        out[setting] = list(items)
    return out


def _overrides(value: Any, path: Path, key: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) and "=" in v for v in value):
        raise _err(path, key, f"expected a list of 'key=value' strings, got {value!r}")
    return list(value)


def _check_keys(data: Mapping, allowed: tuple[str, ...], path: Path, where: str) -> None:
    for key in data:
        if key not in allowed:
            raise _err(path, f"{where}{key}", f"unknown key; allowed: {', '.join(allowed)}")


def parse_spec(data: Any, *, path: Path | str = "<spec>", source: str | None = None) -> Spec:
    """Validate a loaded YAML document and return a :class:`Spec`."""
    path = Path(path)
    if not isinstance(data, dict):
        raise SpecError(f"{path}: expected a mapping with keys {', '.join(TOP_KEYS)}, got {type(data).__name__}")
    _check_keys(data, TOP_KEYS, path, "")
    name = data.get("name", path.stem)
    from benchmark.record import is_safe_component
    if not is_safe_component(name):
        raise _err(path, "name", f"expected a single name of letters, digits, '.', '_', '+' or '-' (it names "
                                 f"the suite's report folder; not '.', '..' or a path), got {name!r}")
    protocol = data.get("protocol")
    if not isinstance(protocol, str) or not protocol.strip():
        raise _err(path, "protocol", "required: a one-line label of the protocol (data, schedule, model)")
    grid_raw = data.get("grid")
    grid_list = grid_raw if isinstance(grid_raw, list) and grid_raw else [grid_raw]
    grids = []
    for i, grid in enumerate(grid_list):
        where = "grid" if len(grid_list) == 1 and not isinstance(grid_raw, list) else f"grid[{i}]"
        if not isinstance(grid, dict):
            raise _err(path, where, f"required: a mapping (or a list of mappings) with keys {', '.join(GRID_KEYS)}")
        _check_keys(grid, GRID_KEYS + OPTIONAL_GRID_KEYS, path, where + ".")
        for key in GRID_KEYS:
            if key not in grid:
                raise _err(path, f"{where}.{key}", "required")
        grids.append({"tasks": _names(grid["tasks"], TASKS, path, f"{where}.tasks"),
                      "backbones": _names(grid["backbones"], BACKBONES, path, f"{where}.backbones"),
                      "methods": _names(grid["methods"], METHODS, path, f"{where}.methods"),
                      "train_sizes": _ints(grid["train_sizes"], path, f"{where}.train_sizes", 1),
                      "seeds": _ints(grid["seeds"], path, f"{where}.seeds", 0),
                      "task_settings": _task_settings(grid.get("task_settings"), path, f"{where}.task_settings")})

    def union(key):
        out = []
        for g in grids:
            out.extend(v for v in g[key] if v not in out)
        return out
    tasks, backbones, methods = union("tasks"), union("backbones"), union("methods")
    train_sizes, seeds = union("train_sizes"), union("seeds")
    overrides = _overrides(data.get("overrides"), path, "overrides")
    for i, g in enumerate(grids):   # one setting, one place: a grid's task setting is not overridden too
        for item in overrides:
            key = item.split("=", 1)[0].strip()
            if key in {f"task.{k}" for k in g["task_settings"]}:
                where = "grid" if len(grids) == 1 else f"grid[{i}]"
                raise _err(path, "overrides", f"{item.strip()} conflicts with {where}.task_settings; give the "
                                              f"setting once")

    epochs = data.get("epochs")
    if epochs is not None and (not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1):
        raise _err(path, "epochs", f"expected an integer >= 1, got {epochs!r}")
    preset = data.get("preset")
    if preset is not None and not isinstance(preset, str):
        raise _err(path, "preset", f"expected a preset name, got {preset!r}")

    cells = []
    for i, rule in enumerate(data.get("cells") or []):
        key = f"cells[{i}]"
        if not isinstance(rule, dict):
            raise _err(path, key, "expected a mapping with keys where, overrides, preset")
        _check_keys(rule, ("where", "overrides", "preset"), path, key + ".")
        if rule.get("preset") is not None and not isinstance(rule["preset"], str):
            raise _err(path, key + ".preset", f"expected a preset name, got {rule['preset']!r}")
        where = rule.get("where")
        if not isinstance(where, dict) or not where:
            raise _err(path, key + ".where", f"expected a mapping with keys among {', '.join(WHERE_KEYS)}")
        _check_keys(where, WHERE_KEYS, path, key + ".where.")
        cells.append({"where": dict(where), "overrides": _overrides(rule.get("overrides"), path, key + ".overrides"),
                      "preset": rule.get("preset")})
    if epochs is not None:  # one setting, one place: `epochs:` or a train.epochs override, not both
        sources = [("overrides", overrides)] + [(f"cells[{i}].overrides", c["overrides"]) for i, c in enumerate(cells)]
        for where, items in sources:
            for item in items:
                if item.split("=", 1)[0].strip() in ("train.epochs", "epochs"):
                    raise _err(path, "epochs", f"{epochs} conflicts with {where}: {item.strip()}; give the number "
                                               f"of epochs once")

    headline_raw = data.get("headline", "declared")
    headline: dict[str, str] = {}
    if headline_raw != "declared":
        if not isinstance(headline_raw, dict):
            raise _err(path, "headline", f"expected 'declared' or a mapping method: variant, got {headline_raw!r}")
        for method, variant in headline_raw.items():
            if method not in methods:
                raise _err(path, f"headline.{method}", f"not a method of this suite; allowed: {', '.join(methods)}")
            variants = tuple(METHODS.get(method).obj.variants)
            if variant not in variants:
                raise _err(path, f"headline.{method}", f"unknown variant {variant!r}; allowed: {', '.join(variants)}")
            headline[method] = variant

    reference = data.get("reference", "strict")
    if not isinstance(reference, str) or reference not in METHODS:
        raise _err(path, "reference", f"unknown method {reference!r}; allowed: {', '.join(METHODS.list())}")

    for key in ("wandb", "executor"):
        if data.get(key) is not None and not isinstance(data[key], dict):
            raise _err(path, key, f"expected a mapping, got {data[key]!r}")
    wandb = dict(data.get("wandb") or {})
    _check_keys(wandb, ("project", "entity"), path, "wandb.")
    executor = dict(data.get("executor") or {})
    _check_keys(executor, EXECUTOR_KEYS, path, "executor.")

    description = data.get("description") or ""
    if not isinstance(description, str):
        raise _err(path, "description", "expected text")
    return Spec(name=name, protocol=" ".join(protocol.split()), source=source or str(path), path=path,
                tasks=tasks, backbones=backbones, methods=methods, train_sizes=train_sizes, seeds=seeds,
                overrides=overrides, epochs=epochs, preset=preset, cells=cells, headline=headline,
                reference=reference, description=description.strip(), wandb=wandb, executor=executor,
                raw=data, grids=grids if len(grids) > 1 else [],
                task_settings=grids[0]["task_settings"] if len(grids) == 1 else {})
