"""Imports flow one way through the layers of the architecture (lowest first):

    leaf (registry, config, fileio) < groups < nn < tasks < backbones < core (method, train, evaluate,
    experiment, record, checkpoint, devices, migrate, provenance, tracking) < baselines < suite
    < report < cli (the command: ``benchmark.cli`` and its ``suite`` and ``report`` modules)

A module imports only from its own layer and the layers below it, at the top of the file or
inside a function alike; the registry reaches ``baselines`` by discovery, never by an import.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

LAYERS = [
    ("leaf", ["benchmark.registry", "benchmark.config", "benchmark.fileio"]),
    ("groups", ["benchmark.groups"]),
    ("nn", ["benchmark.nn"]),
    ("tasks", ["benchmark.tasks"]),
    ("backbones", ["benchmark.backbones"]),
    ("core", ["benchmark.method", "benchmark.train", "benchmark.evaluate", "benchmark.experiment",
              "benchmark.record", "benchmark.checkpoint", "benchmark.devices", "benchmark.migrate",
              "benchmark.provenance", "benchmark.tracking", "benchmark.perf"]),
    ("baselines", ["baselines"]),
    ("suite", ["benchmark.suite"]),
    ("report", ["benchmark.report"]),
    # the command's glue: `relaxbench run`, and the suite and report commands
    ("cli", ["benchmark.cli", "benchmark.__main__"]),
]


def _layer(module: str) -> int | None:
    best = None
    for rank, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                best = rank
    return best


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path, module: str):
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield node.lineno, target
            for alias in node.names:                  # `from benchmark import train` imports a module
                yield node.lineno, f"{target}.{alias.name}"


def test_every_module_has_a_layer():
    for path in sorted((REPO / "benchmark").rglob("*.py")) + sorted((REPO / "baselines").rglob("*.py")):
        module = _module_name(path)
        if module in ("benchmark", "baselines"):
            continue
        assert _layer(module) is not None, f"{module} belongs to no layer of tests/test_layers.py"


def test_imports_flow_one_way():
    bad = []
    for path in sorted((REPO / "benchmark").rglob("*.py")) + sorted((REPO / "baselines").rglob("*.py")):
        module = _module_name(path)
        own = _layer(module)
        if own is None:
            continue
        for line, target in _imports(path, module):
            rank = _layer(target)
            if rank is not None and rank > own:
                bad.append(f"{path.relative_to(REPO)}:{line}: {module} ({LAYERS[own][0]}) imports {target} "
                           f"({LAYERS[rank][0]})")
    assert not bad, "\n".join(bad)
