"""The Lightning module that trains an :class:`~cryopose.models.Image2Sphere` pose network.

One training step: logits over the HEALPix SO(3) grid of the network's output order, the grid
cells of every symmetry mate of the true pose (:func:`cryopose.models.rotation_label_indices`),
the confidence-weighted smoothed cross-entropy (:mod:`cryopose.training.losses`), RAdam.
Validation predicts the most probable cell and measures its angular error to the true pose
modulo the point group (degrees); the median of these errors drives the learning-rate
schedule (ReduceLROnPlateau, stepped here right after validation so that the checkpoint
written at the end of the epoch holds the stepped schedule), early stopping and the choice of
the best weights. With ``lr_schedule="cosine"`` the rate instead follows
:func:`cosine_learning_rate` of the stage's progress, set before every step.
The best weights, the schedule and the per-epoch history travel in the
Lightning checkpoint (``checkpoint["cryopose"]``), so a resumed run continues all of them.

>>> from cryopose.models import Image2SphereConfig
>>> from cryopose.training.config import TrainConfig
>>> module = PoseModule(Image2SphereConfig(image_size=16, encoder_width=4, lmax=2,
...                     output_order=1), TrainConfig(), symmetry="D2")
>>> module.group.shape, module.grid.shape
(torch.Size([4, 3, 3]), torch.Size([576, 3, 3]))
"""

from __future__ import annotations

import math
import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Timer
from torch.optim.lr_scheduler import ReduceLROnPlateau

from cryopose.data.dataset import ParticleBatch
from cryopose.geometry.distance import angular_error
from cryopose.geometry.healpix import so3_healpix_grid
from cryopose.geometry.symmetry import symmetry_group
from cryopose.models.image2sphere import Image2Sphere, Image2SphereConfig
from cryopose.models.labels import rotation_label_indices
from cryopose.training.config import TrainConfig
from cryopose.training.losses import weighted_pose_loss

__all__ = ["PoseModule", "ValidationOutputs", "cosine_learning_rate", "validation_outputs"]

# Cells summed in the ``top10_score`` pruning statistic.
TOP_SCORE_CELLS = 10


class ValidationOutputs(dict[str, torch.Tensor]):
    """Per-particle validation statistics (what ``validation_half{h}.pt`` holds).

    Keys: ``pred_rotations`` ``(n, 3, 3)`` float32 top-1 grid rotation, ``true_rotations``
    ``(n, 3, 3)`` float32, ``max_probability`` ``(n,)`` top-1 probability, ``top10_score``
    ``(n,)`` sum of the 10 largest probabilities, ``angular_error_deg`` ``(n,)`` top-1 error
    modulo the point group, ``rows`` ``(n,)`` int64 rows of the particle table.
    """


def cosine_learning_rate(initial: float, final: float, progress: float) -> float:
    """Half-cosine decay: ``initial`` at progress 0, ``final`` at progress >= 1.

    >>> cosine_learning_rate(1.0, 0.0, 0.5)
    0.5
    """
    p = min(max(progress, 0.0), 1.0)
    return final + (initial - final) * 0.5 * (1.0 + math.cos(math.pi * p))


def _top_predictions(
    logits: torch.Tensor, grid: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-1 rotation ``(B, 3, 3)``, its probability ``(B,)`` and the top-10 mass ``(B,)``."""
    probs = torch.softmax(logits.detach().to(torch.float32), dim=-1)
    top = probs.topk(min(TOP_SCORE_CELLS, probs.shape[-1]), dim=-1)
    return grid[top.indices[:, 0]], top.values[:, 0], top.values.sum(dim=-1)


@torch.no_grad()
def validation_outputs(
    net: Image2Sphere,
    batches: Any,
    symmetry: str = "C1",
    device: str | torch.device = "cpu",
) -> ValidationOutputs:
    """Run ``net`` over validation batches and gather the pruning statistics.

    Parameters
    ----------
    net
        The trained network (put in eval mode here).
    batches
        Iterable of :class:`~cryopose.data.ParticleBatch` (a ``DataLoader`` with ``collate``).
    symmetry
        Point group of the particle, for the angular error.
    device
        Where to run the network.

    Returns
    -------
    ValidationOutputs
        Tensors on the CPU, particles in the order of ``batches``.
    """
    net = net.to(device).eval()
    grid = so3_healpix_grid(net.config.output_order, torch.float32).to(device)
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in _OUTPUT_KEYS}
    for batch in batches:
        logits = net(batch.image.to(device))
        pred, p_max, top10 = _top_predictions(logits, grid)
        true = batch.rotation.to(torch.float32)
        parts["pred_rotations"].append(pred.cpu())
        parts["true_rotations"].append(true)
        parts["max_probability"].append(p_max.cpu())
        parts["top10_score"].append(top10.cpu())
        parts["angular_error_deg"].append(
            angular_error(true.double(), pred.cpu().double(), symmetry).to(torch.float32)
        )
        parts["rows"].append(batch.metadata["index"].to(torch.int64))
    out = ValidationOutputs()
    for key, values in parts.items():
        out[key] = torch.cat(values) if values else torch.empty(0)
    return out


_OUTPUT_KEYS = (
    "pred_rotations",
    "true_rotations",
    "max_probability",
    "top10_score",
    "angular_error_deg",
    "rows",
)


class PoseModule(L.LightningModule):
    """Supervised training of an Image2Sphere network on particles with known poses.

    Parameters
    ----------
    network
        Architecture.
    config
        Training settings (learning rate, smoothing, schedule).
    symmetry
        Point group of the particle (labels and errors are symmetry-aware).
    initial_state
        Weights to start from (e.g. after pre-training); ``None``: random, seeded by
        ``config.seed``.

    Attributes
    ----------
    net
        The network.
    history
        One dict per validated epoch: ``epoch``, ``train_loss``, ``val_median_deg``,
        ``val_mean_deg``, ``lr`` (after the schedule's step), ``images_per_second``,
        ``epoch_seconds``.
    best_median_deg, best_mean_deg
        Best validation median error so far (and the mean at that epoch), degrees.
    best_state
        CPU copy of the weights at that epoch.
    """

    group: torch.Tensor
    grid: torch.Tensor

    def __init__(
        self,
        network: Image2SphereConfig,
        config: TrainConfig,
        symmetry: str = "C1",
        initial_state: dict[str, torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        torch.manual_seed(config.seed)
        self.net = Image2Sphere(network)
        if initial_state is not None:
            self.net.load_state_dict(initial_state)
        self.config = config
        self.symmetry = symmetry
        self.order = network.output_order
        self.register_buffer("group", symmetry_group(symmetry).to(torch.float32), persistent=False)
        self.register_buffer("grid", so3_healpix_grid(self.order, torch.float32), persistent=False)
        self.plateau: ReduceLROnPlateau | None = None
        self._plateau_state: dict[str, Any] | None = None
        self.history: list[dict[str, float]] = []
        self.best_median_deg = math.inf
        self.best_mean_deg = math.inf
        self.best_state: dict[str, torch.Tensor] | None = None
        self.validated_epoch = -1
        self._loss_sum = 0.0
        self._loss_weight = 0.0
        self._images = 0
        self._epoch_start = 0.0
        self._train_seconds = 0.0
        self._val_errors: list[torch.Tensor] = []

    # ------------------------------------------------------------------ optimisation

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """RAdam; the plateau schedule is kept here and stepped after each validation."""
        optimiser = torch.optim.RAdam(
            self.net.parameters(),
            lr=self.config.learning_rate,
            weight_decay=self.config.weight_decay,
        )
        self.plateau = ReduceLROnPlateau(
            optimiser,
            mode="min",
            factor=self.config.lr_factor,
            patience=self.config.lr_patience,
            min_lr=self.config.min_lr,
        )
        if self._plateau_state is not None:
            self.plateau.load_state_dict(self._plateau_state)
        return optimiser

    def stage_progress(self) -> float:
        """Fraction of the stage's budget used: steps over ``max_epochs``, time over ``max_time``.

        The larger of the two, in ``[0, 1]`` (Lightning's ``Timer`` keeps the time over resumed
        runs).
        """
        trainer = self.trainer
        steps_per_epoch = trainer.num_training_batches
        progress = 0.0
        epochs = trainer.max_epochs
        if epochs and epochs > 0 and math.isfinite(steps_per_epoch) and steps_per_epoch > 0:
            progress = trainer.global_step / (epochs * steps_per_epoch)
        for callback in trainer.callbacks:  # type: ignore[attr-defined]
            if isinstance(callback, Timer):
                remaining = callback.time_remaining("train")
                if remaining is not None:
                    used = callback.time_elapsed("train")
                    progress = max(progress, used / max(used + remaining, 1e-9))
        return min(max(progress, 0.0), 1.0)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """Set the cosine schedule's rate for this step (``lr_schedule="cosine"``)."""
        if self.config.lr_schedule != "cosine":
            return
        lr = cosine_learning_rate(
            self.config.learning_rate, self.config.min_lr, self.stage_progress()
        )
        for optimiser in self.trainer.optimizers:
            for group in optimiser.param_groups:
                group["lr"] = lr

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, M)`` of ``(B, C, N, N)`` images."""
        out: torch.Tensor = self.net(images)
        return out

    def loss(self, batch: ParticleBatch) -> torch.Tensor:
        """Confidence-weighted symmetric cross-entropy of a batch (nats)."""
        labels = rotation_label_indices(batch.rotation, self.order, self.symmetry)
        return weighted_pose_loss(
            self(batch.image), labels, batch.confidence, self.config.label_smoothing
        )

    def on_train_epoch_start(self) -> None:
        """Select the epoch's augmentation draws and start the epoch's clock."""
        _set_dataset_epoch(self.trainer.train_dataloader, self.current_epoch)
        self._loss_sum, self._loss_weight, self._images = 0.0, 0.0, 0
        self._epoch_start = time.perf_counter()

    def training_step(self, batch: ParticleBatch, batch_idx: int) -> torch.Tensor:
        """One optimiser step's loss."""
        loss = self.loss(batch)
        n = batch.image.shape[0]
        self._loss_sum += float(loss.detach()) * n
        self._loss_weight += n
        self._images += n
        return loss

    # ------------------------------------------------------------------ validation

    def on_validation_epoch_start(self) -> None:
        """Stop the training clock (validation runs after the epoch's last step)."""
        self._train_seconds = time.perf_counter() - self._epoch_start
        self._val_errors = []

    def validation_step(self, batch: ParticleBatch, batch_idx: int) -> None:
        """Top-1 angular errors (degrees, modulo the group) of a validation batch."""
        pred, _, _ = _top_predictions(self(batch.image), self.grid)
        error = angular_error(batch.rotation.double(), pred.double(), self.group.double())
        self._val_errors.append(error.to(torch.float32))

    def on_validation_epoch_end(self) -> None:
        """Median/mean error over every process; schedule, best weights and history."""
        if self.trainer.sanity_checking:
            return
        errors = (
            torch.cat(self._val_errors) if self._val_errors else torch.empty(0, device=self.device)
        )
        if self.trainer.world_size > 1:
            # DistributedSampler pads the processes' shares to equal sizes.
            gathered = self.all_gather(errors)
            assert isinstance(gathered, torch.Tensor)
            errors = gathered.reshape(-1)
        median = float(errors.median()) if errors.numel() else math.inf
        mean = float(errors.mean()) if errors.numel() else math.inf
        self.log("val_median_deg", median, sync_dist=False)
        if self.plateau is not None and self.config.lr_schedule == "plateau":
            self.plateau.step(median)
        if median < self.best_median_deg:
            self.best_median_deg, self.best_mean_deg = median, mean
            self.best_state = {
                k: v.detach().cpu().clone() for k, v in self.net.state_dict().items()
            }
        world = self.trainer.world_size
        seconds = max(self._train_seconds, 1e-9)
        self.history.append(
            {
                "epoch": float(self.current_epoch),
                "train_loss": self._loss_sum / max(self._loss_weight, 1.0),
                "val_median_deg": median,
                "val_mean_deg": mean,
                "lr": float(self.trainer.optimizers[0].param_groups[0]["lr"]),
                "images_per_second": self._images * world / seconds,
                "epoch_seconds": seconds,
            }
        )
        self.validated_epoch = self.current_epoch

    # ------------------------------------------------------------------ checkpoint state

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the schedule, best weights and history with Lightning's state."""
        checkpoint["cryopose"] = {
            "plateau": None if self.plateau is None else self.plateau.state_dict(),
            "history": list(self.history),
            "best_median_deg": self.best_median_deg,
            "best_mean_deg": self.best_mean_deg,
            "best_state": self.best_state,
            "validated_epoch": self.validated_epoch,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore what :meth:`on_save_checkpoint` kept."""
        state = checkpoint.get("cryopose", {})
        self._plateau_state = state.get("plateau")
        if self.plateau is not None and self._plateau_state is not None:
            self.plateau.load_state_dict(self._plateau_state)
        self.history = list(state.get("history", []))
        self.best_median_deg = float(state.get("best_median_deg", math.inf))
        self.best_mean_deg = float(state.get("best_mean_deg", math.inf))
        self.best_state = state.get("best_state")
        self.validated_epoch = int(state.get("validated_epoch", -1))


def _set_dataset_epoch(loader: Any, epoch: int) -> None:
    """Call ``set_epoch`` on the dataset under a loader (through ``Subset`` wrappers)."""
    dataset = getattr(loader, "dataset", None)
    while dataset is not None:
        setter = getattr(dataset, "set_epoch", None)
        if callable(setter):
            setter(epoch)
            return
        dataset = getattr(dataset, "dataset", None)
