"""The pose model folder: config round trip, weights-only checkpoints, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cryopose.data import PreprocessConfig
from cryopose.errors import InputError
from cryopose.models import (
    Image2Sphere,
    Image2SphereConfig,
    PoseModelSpec,
    load_pose_model,
    save_pose_model,
    weights_name,
)

NET = Image2SphereConfig(image_size=16, encoder_width=4, lmax=2, output_order=1)


def _spec(halves: tuple[int, ...] = (1, 2)) -> PoseModelSpec:
    return PoseModelSpec(NET, PreprocessConfig(image_size=16, mask=True), "D7", halves, {"k": 1})


def test_round_trip_keeps_config_and_weights(tmp_path: Path) -> None:
    torch.manual_seed(0)
    nets = {1: Image2Sphere(NET), 2: Image2Sphere(NET)}
    save_pose_model(tmp_path, _spec(), nets)
    spec, loaded = load_pose_model(tmp_path)
    assert spec == _spec() and spec.extra == {"k": 1}
    images = torch.randn(2, 1, 16, 16)
    for half in (1, 2):
        nets[half].eval()
        torch.testing.assert_close(loaded[half](images), nets[half](images), rtol=0, atol=0)
    # The two halves are different networks, not one saved twice.
    assert not torch.equal(loaded[1](images), loaded[2](images))


def test_checkpoint_is_weights_only_and_about_the_size_of_the_weights(tmp_path: Path) -> None:
    net = Image2Sphere(NET)
    save_pose_model(tmp_path, _spec((0,)), {0: net})
    path = tmp_path / weights_name(0)
    state = torch.load(path, weights_only=True)
    assert set(state) == set(net.state_dict())
    tensor_bytes = sum(t.numel() * t.element_size() for t in net.state_dict().values())
    assert path.stat().st_size < 1.2 * tensor_bytes + 64_000


def test_missing_and_mismatched_weights_name_the_file(tmp_path: Path) -> None:
    save_pose_model(tmp_path, _spec(), {1: Image2Sphere(NET)})
    with pytest.raises(InputError, match=r"half2\.pt"):
        load_pose_model(tmp_path)
    other = Image2Sphere(Image2SphereConfig(image_size=16, encoder_width=8, lmax=2, output_order=1))
    save_pose_model(tmp_path, _spec(), {1: Image2Sphere(NET), 2: other})
    with pytest.raises(InputError, match="do not fit"):
        load_pose_model(tmp_path)


def test_bad_config_files_are_reported(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"config\.json"):
        load_pose_model(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        load_pose_model(tmp_path)
    values = _spec().to_dict()
    values["network"]["colour"] = 3
    (tmp_path / "config.json").write_text(json.dumps(values))
    with pytest.raises(InputError, match="colour"):
        load_pose_model(tmp_path)
    with pytest.raises(InputError):
        PoseModelSpec(NET, PreprocessConfig(), "X9")
