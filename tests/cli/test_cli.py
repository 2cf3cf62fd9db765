"""End-to-end runs of the command line on small real and simulated files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import torch

import cryopose
from cryopose.cli.main import main

DATA = Path(__file__).parents[1] / "data"


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_version_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["--version"], capsys)
    assert code == 0
    assert out.strip() == f"cryopose {cryopose.__version__}"
    code, out, _ = run(["--help"], capsys)
    assert code == 0
    for command in ("info", "density", "simulate", "project", "reconstruct", "fsc", "demo", "tomo"):
        assert command in out


def test_every_command_help_has_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    commands = [
        ["info"],
        ["density"],
        ["simulate", "particles"],
        ["project"],
        ["reconstruct"],
        ["fsc"],
        ["demo"],
        ["tomo", "simulate"],
        ["tomo", "evaluate"],
        ["tomo", "match"],
    ]
    for command in commands:
        code, out, _ = run([*command, "--help"], capsys)
        assert code == 0, command
        assert "Example: cryopose" in out, command


def test_info_on_every_test_file(capsys: pytest.CaptureFixture[str]) -> None:
    files = sorted(
        p
        for p in DATA.rglob("*")
        if p.is_file() and p.name != "README.md" and p.name != "header_only.mrc"
    )
    assert len(files) > 30
    code, out, err = run(["info", "--json", *map(str, files)], capsys)
    assert code == 0, err
    summaries = json.loads(out)
    assert [s["path"] for s in summaries] == [str(p) for p in files]
    by_name = {Path(s["path"]).name: s for s in summaries}
    relion31 = by_name["relion31.star"]
    assert relion31["particles"] == 5
    assert relion31["optics_groups"][0]["pixel_size"] == pytest.approx(2.806)
    assert relion31["has"] == {
        "poses": True,
        "shifts": True,
        "ctf": True,
        "half_sets": True,
        "image_names": True,
    }
    emd = by_name["EMD-3197.map"]
    with mrcfile.open(DATA / "EMD-3197.map", permissive=True) as m:
        data = np.asarray(m.data, dtype=np.float64)
    assert emd["shape"] == list(data.shape)
    assert emd["mean"] == pytest.approx(data.mean(), rel=1e-5)
    assert emd["std"] == pytest.approx(data.std(), rel=1e-4)
    apo = by_name["6z6u.pdb.gz"]
    assert apo["chains"] == 24
    assert apo["point_group"] == "O"


def test_info_human_output(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["info", str(DATA / "particles" / "relion31.star")], capsys)
    assert code == 0
    assert "particles: 5" in out
    assert "2.806" in out


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("header_only.mrc", "expected 131072 bytes of data"),
        ("missing.star", "no such file"),
    ],
)
def test_bad_input_is_one_line_without_traceback(
    name: str, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = DATA / name
    code, out, err = run(["info", str(path)], capsys)
    assert code == 1
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1
    assert str(path) in lines[0] and expected in lines[0]
    assert "Traceback" not in err


def test_debug_shows_the_traceback() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "cryopose", "--debug", "info", str(DATA / "nope.star")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr


def test_usage_error_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["info", "--no-such-flag"], capsys)
    assert code == 2
    assert "No such option" in err


def test_density_simulate_reconstruct_fsc(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = DATA / "structures" / "1s3x.pdb.gz"
    code, _, err = run(
        ["density", str(model), "--angpix", "4", "--box", "32", "-o", str(tmp_path / "m.mrc")],
        capsys,
    )
    assert code == 0, err
    code, _, err = run(
        [
            "simulate",
            "particles",
            "--map",
            str(tmp_path / "m.mrc"),
            "-n",
            "300",
            "--snr",
            "0",
            "--seed",
            "3",
            "-o",
            str(tmp_path / "sim"),
        ],
        capsys,
    )
    assert code == 0, err
    star = tmp_path / "sim" / "particles.star"
    assert star.exists()
    code, out, err = run(
        ["reconstruct", str(star), "--ctf", "--halves", "-o", str(tmp_path / "rec.mrc")], capsys
    )
    assert code == 0, err
    for name in ("rec.mrc", "rec_half1.mrc", "rec_half2.mrc", "rec_fsc.json"):
        assert (tmp_path / name).exists(), name
    code, out, err = run(
        [
            "fsc",
            str(tmp_path / "rec.mrc"),
            str(tmp_path / "m.mrc"),
            "--json",
            "--plot",
            str(tmp_path / "fsc.png"),
        ],
        capsys,
    )
    assert code == 0, err
    result = json.loads(out)
    # Noise-free particles at the true poses reproduce the map they were simulated from.
    assert result["pcc"] > 0.95
    assert result["resolution_fsc_0.5"] < 12.0
    assert (tmp_path / "fsc.png").stat().st_size > 1000


def test_project_matches_simulated_clean_images(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = DATA / "structures" / "1s3x.pdb.gz"
    run(
        ["density", str(model), "--angpix", "4", "--box", "32", "-o", str(tmp_path / "m.mrc")],
        capsys,
    )
    run(
        [
            "simulate",
            "particles",
            "--map",
            str(tmp_path / "m.mrc"),
            "-n",
            "20",
            "--snr",
            "0",
            "-o",
            str(tmp_path / "sim"),
        ],
        capsys,
    )
    code, _, err = run(
        [
            "project",
            str(tmp_path / "m.mrc"),
            str(tmp_path / "sim" / "particles.star"),
            "--ctf",
            "-o",
            str(tmp_path / "proj.mrcs"),
        ],
        capsys,
    )
    assert code == 0, err
    proj = torch.from_numpy(mrcfile.read(tmp_path / "proj.mrcs").copy())
    sim = torch.from_numpy(mrcfile.read(tmp_path / "sim" / "particles_000.mrcs").copy())
    assert proj.shape == sim.shape == (20, 32, 32)
    corr = torch.nn.functional.cosine_similarity(
        (proj - proj.mean((1, 2), keepdim=True)).flatten(1),
        (sim - sim.mean((1, 2), keepdim=True)).flatten(1),
    )
    assert float(corr.min()) > 0.999


def test_tomo_simulate_and_evaluate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(
        [
            "tomo",
            "simulate",
            "-o",
            str(tmp_path / "t"),
            "--size",
            "64",
            "--seed",
            "3",
            "--n-tilts",
            "21",
        ],
        capsys,
    )
    assert code == 0, err
    truth = (tmp_path / "t" / "particle_locations.txt").read_text().splitlines()
    assert truth
    picks = tmp_path / "picks.txt"
    picks.write_text("\n".join(" ".join(line.split()[:4]) for line in truth) + "\n")
    code, out, err = run(
        ["tomo", "evaluate", str(picks), "--truth", str(tmp_path / "t"), "--json"], capsys
    )
    assert code == 0, err
    result = json.loads(out)
    assert set(result) >= {
        "tp",
        "fp",
        "fn",
        "multiple_hits",
        "outside",
        "avg_distance",
        "precision",
        "recall",
        "f1",
        "miss_rate",
        "per_class_f1",
    }
    assert result["f1"] == 1.0
    assert result["tp"] == len(truth) - sum("fiducial" in t or "vesicle" in t for t in truth)


def test_tomo_simulate_assembly_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--assembly deposited`` reaches the simulation; an unknown choice is a clear error."""
    args = ["tomo", "simulate", "-o", str(tmp_path / "t"), "--size", "32", "--n-tilts", "5"]
    code, _, err = run([*args, "--n-particles", "3", "--assembly", "deposited"], capsys)
    assert code == 0, err
    config = json.loads((tmp_path / "t" / "simulation.json").read_text())["config"]
    assert config["assembly"] == "deposited"
    code, _, err = run(["tomo", "simulate", "-o", str(tmp_path / "u"), "--assembly", "x"], capsys)
    assert code != 0
    assert "assembly" in err
