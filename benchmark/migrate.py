"""Bringing records written by earlier versions up to date, without touching what they measured.

``python -m benchmark.migrate RESULTS`` adds to every record under ``RESULTS/runs`` the fields a
newer writer records and that can be recomputed exactly from the record's own resolved
configuration, and rewrites what a newer writer records differently:

* ``variants.<v>.params``: the parameters of the network that variant ``v`` evaluates (the
  projected network has no branches). It is the count of a freshly built model of the record's
  backbone and model configuration, on the record's task with a small data split (the counts do
  not depend on the data). Records that have it are left byte for byte as they are.
* ``provenance.command``: the command line with absolute paths kept as their last component
  (:func:`benchmark.provenance.portable_command`), as the writer now records it.

Every rewrite goes through :func:`benchmark.record.write_record` (validated, atomic).
"""

from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["add_variant_params", "portable_commands", "main"]


def _model_for(rec: dict):
    import torch

    from benchmark.config import apply_overrides
    from benchmark.registry import BACKBONES, TASKS
    resolved = rec["config"]["resolved"]
    task_entry, backbone_entry = TASKS.get(rec["task"]), BACKBONES.get(rec["backbone"])
    task_cfg = task_entry.default_config()
    stored = {k: v for k, v in resolved["task_cfg"].items() if k not in ("num_train", "num_valid", "num_test", "seed")}
    small = {"num_train": 16, "num_valid": 8, "num_test": 8}
    task_cfg = apply_overrides(task_cfg, {**stored, **{k: v for k, v in small.items() if hasattr(task_cfg, k)}})
    model_cfg = apply_overrides(backbone_entry.default_config(), dict(resolved["model_cfg"]))
    task = task_entry.obj(task_cfg, train_size=8, dtype=torch.float32, progress=False)
    return backbone_entry.obj(model_cfg, task)


def add_variant_params(results: Path | str) -> tuple[int, int]:
    """Add ``variants.<v>.params`` where it is missing; returns (records updated, records seen)."""
    from benchmark.record import iter_records, write_record
    from benchmark.train import variant_parameters
    cache: dict[str, dict[str, int]] = {}
    updated = seen = 0
    for path, rec in iter_records(results):
        seen += 1
        variants = rec.get("variants") or {}
        if all("params" in v for v in variants.values()):
            continue
        key = repr((rec["task"], rec["backbone"], rec["config"]["resolved"].get("model_cfg"),
                    {k: v for k, v in rec["config"]["resolved"]["task_cfg"].items()
                     if k not in ("num_train", "num_valid", "num_test", "seed", "data_seed")}))
        if key not in cache:
            model = _model_for(rec)
            cache[key] = {"projected": variant_parameters(model, "projected"),
                          "relaxed": variant_parameters(model, "relaxed"), "total": model.num_parameters()}
        counts = cache[key]
        if counts["total"] != rec["params"]:
            raise RuntimeError(f"{path}: the rebuilt model has {counts['total']} parameters, the record "
                               f"{rec['params']}; not migrated")
        for name, var in variants.items():
            var.setdefault("params", counts["projected"] if name == "projected" else counts["relaxed"])
        write_record(path, rec)
        updated += 1
    return updated, seen


def portable_commands(results: Path | str) -> tuple[int, int]:
    """Record commands without machine paths; returns (records updated, records seen)."""
    from benchmark.provenance import portable_command
    from benchmark.record import iter_records, write_record
    updated = seen = 0
    for path, rec in iter_records(results):
        seen += 1
        prov = rec.get("provenance") or {}
        command = prov.get("command")
        if not isinstance(command, list) or portable_command(command) == command:
            continue
        prov["command"] = portable_command(command)
        write_record(path, rec)
        updated += 1
    return updated, seen


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    results = Path(argv[0] if argv else "results")
    updated, seen = add_variant_params(results)
    print(f"{updated} of {seen} records under {results / 'runs'} got per-variant parameter counts")
    updated, seen = portable_commands(results)
    print(f"{updated} of {seen} records under {results / 'runs'} had machine paths in their command")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
