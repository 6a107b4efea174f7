"""One benchmark run's full configuration, resolved and validated before anything trains.

Resolution order of the training schedule (later wins): :class:`~benchmark.config.TrainConfig`
defaults < the task's ``train_defaults`` < the backbone's ``train_defaults[task]`` < a named preset
< the user's ``key=value`` overrides; ``epochs`` (the ``--epochs`` shorthand) and a ``train.epochs``
override are one setting, and giving both is an error. Override keys live in four namespaces, ``task.``, ``model.``,
``method.`` and ``train.``; a bare key is accepted when exactly one namespace has it.

The seed is an integer ``0 <= seed < 2**63`` (:data:`MAX_SEED`).

Guarantee: :func:`resolve` either returns a :class:`RunConfig` whose every value is typed and in
range, or raises :class:`~benchmark.config.ConfigError` with a one-line message naming the key, the
value and what is allowed. Nothing is built or written before that.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any, Mapping, Sequence

from benchmark.config import (ConfigError, TrainConfig, apply_overrides, config_hash, parse_overrides,
                              to_dict, unknown_key_message, validate)
from benchmark.nn import BranchConfig, branch_field_names
from benchmark.registry import BACKBONES, METHODS, TASKS, UnknownNameError

__all__ = ["RunConfig", "resolve", "NAMESPACES", "MAX_SEED", "canonical_resolved", "HASH_RENAMES", "HASH_ADDITIONS",
           "HashRename", "HashAddition"]

NAMESPACES = ("task", "model", "method", "train")

@dataclass(frozen=True)
class HashRename:
    """A setting renamed after configuration hashes were first taken.

    ``section`` is the part of the resolved dict (``task_cfg``, ``model_cfg``, ``method_cfg``,
    ``train``); ``where`` lists ``(key, value)`` pairs of the resolved dict's top level that must
    all match (``(("method", "remul"),)``: only remul's settings); ``old_values`` maps a value of
    the new setting to the value the old one had, where the type changed with the name.
    """

    section: str
    new: str
    old: str
    where: tuple[tuple[str, str], ...] = ()
    old_values: tuple[tuple[Any, Any], ...] = ()


@dataclass(frozen=True)
class HashAddition:
    """A setting added after hashes were first taken, whose ``default`` is what runs did before it
    existed: at that value it is left out of the hash, so older runs keep their ids."""

    section: str
    name: str
    default: Any
    where: tuple[tuple[str, str], ...] = ()


def _method(name: str) -> tuple[tuple[str, str], ...]:
    return (("method", name),)


#: Renamed settings: the hash is taken of the old names (:func:`canonical_resolved`), so a rename
#: never changes the hash, hence the id, of any run, old or new. Records store the current names.
#: Add a row here for every rename of a field that enters :meth:`RunConfig.resolved`.
HASH_RENAMES: tuple[HashRename, ...] = (
    HashRename("task_cfg", "data_seed", "seed", where=(("task", "nbody"),)),   # the generator's seed
    # one spelling of the gamma policy across methods: gamma_init, gamma_learnable, gamma_max
    HashRename("method_cfg", "gamma_init", "gamma", where=_method("unconstrained")),
    HashRename("method_cfg", "gamma_learnable", "learnable", where=_method("unconstrained")),
    HashRename("method_cfg", "gamma_init", "gamma", where=_method("rpp")),
    HashRename("method_cfg", "gamma_init", "gamma_value", where=_method("remul")),
    HashRename("method_cfg", "gamma_learnable", "gamma", where=_method("remul"),
               old_values=((False, "fixed"), (True, "learnable"))),
    HashRename("method_cfg", "gamma_max", "theta_max", where=_method("lie-anneal")),
)

#: Added settings, left out of the hash at the value that reproduces what runs did before them.
HASH_ADDITIONS: tuple[HashAddition, ...] = (
    HashAddition("model_cfg", "branch_act", "silu", where=(("backbone", "egnn"),)),
    HashAddition("model_cfg", "branch_act", "gelu", where=(("backbone", "segnn"),)),
    HashAddition("model_cfg", "branch_at", "gate-input", where=(("backbone", "segnn"),)),
    HashAddition("model_cfg", "centre_input", True, where=(("backbone", "segnn"),)),
    HashAddition("method_cfg", "dual_eps", 1e-8, where=_method("ace-eq")),
    HashAddition("method_cfg", "dual_eps", 1e-8, where=_method("ace-elastic")),
    HashAddition("method_cfg", "penalty_reduction", "mean", where=_method("lie-anneal")),
    HashAddition("train", "drop_last", False),
    HashAddition("train", "augment", "none"),
    # before it, the first step above the threshold ended every run. MoCap's default (5) is left
    # out of mocap-run's hash instead of 0 (so an explicit 0 there hashes apart from it): a run
    # that completed under the old rule never crossed the threshold, so it is the same run under
    # the new one (the runs the old rule had ended were trained again)
    *(HashAddition("train", "divergence_patience", 0, where=(("task", t),)) for t in ("nbody", "nbody-field",
                                                                                     "rotmnist")),
    HashAddition("train", "divergence_patience", 5, where=(("task", "mocap-run"),)),
)

#: Seeds are ``0 <= seed < MAX_SEED``: they fit a signed 64-bit integer, which every generator
#: the harness seeds from them accepts (derived seeds are reduced modulo 2**64).
MAX_SEED = 2**63


@dataclass(frozen=True)
class RunConfig:
    """Identity and every setting of one run."""

    task: str
    backbone: str
    method: str
    seed: int
    train_size: int
    task_cfg: Any
    model_cfg: Any
    method_cfg: Any
    train: TrainConfig
    preset: str | None = None

    def resolved(self) -> dict[str, Any]:
        """The JSON-ready resolved configuration, with current field names (what records store;
        the hash is taken of its :func:`canonical_resolved` form)."""
        task_cls = TASKS.get(self.task).obj
        return {
            "task": self.task, "task_version": task_cls.version,
            "backbone": self.backbone, "method": self.method,
            "seed": self.seed, "train_size": self.train_size, "preset": self.preset,
            "task_cfg": to_dict(self.task_cfg), "model_cfg": to_dict(self.model_cfg),
            "method_cfg": to_dict(self.method_cfg), "train": to_dict(self.train),
        }

    @property
    def hash(self) -> str:
        """Hash of :func:`canonical_resolved` of :meth:`resolved`: renamed fields enter under their
        old names, so hashes (and run ids) of existing records stay valid."""
        return config_hash(canonical_resolved(self.resolved()))

    @property
    def run_id(self) -> str:
        return f"{self.task}/{self.backbone}/{self.method}/n{self.train_size}-seed{self.seed}-{self.hash}"

    def namespace(self, name: str) -> Any:
        return {"task": self.task_cfg, "model": self.model_cfg, "method": self.method_cfg,
                "train": self.train}[name]


def _applies(where: tuple[tuple[str, str], ...], resolved: Mapping[str, Any]) -> bool:
    return all(resolved.get(key) == value for key, value in where)


def canonical_resolved(resolved: Mapping[str, Any]) -> dict[str, Any]:
    """``resolved`` (as :meth:`RunConfig.resolved` returns it) in the form hashes were first taken
    of: every renamed field of :data:`HASH_RENAMES` under its old name (and old value), every field
    of :data:`HASH_ADDITIONS` at its default left out. A dict already in that form (an old
    record's) is returned unchanged.

    >>> canonical_resolved({"method": "lie-anneal", "method_cfg": {"gamma_max": 1.0}})
    {'method': 'lie-anneal', 'method_cfg': {'theta_max': 1.0}}
    """
    out = dict(resolved)
    for rename in HASH_RENAMES:
        values = out.get(rename.section)
        if not _applies(rename.where, resolved) or not isinstance(values, Mapping) or rename.new not in values:
            continue
        if rename.old in values:
            raise ValueError(f"{rename.section} has both {rename.new!r} and {rename.old!r}; "
                             f"HASH_RENAMES maps {rename.new!r} to {rename.old!r}")
        mapping = dict(rename.old_values)
        out[rename.section] = {(rename.old if k == rename.new else k): (mapping.get(v, v) if k == rename.new else v)
                               for k, v in values.items()}
    for added in HASH_ADDITIONS:
        values = out.get(added.section)
        if _applies(added.where, resolved) and isinstance(values, Mapping) and added.name in values \
                and values[added.name] == added.default and type(values[added.name]) is type(added.default):
            out[added.section] = {k: v for k, v in values.items() if k != added.name}
    return out


def _lookup(registry, name: str, what: str):
    try:
        return registry.get(name)
    except UnknownNameError as exc:
        raise ConfigError(str(exc)) from None


def _split_namespaces(overrides: Mapping[str, Any], configs: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {ns: {} for ns in NAMESPACES}
    for key, value in overrides.items():
        head, dot, rest = key.partition(".")
        if dot and head in NAMESPACES:
            if configs[head] is None:
                raise ConfigError(f"unknown key {key!r}: this {head} has no settings")
            out[head][rest] = value
            continue
        leaf = key.split(".", 1)[0]
        if key == "seed":       # never a data seed by accident: the run's seed has its own flag
            raise ConfigError(f"seed={value}: the run's seed is not a key=value setting; use --seed {value} "
                              "(in a suite: the grid's seeds); the data generator's seed is task.data_seed")
        owners = [ns for ns in NAMESPACES
                  if configs[ns] is not None and leaf in {f.name for f in fields(configs[ns])}]
        if len(owners) == 1:
            out[owners[0]][key] = value
        elif not owners:
            allowed = [f"{ns}.{f.name}" for ns in NAMESPACES if configs[ns] is not None
                       for f in fields(configs[ns])]
            raise ConfigError(unknown_key_message(key, allowed))
        else:
            raise ConfigError(f"key {key!r} is ambiguous; write one of "
                              + ", ".join(f"{ns}.{key}" for ns in owners))
    return out


def preset_names(task: str, backbone: str) -> list[str]:
    """The presets a run of ``backbone`` on ``task`` may name."""
    return sorted(set(TASKS.get(task).obj.presets) | set(BACKBONES.get(backbone).obj.presets))


def _preset_settings(preset, task, backbone, method, task_cls, model_cls, method_cls, configs):
    """The settings of ``preset`` for this run, by namespace.

    A preset is the protocol of a paper: the task's entry under that name (schedule, data, and
    settings of the methods that have them, such as the ACE dual's) merged with the backbone's
    (its architecture under that protocol), the backbone's winning where both set a key. Method
    settings apply to the methods whose configuration has them (the dual of ``ace-eq`` is no
    setting of ``strict``); branch settings are left out for a method without branches.
    """
    if preset not in task_cls.presets and preset not in model_cls.presets:
        allowed = ", ".join(preset_names(task, backbone)) or "(none)"
        raise ConfigError(f"preset={preset!r}: presets of {task}/{backbone} are {allowed}")
    settings = {**task_cls.presets.get(preset, {}), **model_cls.presets.get(preset, {})}
    method_fields = {f.name for f in fields(configs["method"])} if configs["method"] is not None else set()
    kept = {}
    for key, value in settings.items():
        head, _, leaf = key.partition(".")
        if head == "method" and leaf not in method_fields:
            continue
        if head == "model" and leaf in branch_field_names() and not method_cls.uses_branch:
            continue
        kept[key] = value
    return _split_namespaces(kept, configs)


def resolve(task: str, backbone: str, method: str, *, seed: int = 0, train_size: int | None = None,
            overrides: Mapping[str, Any] | Sequence[str] = (), preset: str | None = None,
            epochs: int | None = None) -> RunConfig:
    """Resolve and validate a run's configuration (see the module docstring)."""
    task_entry = _lookup(TASKS, task, "task")
    backbone_entry = _lookup(BACKBONES, backbone, "backbone")
    method_entry = _lookup(METHODS, method, "method")
    task_cls, model_cls, method_cls = task_entry.obj, backbone_entry.obj, method_entry.obj

    supported = model_cls.tasks
    if "*" not in supported and task not in supported:
        raise ConfigError(f"backbone {backbone!r} does not support task {task!r}; it supports: "
                          + ", ".join(supported))
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < MAX_SEED:
        raise ConfigError(f"seed={seed!r}: expected an integer in 0..2**63-1")

    if not isinstance(overrides, Mapping):
        overrides = parse_overrides(list(overrides))
    configs = {"task": task_entry.default_config(), "model": backbone_entry.default_config(),
               "method": method_entry.default_config(), "train": TrainConfig()}
    split = _split_namespaces(overrides, configs)
    if epochs is not None and "epochs" in split["train"]:  # one setting, one place
        given = next(k for k in overrides if k.strip() in ("train.epochs", "epochs"))
        raise ConfigError(f"--epochs={epochs} conflicts with {given}={overrides[given]}: "
                          f"give the number of epochs once")

    # schedule: defaults < task < backbone-for-task < preset < user
    train_layers: list[Mapping[str, Any]] = [dict(task_cls.train_defaults),
                                             dict(model_cls.train_defaults.get(task, {}))]
    if preset is not None:
        preset_split = _preset_settings(preset, task, backbone, method, task_cls, model_cls, method_cls, configs)
        for ns in ("task", "model", "method"):
            split[ns] = {**preset_split[ns], **split[ns]}
        train_layers.append(preset_split["train"])
    train = configs["train"]
    for layer in train_layers:
        train = apply_overrides(train, layer, prefix="train.")
    train = apply_overrides(train, split["train"], prefix="train.")
    if epochs is not None:
        train = apply_overrides(train, {"epochs": epochs}, prefix="train.")

    cfgs = {}
    for ns in ("task", "model", "method"):
        cfg = configs[ns]
        cfgs[ns] = apply_overrides(cfg, split[ns], prefix=f"{ns}.") if cfg is not None else None

    # the strict method never builds branches: its network has no unconstrained part at all
    if not method_cls.uses_branch and isinstance(cfgs["model"], BranchConfig):
        if split["model"].get("branch", "none") != "none":
            raise ConfigError(f"model.branch={split['model']['branch']!r}: method {method!r} uses no branch")
        cfgs["model"] = dataclasses.replace(cfgs["model"], branch="none")

    for ns, cfg in (("task", cfgs["task"]), ("model", cfgs["model"]), ("method", cfgs["method"]),
                    ("train", train)):
        if cfg is not None:
            validate(cfg, prefix=f"{ns}.")

    if train_size is None:
        train_size = task_cls.default_train_size
    if isinstance(train_size, bool) or not isinstance(train_size, int):
        raise ConfigError(f"train_size={train_size!r}: expected an integer")
    limit = task_cls.max_train_size_for(cfgs["task"])
    if not 1 <= train_size <= limit:
        raise ConfigError(f"train_size={train_size}: allowed 1..{limit} for task {task!r}")
    return RunConfig(task=task, backbone=backbone, method=method, seed=seed, train_size=train_size,
                     task_cfg=cfgs["task"], model_cfg=cfgs["model"], method_cfg=cfgs["method"],
                     train=train, preset=preset)
