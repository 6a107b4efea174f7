"""Experiment tracking while runs train: one W&B run per benchmark run (:mod:`.wandb_runs`)."""

from benchmark.tracking.wandb_runs import WandbRunLogger, flatten_row, init_timeout, log_record_to_wandb, wandb_mode

__all__ = ["WandbRunLogger", "flatten_row", "init_timeout", "log_record_to_wandb", "wandb_mode"]
