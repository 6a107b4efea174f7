"""Named registries of tasks, backbones and methods.

One generic :class:`Registry` class serves all three. Entries register themselves where they are
defined, with a decorator that also names their frozen configuration dataclass::

    @METHODS.register("my-method", config=MyConfig)
    class MyMethod(Method):
        ...

Guarantees
----------
* A name is registered once: a second registration under the same name raises.
* Looking up an unknown name raises :class:`UnknownNameError`, whose message lists the closest
  registered names and every registered name.
* :meth:`Registry.list` takes shell-style wildcards (``"ace-*"``).
* What is registered is what the harness expects: a registry with a declared base class
  (``module:Class``) refuses anything that does not subclass it, and calls the base's
  ``check_registration(name)`` so a base class can check its declared contract (a method's
  ``variants``, a backbone's ``tasks``) when the entry is registered, not when a run reads it.
* Entries are discovered lazily: the first lookup imports the registry's discovery modules and,
  for methods, every entry point of the group ``relaxbench.methods``, so a method can live in
  another installed package.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import importlib
import pkgutil
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Callable, Generic, Iterator, TypeVar

T = TypeVar("T")

__all__ = [
    "Registry",
    "RegistryEntry",
    "DuplicateNameError",
    "UnknownNameError",
    "TASKS",
    "BACKBONES",
    "METHODS",
]


class DuplicateNameError(ValueError):
    """Raised when a name is registered twice in one registry."""


class UnknownNameError(KeyError):
    """Raised when a name is not in a registry; the message suggests close matches."""

    def __str__(self) -> str:  # KeyError quotes its argument; show the sentence as written
        return str(self.args[0])


@dataclass(frozen=True)
class RegistryEntry(Generic[T]):
    """A registered object, its name, its configuration class and where it came from."""

    name: str
    obj: T
    config: type | None
    source: str

    def default_config(self) -> Any:
        """A configuration instance with every default, or ``None`` when there is no config."""
        return None if self.config is None else self.config()


class Registry(Generic[T]):
    """A mapping from names to registered objects of one kind.

    Parameters
    ----------
    kind : str
        What the registry holds ("task", "backbone", "method"), used in messages.
    packages : tuple of str
        Packages whose submodules are imported on first lookup (each module registers its
        entries when imported).
    entry_point_group : str, optional
        An entry-point group whose entries are loaded on first lookup; each entry point names a
        module (importing it registers) or a ``module:attr`` object.

    Examples
    --------
    >>> reg = Registry("widget")
    >>> @reg.register("round")
    ... class Round: ...
    >>> reg.list()
    ['round']
    >>> reg.get("rund")
    Traceback (most recent call last):
    ...
    benchmark.registry.UnknownNameError: unknown widget 'rund'; did you mean 'round'? Registered widgets: round
    """

    def __init__(self, kind: str, packages: tuple[str, ...] = (), entry_point_group: str | None = None,
                 base: str | None = None):
        self.kind = kind
        self._base = base
        self._packages = packages
        self._entry_point_group = entry_point_group
        self._entries: dict[str, RegistryEntry[T]] = {}
        self._discovered = not packages and entry_point_group is None
        self._discovering = False

    # -- registration ---------------------------------------------------------------------------
    def register(self, name: str, *, config: type | None = None) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name`` with its frozen config dataclass."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} name must be a non-empty string, got {name!r}")
        if config is not None:
            if not dataclasses.is_dataclass(config):
                raise TypeError(f"config of {self.kind} {name!r} must be a dataclass, got {config!r}")
            if not config.__dataclass_params__.frozen:  # type: ignore[attr-defined]
                raise TypeError(f"config {config.__name__} of {self.kind} {name!r} must be frozen")

        def decorator(obj: T) -> T:
            self.add(name, obj, config=config)
            return obj

        return decorator

    def add(self, name: str, obj: T, *, config: type | None = None) -> None:
        """Register ``obj`` under ``name`` (the non-decorator form of :meth:`register`)."""
        source = f"{getattr(obj, '__module__', '?')}:{getattr(obj, '__qualname__', repr(obj))}"
        if self._base is not None:
            module, _, attr = self._base.partition(":")
            base = getattr(importlib.import_module(module), attr)
            if not (isinstance(obj, type) and issubclass(obj, base)):
                raise TypeError(f"{self.kind} {name!r} ({source}) must be a subclass of {base.__module__}."
                                f"{base.__qualname__}")
            obj.check_registration(name)
        if name in self._entries:
            prev = self._entries[name]
            raise DuplicateNameError(
                f"{self.kind} {name!r} is already registered by {prev.source}; "
                f"cannot register it again from {source}"
            )
        self._entries[name] = RegistryEntry(name=name, obj=obj, config=config, source=source)
        if isinstance(obj, type):
            obj.registry_name = name  # type: ignore[attr-defined]

    def unregister(self, name: str) -> None:
        """Remove ``name`` (used by tests and by plugins replacing an entry deliberately)."""
        self._entries.pop(name, None)

    # -- discovery ------------------------------------------------------------------------------
    def discover(self) -> None:
        """Import the discovery packages and entry points once."""
        if self._discovered or self._discovering:
            return
        self._discovering = True
        try:
            for package in self._packages:
                _import_submodules(package)
            if self._entry_point_group:
                for ep in metadata.entry_points(group=self._entry_point_group):
                    loaded = ep.load()
                    # an entry point may name a module (registers on import) or an object with
                    # a ``registry_name`` set by ``register``; anything else is registered here
                    if not isinstance(loaded, type(importlib)) and ep.name not in self._entries:
                        self.add(ep.name, loaded, config=getattr(loaded, "config_class", None))
            self._discovered = True
        finally:
            self._discovering = False

    # -- lookup ---------------------------------------------------------------------------------
    def get(self, name: str) -> RegistryEntry[T]:
        """The entry registered under ``name``; raises :class:`UnknownNameError` otherwise."""
        self.discover()
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self._unknown_message(name)) from None

    def __contains__(self, name: object) -> bool:
        self.discover()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.list())

    def __len__(self) -> int:
        self.discover()
        return len(self._entries)

    def list(self, pattern: str = "*") -> list[str]:
        """Sorted registered names matching the shell-style wildcard ``pattern``."""
        self.discover()
        return sorted(n for n in self._entries if fnmatch.fnmatchcase(n, pattern))

    def _unknown_message(self, name: str) -> str:
        names = sorted(self._entries)
        close = difflib.get_close_matches(str(name), names, n=3, cutoff=0.5)
        hint = "."
        if close:
            hint = "; did you mean " + " or ".join(repr(c) for c in close) + "?"
        listing = ", ".join(names) if names else "(none)"
        return f"unknown {self.kind} {name!r}{hint} Registered {self.kind}s: {listing}"


def _import_submodules(package: str) -> None:
    pkg = importlib.import_module(package)
    for info in pkgutil.iter_modules(pkg.__path__, prefix=package + "."):
        leaf = info.name.rsplit(".", 1)[-1]
        if leaf.startswith("_"):
            continue
        importlib.import_module(info.name)


TASKS: Registry[Any] = Registry("task", packages=("benchmark.tasks",), base="benchmark.tasks._base:Task")
BACKBONES: Registry[Any] = Registry("backbone", packages=("benchmark.backbones",),
                                    base="benchmark.nn._relaxed:HomotopyModel")
METHODS: Registry[Any] = Registry("method", packages=("baselines",), entry_point_group="relaxbench.methods",
                                  base="benchmark.method:Method")
