"""Lightning callbacks of pose training: atomic resumable checkpoints and per-epoch reports.

:class:`AtomicLastCheckpoint` writes the full training state (weights, optimiser, epoch,
schedule, best weights, early-stopping counters) to ``last.ckpt`` at the end of every
validated epoch, through a temporary file renamed into place, so an interrupted run always
leaves the previous complete checkpoint. :class:`EpochReport` prints one readable line per
epoch when stderr is not a terminal (Lightning's bar is used in a terminal) and rewrites
``train_log.csv``.

>>> EpochReport.format_line("half1", {"epoch": 2.0, "train_loss": 5.25, "val_median_deg": 12.5,
...     "val_mean_deg": 30.0, "lr": 0.001, "images_per_second": 40.0, "epoch_seconds": 3.0})
'half1 epoch 3: loss 5.250, val median error 12.50 deg (mean 30.00), lr 1.0e-03, 40.0 images/s'
"""

from __future__ import annotations

import csv
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import lightning as L

from cryopose._atomic import atomic_path
from cryopose.training.module import PoseModule

__all__ = ["LOG_COLUMNS", "AtomicLastCheckpoint", "EpochReport", "write_train_log"]

LOG_COLUMNS = (
    "stage",
    "epoch",
    "train_loss",
    "val_median_deg",
    "val_mean_deg",
    "lr",
    "images_per_second",
    "epoch_seconds",
)


class AtomicLastCheckpoint(L.Callback):
    """Write ``path`` (a Lightning checkpoint) atomically after every validated epoch.

    Parameters
    ----------
    path
        Checkpoint file, e.g. ``MODEL_DIR/checkpoints/half1/last.ckpt``.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Save once the epoch's validation (and the schedule's step) is done."""
        if not isinstance(pl_module, PoseModule) or pl_module.validated_epoch != (
            trainer.current_epoch
        ):
            # An epoch cut short (max_time) is redone on resume, from the last full one.
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Every process takes part (the strategy gathers state and synchronises); only
        # global rank 0 writes, so the temporary name is fixed rather than drawn.
        tmp = self.path.with_name(f".{self.path.name}.part")
        trainer.save_checkpoint(tmp)
        if trainer.is_global_zero:
            os.replace(tmp, self.path)
        trainer.strategy.barrier("cryopose_checkpoint")


class EpochReport(L.Callback):
    """Per-epoch log lines (off a terminal) and ``train_log.csv`` (global rank 0 only).

    Parameters
    ----------
    stage
        Name of what is trained (``"pretrain"``, ``"half1"``...), the CSV's first column.
    log_path
        CSV to rewrite every epoch; ``None`` for none.
    previous_rows
        Rows of earlier stages to keep at the top of the CSV.
    print_lines
        Print one line per epoch to stderr.
    """

    def __init__(
        self,
        stage: str,
        log_path: str | Path | None,
        previous_rows: Sequence[dict[str, float | str]] = (),
        print_lines: bool = True,
    ) -> None:
        self.stage = stage
        self.log_path = None if log_path is None else Path(log_path)
        self.previous_rows = list(previous_rows)
        self.print_lines = print_lines

    @staticmethod
    def format_line(stage: str, row: dict[str, float]) -> str:
        """One human-readable line for an epoch's history row (epochs counted from 1)."""
        return (
            f"{stage} epoch {int(row['epoch']) + 1}: loss {row['train_loss']:.3f}, "
            f"val median error {row['val_median_deg']:.2f} deg "
            f"(mean {row['val_mean_deg']:.2f}), lr {row['lr']:.1e}, "
            f"{row['images_per_second']:.1f} images/s"
        )

    def rows(self, pl_module: PoseModule) -> list[dict[str, float | str]]:
        """Return the CSV rows: earlier stages, then this stage's history."""
        own: list[dict[str, float | str]] = [
            {"stage": self.stage, **row} for row in pl_module.history
        ]
        return self.previous_rows + own

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Report the epoch just validated."""
        if not trainer.is_global_zero or not isinstance(pl_module, PoseModule):
            return
        if pl_module.validated_epoch != trainer.current_epoch or not pl_module.history:
            return
        if self.print_lines:
            print(self.format_line(self.stage, pl_module.history[-1]), file=sys.stderr, flush=True)
        if self.log_path is not None:
            write_train_log(self.log_path, self.rows(pl_module))


def write_train_log(path: str | Path, rows: Sequence[dict[str, float | str]]) -> None:
    """Atomically write per-epoch rows as CSV with the columns :data:`LOG_COLUMNS`."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=LOG_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row[k] for k in LOG_COLUMNS})
