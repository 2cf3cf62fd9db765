"""Two-process DDP on CPU (gloo) through Lightning: the run finishes and writes the model.

Lightning's ``ddp`` strategy relaunches the running script for ranks > 0, so the training runs
in a script of its own (not inside pytest, which it would relaunch).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from cryopose.models import load_pose_model

SCRIPT = """
import json, sys
import torch
torch.set_num_threads(1)
from cryopose.data import PreprocessConfig
from cryopose.models import Image2SphereConfig
from cryopose.training import TrainConfig, train_pose_model

net = Image2SphereConfig(image_size=16, encoder_width=4, sphere_features=8, s2_features=8,
                         lmax=2, activation_order=1, output_order=1)
config = TrainConfig(batch_size=8, max_epochs=2, half_sets=False, augment=False,
                     device="cpu", devices=2, strategy="ddp", validation_fraction=0.25)
result = train_pose_model(sys.argv[1], sys.argv[2], net,
                          PreprocessConfig(image_size=16, normalise=False), config=config,
                          progress=False)
r = result.halves[0]
print("RESULT", json.dumps({"epochs": r.epochs, "median": r.best_median_deg,
                            "n_train": len(r.train_rows)}), flush=True)
"""


def test_ddp_two_processes_on_cpu(clean_star: Path, tmp_path: Path) -> None:
    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT)
    model = tmp_path / "model"
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "WORLD_SIZE")}
    done = subprocess.run(
        [sys.executable, str(script), str(clean_star), str(model)],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT")]
    # Both ranks finish and agree (the validation errors are gathered across processes).
    assert len(lines) == 2
    results = [json.loads(ln.split(" ", 1)[1]) for ln in lines]
    assert results[0] == results[1]
    assert results[0]["epochs"] == 2 and results[0]["n_train"] == 48
    spec, nets = load_pose_model(model)
    assert spec.halves == (0,)
    assert torch.load(model / "full.pt", weights_only=True).keys() == nets[0].state_dict().keys()
    assert (model / "validation_half0.pt").is_file()
    assert (model / "checkpoints" / "half0" / "last.ckpt").is_file()
