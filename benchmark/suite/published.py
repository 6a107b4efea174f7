"""Published numbers for a suite's tables: one data file per suite, never inside table code.

A suite that reproduces a paper ships ``benchmark/suite/published/<suite>.yaml``::

    sources:                                   # citation keys -> what the numbers are from
      ace: "Manolache, Chamon, Niepert, NeurIPS 2025, Table 1 (N-body, n = 3000)"
    scale: 1.0                                 # the numbers below are (value x scale) in the task's metric
    rows:
      - {task: nbody, backbone: segnn, method: ace-eq, train_size: 3000,
         mean: 3.8e-3, sd: 0.17e-3, source: ace, note: "SEGNN + ACE"}

A row may name a ``variant`` (default: the method's headline in the suite), ``n`` (the seeds behind
the number) and ``sd_ddof`` (0 where the paper reports the population sd, as ``numpy.std`` does; 1 for
the sample sd); a file-level ``sd_ddof`` is the default of its rows. Where a row has its sd, ``n`` and
``sd_ddof``, tables also test the measured seeds against it (Welch's t-test from the published summary
statistics). The file is read with YAML's safe loader and checked: every error is one line naming the
file and the row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from importlib import resources
from typing import Any

import yaml

from benchmark.config import ConfigError

__all__ = ["Published", "PublishedRow", "load_published", "PublishedError"]

ROW_KEYS = ("task", "backbone", "method", "train_size", "mean", "sd", "source", "variant", "note", "n", "sd_ddof")


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
    sd_ddof: int | None = None  # 0: population sd (numpy's default), 1: sample sd; None: not stated

    @property
    def sd_sample(self) -> float | None:
        """The published sd as a sample (ddof 1) sd, where the sd, its ddof and the seed count are known."""
        if self.sd is None or self.n is None or self.n < 2 or self.sd_ddof is None:
            return None
        return self.sd * math.sqrt(self.n / (self.n - 1)) if self.sd_ddof == 0 else self.sd


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


def _whole(value: Any, where: str, allowed: tuple[int, ...] | None = None, least: int = 0) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < least \
            or (allowed is not None and value not in allowed):
        wanted = " or ".join(map(str, allowed)) if allowed else f"a whole number >= {least}"
        raise PublishedError(f"{where}: expected {wanted}, got {value!r}")
    return value


def parse_published(data: Any, suite: str, where: str = "<published>") -> Published:
    """Validate a loaded document (see the module docstring)."""
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list) or not isinstance(data.get("sources"), dict):
        raise PublishedError(f"{where}: expected a mapping with 'sources' (key: citation) and 'rows' (a list)")
    sources = {str(k): str(v) for k, v in data["sources"].items()}
    scale = _number(data.get("scale", 1.0), f"{where}: scale")
    default_ddof = _whole(data.get("sd_ddof"), f"{where}: sd_ddof", (0, 1))
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
                                 str(raw["source"]), raw.get("variant"), str(raw.get("note", "")),
                                 _whole(raw.get("n"), f"{at}: n", least=1),
                                 _whole(raw.get("sd_ddof", default_ddof), f"{at}: sd_ddof", (0, 1))))
    return Published(suite, sources, tuple(rows))


def load_published(suite: str) -> Published | None:
    """The shipped published numbers of ``suite``, or ``None`` when it declares none."""
    path = resources.files("benchmark.suite") / "published" / f"{suite}.yaml"
    if not path.is_file():
        return None
    return parse_published(yaml.safe_load(path.read_text()), suite, f"published/{suite}.yaml")
