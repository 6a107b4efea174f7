"""Published numbers for a suite's tables: one data file per suite, never inside table code.

A suite that reproduces a paper ships ``benchmark/suite/published/<suite>.yaml``::

    sources:                                   # citation keys -> what the numbers are from
      ace: "Manolache, Chamon, Niepert, NeurIPS 2025, Table 1 (N-body, n = 3000)"
    scale: 1.0                                 # the numbers below are (value x scale) in the task's metric
    rows:
      - {task: nbody, backbone: segnn, method: ace-eq, train_size: 3000,
         mean: 3.8e-3, sd: 0.17e-3, source: ace, note: "SEGNN + ACE"}

A row may name a ``variant`` (default: the method's headline in the suite). The file is read with
YAML's safe loader and checked: every error is one line naming the file and the row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from importlib import resources
from typing import Any

import yaml

from benchmark.config import ConfigError

__all__ = ["Published", "PublishedRow", "load_published", "PublishedError"]

ROW_KEYS = ("task", "backbone", "method", "train_size", "mean", "sd", "source", "variant", "note", "n")


class PublishedError(ConfigError):
    """A published-numbers file that cannot be used; the message is one line."""


@dataclass(frozen=True)
class PublishedRow:
    task: str
    backbone: str
    method: str
    train_size: int
    mean: float            # in the task's metric (the file's numbers times its scale)
    sd: float | None
    source: str            # the citation key
    variant: str | None = None
    note: str = ""
    n: int | None = None   # seeds behind the published number, where the paper says


@dataclass(frozen=True)
class Published:
    suite: str
    sources: dict[str, str]
    rows: tuple[PublishedRow, ...]

    def lookup(self, task: str, backbone: str, method: str, train_size: int, variant: str) -> PublishedRow | None:
        """The published row of a table row (its variant must match where the file names one)."""
        for row in self.rows:
            if (row.task, row.backbone, row.method, row.train_size) == (task, backbone, method, int(train_size)) \
                    and row.variant in (None, variant):
                return row
        return None


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise PublishedError(f"{where}: expected a finite number, got {value!r}")
    return float(value)


def parse_published(data: Any, suite: str, where: str = "<published>") -> Published:
    """Validate a loaded document (see the module docstring)."""
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list) or not isinstance(data.get("sources"), dict):
        raise PublishedError(f"{where}: expected a mapping with 'sources' (key: citation) and 'rows' (a list)")
    sources = {str(k): str(v) for k, v in data["sources"].items()}
    scale = _number(data.get("scale", 1.0), f"{where}: scale")
    rows = []
    for i, raw in enumerate(data["rows"]):
        at = f"{where}: rows[{i}]"
        if not isinstance(raw, dict):
            raise PublishedError(f"{at}: expected a mapping")
        unknown = sorted(set(raw) - set(ROW_KEYS))
        if unknown:
            raise PublishedError(f"{at}: unknown keys {', '.join(unknown)}; allowed: {', '.join(ROW_KEYS)}")
        for key in ("task", "backbone", "method", "train_size", "mean", "source"):
            if key not in raw:
                raise PublishedError(f"{at}: '{key}' is required")
        if raw["source"] not in sources:
            raise PublishedError(f"{at}: source {raw['source']!r} is not among sources: {', '.join(sources)}")
        sd = raw.get("sd")
        rows.append(PublishedRow(str(raw["task"]), str(raw["backbone"]), str(raw["method"]), int(raw["train_size"]),
                                 _number(raw["mean"], f"{at}: mean") * scale,
                                 None if sd is None else _number(sd, f"{at}: sd") * scale,
                                 str(raw["source"]), raw.get("variant"), str(raw.get("note", "")), raw.get("n")))
    return Published(suite, sources, tuple(rows))


def load_published(suite: str) -> Published | None:
    """The shipped published numbers of ``suite``, or ``None`` when it declares none."""
    path = resources.files("benchmark.suite") / "published" / f"{suite}.yaml"
    if not path.is_file():
        return None
    return parse_published(yaml.safe_load(path.read_text()), suite, f"published/{suite}.yaml")
