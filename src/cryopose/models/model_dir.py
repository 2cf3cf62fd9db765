"""A trained pose model on disk: one folder, a JSON config and weights-only checkpoints.

Layout of ``MODEL_DIR``::

    config.json        {"format": 1, "network": {...}, "preprocess": {...}, "symmetry": "D7",
                        "halves": [1, 2], "extra": {...}}
    half1.pt, half2.pt state dicts of the models trained on half 1 and half 2 (gold standard:
                       particles of half 1 are predicted by ``half2.pt`` and vice versa), or
    full.pt            one model trained on every particle (``halves == [0]``)

Checkpoints hold tensors only and load with ``torch.load(..., weights_only=True)``, so a model
folder from an untrusted source cannot run code. ``extra`` carries what training wants to keep
with the model (training settings, validation statistics for pruning).

>>> import tempfile, torch
>>> from cryopose.models import Image2Sphere, Image2SphereConfig
>>> from cryopose.data import PreprocessConfig
>>> spec = PoseModelSpec(Image2SphereConfig(image_size=16, encoder_width=4, lmax=2,
...                      output_order=1), PreprocessConfig(image_size=16), "C1", (0,))
>>> folder = tempfile.mkdtemp()
>>> save_pose_model(folder, spec, {0: Image2Sphere(spec.network)})
>>> loaded, nets = load_pose_model(folder)
>>> loaded == spec, sorted(nets)
(True, [0])
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cryopose._atomic import atomic_path
from cryopose.data.preprocess import PreprocessConfig
from cryopose.errors import InputError
from cryopose.geometry.symmetry import symmetry_group
from cryopose.models.image2sphere import Image2Sphere, Image2SphereConfig

__all__ = [
    "CONFIG_NAME",
    "PoseModelSpec",
    "load_pose_model",
    "read_pose_model_spec",
    "save_pose_model",
    "save_weights",
    "weights_name",
]

CONFIG_NAME = "config.json"
FORMAT = 1


@dataclass(frozen=True)
class PoseModelSpec:
    """What a pose model folder describes.

    Attributes
    ----------
    network
        Architecture of every model in the folder.
    preprocess
        Preprocessing the models were trained with (inference must apply the same).
    symmetry
        Point group of the particle (``"C1"``, ``"D7"``...).
    halves
        ``(1, 2)`` for gold-standard half-set models, ``(0,)`` for one model on all data.
    extra
        JSON-ready extras kept with the model (training settings, validation statistics).
    """

    network: Image2SphereConfig
    preprocess: PreprocessConfig
    symmetry: str = "C1"
    halves: tuple[int, ...] = (1, 2)
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        symmetry_group(self.symmetry)  # raises InputError naming a bad group
        if self.halves not in ((1, 2), (0,)):
            raise InputError(None, f"expected halves (1, 2) or (0,), got {self.halves}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the content of ``config.json``)."""
        return {
            "format": FORMAT,
            "network": self.network.to_dict(),
            "preprocess": self.preprocess.to_dict(),
            "symmetry": self.symmetry,
            "halves": list(self.halves),
            "extra": dict(self.extra),
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], path: Path | None = None) -> PoseModelSpec:
        """Inverse of :meth:`to_dict`; a wrong format raises :class:`InputError` naming ``path``."""
        if values.get("format") != FORMAT:
            raise InputError(path, f"expected a cryopose pose model config of format {FORMAT}")
        try:
            return cls(
                network=Image2SphereConfig.from_dict(dict(values["network"])),
                preprocess=PreprocessConfig.from_dict(dict(values["preprocess"])),
                symmetry=str(values["symmetry"]),
                halves=tuple(int(h) for h in values["halves"]),
                extra=dict(values.get("extra", {})),
            )
        except KeyError as err:
            raise InputError(path, f"missing key {err} in the pose model config") from None
        except InputError as err:
            raise InputError(path, err.message, err.where) from None


def weights_name(half: int) -> str:
    """File name of the weights of ``half`` (1, 2, or 0 for the all-data model)."""
    return "full.pt" if half == 0 else f"half{half}.pt"


def save_weights(model_dir: str | Path, half: int, model: torch.nn.Module) -> Path:
    """Atomically write ``model``'s state dict (on CPU) as the weights of ``half``."""
    path = Path(model_dir) / weights_name(half)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def save_pose_model(
    model_dir: str | Path, spec: PoseModelSpec, models: Mapping[int, torch.nn.Module]
) -> None:
    """Write ``config.json`` and the weights of every half in ``models`` (half -> network)."""
    folder = Path(model_dir)
    folder.mkdir(parents=True, exist_ok=True)
    for half, model in models.items():
        if half not in spec.halves:
            raise InputError(folder, f"half {half} is not one of the spec's halves {spec.halves}")
        save_weights(folder, half, model)
    with atomic_path(folder / CONFIG_NAME) as tmp:
        Path(tmp).write_text(json.dumps(spec.to_dict(), indent=2) + "\n")


def read_pose_model_spec(model_dir: str | Path) -> PoseModelSpec:
    """Read ``MODEL_DIR/config.json``."""
    path = Path(model_dir) / CONFIG_NAME
    if not path.is_file():
        raise InputError(path, "expected a cryopose pose model folder with config.json")
    try:
        values = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InputError(path, f"not valid JSON ({err})") from None
    return PoseModelSpec.from_dict(values, path)


def load_pose_model(
    model_dir: str | Path, device: str | torch.device = "cpu"
) -> tuple[PoseModelSpec, dict[int, Image2Sphere]]:
    """Load the spec and every half's network (eval mode, on ``device``).

    Raises
    ------
    InputError
        A missing weights file, or weights that do not fit the configured architecture.
    """
    folder = Path(model_dir)
    spec = read_pose_model_spec(folder)
    nets: dict[int, Image2Sphere] = {}
    for half in spec.halves:
        path = folder / weights_name(half)
        if not path.is_file():
            raise InputError(path, f"missing the weights of half {half}")
        state = torch.load(path, map_location="cpu", weights_only=True)
        net = Image2Sphere(spec.network)
        try:
            net.load_state_dict(state)
        except RuntimeError as err:
            first = str(err).splitlines()[0]
            raise InputError(path, f"weights do not fit the configured network: {first}") from None
        nets[half] = net.to(device).eval()
    return spec, nets
