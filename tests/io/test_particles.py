"""ParticleTable: RELION 3.0 / 3.1 particle files, conversions, RELION reading what we write."""

from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cryopose.errors import InputError
from cryopose.geometry.euler import euler_to_matrix
from cryopose.io.particles import ParticleTable, read_particles, write_particles
from cryopose.io.star import read_star, write_star

DATA = Path(__file__).parents[1] / "data"
R31 = DATA / "particles" / "relion31.star"
R30 = DATA / "particles" / "empiar_10076_7.star"
PARTICLE_FILES = [
    DATA / "particles" / "relion31.star",
    DATA / "particles" / "relion31.v2.star",
    DATA / "particles" / "empiar_10076_7.star",
    DATA / "starfiles" / "one_loop.star",
    DATA / "starfiles" / "empty_loop.star",
    DATA / "starfiles" / "rln_proj_65_centered.star",
    DATA / "starfiles" / "sample_particles_relion30.star",
    DATA / "starfiles" / "sample_particles_relion31.star",
    DATA / "starfiles" / "sample_relion_one_image.star",
    DATA / "starfiles" / "sample_relion_symmetry_group_D4.star",
]
RENAMED_30 = {
    "rlnMagnification",
    "rlnDetectorPixelSize",
    "rlnPixelSize",
    "rlnOriginX",
    "rlnOriginY",
}


def _relion_matrix(rot: float, tilt: float, psi: float) -> np.ndarray:
    """DESIGN.md's matrix written out by hand (independent of cryopose.geometry)."""
    a, b, g = (math.radians(x) for x in (rot, tilt, psi))
    ca, sa, cb, sb, cg, sg = (
        math.cos(a),
        math.sin(a),
        math.cos(b),
        math.sin(b),
        math.cos(g),
        math.sin(g),
    )
    return np.array(
        [
            [cg * cb * ca - sg * sa, cg * cb * sa + sg * ca, -cg * sb],
            [-sg * cb * ca - cg * sa, -sg * cb * sa + cg * ca, sg * sb],
            [sb * ca, sb * sa, cb],
        ]
    )


def _assert_same_values(a: pd.Series, b: pd.Series) -> None:
    if a.dtype.kind in "iuf" and b.dtype.kind in "iuf":
        np.testing.assert_array_equal(a.to_numpy(dtype=float), b.to_numpy(dtype=float))
    else:
        assert a.astype(str).tolist() == b.astype(str).tolist()


def test_relion31_table() -> None:
    t = read_particles(R31, particles_dir=DATA)
    assert (len(t), t.is_relion30, t.particles_block) == (5, False, "particles")
    assert t.has_poses and t.has_shifts and t.has_ctf and t.has_half_sets
    assert list(t.blocks) == ["optics", "particles"]
    np.testing.assert_array_equal(t.angpix(), [2.806] * 5)
    np.testing.assert_array_equal(t.image_size(), [256] * 5)
    R = t.rotations(torch.float64)
    for i, row in t.particles.iterrows():
        expected = _relion_matrix(row.rlnAngleRot, row.rlnAngleTilt, row.rlnAnglePsi)
        np.testing.assert_allclose(R[i].numpy(), expected, atol=1e-12)
    angles = torch.tensor(t.particles[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy())
    torch.testing.assert_close(R, euler_to_matrix(angles), rtol=0, atol=0)
    np.testing.assert_array_equal(
        t.shifts_angst(torch.float64).numpy(),
        t.particles[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy(),
    )
    locations = t.image_locations()
    assert locations == [((DATA / "relion31.mrcs").resolve(), i) for i in range(5)]
    # The stack (from cryoDRGN) predates MRC2014's 'MAP ' id: read nx, ny, nz directly.
    assert np.fromfile(locations[0][0], dtype="<i4", count=3).tolist() == [256, 256, 5]
    ctf = t.ctf_parameters()
    assert ctf["voltage"].tolist() == [300.0] * 5 and ctf["cs"].tolist() == [0.01] * 5
    assert ctf["defocus_u"][0].item() == 13108.082418
    np.testing.assert_array_equal(t.random_subset(), t.particles["rlnRandomSubset"].to_numpy())


def test_relion30_table() -> None:
    t = read_particles(R30)
    assert t.is_relion30 and t.optics is None and len(t) == 7 and not t.has_poses
    np.testing.assert_array_equal(t.angpix(), np.full(7, 5 * 1e4 / 38168))
    pd.testing.assert_frame_equal(t.merged(), t.particles)
    ctf = t.ctf_parameters()
    assert ctf["defocus_v"].tolist() == t.particles["rlnDefocusV"].tolist()
    assert ctf["phase_shift"].tolist() == [0.0] * 7 and ctf["ctf_scale"].tolist() == [1.0] * 7
    assert torch.count_nonzero(t.shifts_angst()) == 0 and not t.has_shifts
    with pytest.raises(InputError, match=r"image size needs column\(s\) rlnImageSize"):
        t.image_size()
    with pytest.raises(InputError, match="rlnAngleRot, rlnAngleTilt, rlnAnglePsi"):
        t.rotations()


def test_two_optics_groups_merge_per_row() -> None:
    t = read_particles(DATA / "starfiles" / "sample_particles_relion31.star")
    assert t.optics is not None and len(t.optics) == 2
    merged = t.merged()
    by_group = {int(r.rlnOpticsGroup): r for r in t.optics.itertuples()}
    for i, group in enumerate(t.particles["rlnOpticsGroup"]):
        assert merged["rlnVoltage"][i] == by_group[group].rlnVoltage
    assert set(merged["rlnVoltage"]) == {300.0, 200.0}


def test_pixel_and_angstrom_shifts_agree(tmp_path: Path) -> None:
    t30 = read_particles(DATA / "starfiles" / "sample_particles_relion30.star")
    apix = 5.0 * 1e4 / 37369.207031
    expected = t30.particles[["rlnOriginX", "rlnOriginY"]].to_numpy() * apix
    np.testing.assert_allclose(t30.shifts_angst(torch.float64).numpy(), expected, rtol=1e-15)
    write_particles(t30, tmp_path / "p.star")
    t31 = read_particles(tmp_path / "p.star")
    assert "rlnOriginX" not in t31.particles and "rlnOriginXAngst" in t31.particles
    np.testing.assert_allclose(t31.shifts_angst(torch.float64).numpy(), expected, rtol=1e-15)


@pytest.mark.parametrize("path", PARTICLE_FILES, ids=lambda p: p.name)
def test_round_trip_keeps_merged_values(path: Path, tmp_path: Path) -> None:
    t = read_particles(path)
    write_particles(t, tmp_path / "w.star")
    back = read_particles(tmp_path / "w.star")
    assert not back.is_relion30 and len(back) == len(t)
    before, after = t.merged(), back.merged()
    for column in before.columns:
        if t.is_relion30 and column in RENAMED_30:
            continue
        _assert_same_values(after[column], before[column])
    others = [k for k in t.blocks if k not in (t.particles_block, "optics")]
    assert [k for k in back.blocks if k not in ("optics", "particles")] == others
    if t.is_relion30 and len(t):
        np.testing.assert_array_equal(after["rlnImagePixelSize"].to_numpy(), t.angpix())
        if "rlnOriginX" in before:
            np.testing.assert_allclose(
                after["rlnOriginXAngst"].to_numpy(),
                before["rlnOriginX"].to_numpy() * t.angpix(),
                rtol=1e-15,
            )


def test_relion30_conversion_groups_optics(tmp_path: Path) -> None:
    t = read_particles(DATA / "starfiles" / "sample_particles_relion30.star")
    write_particles(t, tmp_path / "w.star")
    back = read_particles(tmp_path / "w.star")
    assert back.optics is not None
    # Two voltages in the file -> two optics groups, everything else per particle.
    assert sorted(back.optics["rlnVoltage"]) == [200.0, 300.0]
    assert "rlnVoltage" not in back.particles and "rlnMagnification" not in back.particles
    assert back.optics["rlnOpticsGroupName"].tolist() == ["opticsGroup1", "opticsGroup2"]


def test_extra_columns_and_blocks_are_kept(tmp_path: Path) -> None:
    t = read_particles(R31)
    t.particles["cryoposeIsJunk"] = np.arange(5) % 2
    t.blocks["general"] = {"rlnFinalResolution": 3.5}
    write_particles(t, tmp_path / "w.star")
    blocks = read_star(tmp_path / "w.star")
    assert list(blocks) == ["optics", "particles", "general"]
    particles = blocks["particles"]
    assert isinstance(particles, pd.DataFrame)
    assert particles["cryoposeIsJunk"].tolist() == [0, 1, 0, 1, 0]


def test_set_rotations_and_shifts(tmp_path: Path) -> None:
    t = read_particles(R31)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(5, 4, generator=g, dtype=torch.float64)
    q = q / q.norm(dim=1, keepdim=True)
    w, x, y, z = q.unbind(1)
    R = torch.stack(
        [
            torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
            torch.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
            torch.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
        ],
        1,
    )
    t.set_rotations(R)
    s = torch.randn(5, 2, generator=g, dtype=torch.float64) * 10
    t.set_shifts_angst(s)
    write_particles(t, tmp_path / "w.star")
    back = read_particles(tmp_path / "w.star")
    torch.testing.assert_close(back.rotations(torch.float64), R, rtol=0, atol=1e-12)
    torch.testing.assert_close(back.shifts_angst(torch.float64), s, rtol=0, atol=0)
    t30 = read_particles(DATA / "starfiles" / "sample_particles_relion30.star")
    t30.set_shifts_angst(torch.zeros(17, 2))
    assert "rlnOriginX" not in t30.particles and t30.shifts_angst().abs().sum() == 0


def test_subset_and_half_sets() -> None:
    t = read_particles(DATA / "starfiles" / "sample_particles_relion31.star")
    half = t.random_subset()
    assert set(half.tolist()) <= {1, 2}
    sub = t.subset(half == 2)
    assert len(sub) == int((half == 2).sum()) and (sub.random_subset() == 2).all()
    picked = t.subset(np.array([3, 0]))
    assert picked.particles["rlnImageName"].tolist() == [
        t.particles["rlnImageName"][3],
        t.particles["rlnImageName"][0],
    ]
    assert picked.optics is t.optics and picked.blocks["particles"] is picked.particles


def test_missing_image_file_names_star_row_and_paths() -> None:
    t = read_particles(R30)
    with pytest.raises(InputError) as info:
        t.image_locations()
    message = str(info.value)
    assert str(R30) in message and "row 1" in message and "empiar_10076_7.mrc" in message


def _write_variant(tmp_path: Path, edit: str) -> Path:
    blocks = read_star(R31)
    optics, particles = blocks["optics"], blocks["particles"]
    assert isinstance(optics, pd.DataFrame) and isinstance(particles, pd.DataFrame)
    if edit == "nan_pixel":
        optics["rlnImagePixelSize"] = np.nan
    elif edit == "unknown_group":
        particles.loc[3, "rlnOpticsGroup"] = 7
    elif edit == "bad_angle":
        particles["rlnAngleTilt"] = particles["rlnAngleTilt"].astype(object)
        particles.loc[2, "rlnAngleTilt"] = "abc"
    path = tmp_path / f"{edit}.star"
    write_star(blocks, path)
    return path


def test_nan_pixel_size(tmp_path: Path) -> None:
    t = read_particles(_write_variant(tmp_path, "nan_pixel"))
    with pytest.raises(
        InputError, match=r"nan_pixel.star: block data_particles, row 1, column rlnImagePixelSize"
    ):
        t.angpix()


def test_unknown_optics_group(tmp_path: Path) -> None:
    with pytest.raises(
        InputError, match=r"unknown_group.star: block data_particles, row 4, column rlnOpticsGroup"
    ):
        read_particles(_write_variant(tmp_path, "unknown_group"))


def test_non_numeric_angle(tmp_path: Path) -> None:
    t = read_particles(_write_variant(tmp_path, "bad_angle"))
    with pytest.raises(
        InputError, match=r"row 3, column rlnAngleTilt: expected a number, found 'abc'"
    ):
        t.rotations()


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("postprocess.star", "not a particle file"),
        ("default_pipeline.star", "not a particle file"),
        ("rln3.1_data_style.star", "several blocks could be the particle table"),
    ],
)
def test_not_particle_files(name: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        read_particles(DATA / "starfiles" / name)
    assert read_star(DATA / "starfiles" / name)


def _star_handler(src: Path, out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["relion_star_handler", "--i", str(src), "--o", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=src.parent,
    )


def test_relion_reads_written_31_file(relion: None, tmp_path: Path) -> None:
    t = read_particles(R31, particles_dir=DATA)
    t.particles["cryoposeIsJunk"] = [0, 1, 0, 0, 1]
    write_particles(t, tmp_path / "written.star")
    done = _star_handler(tmp_path / "written.star", tmp_path / "out.star")
    assert done.returncode == 0, done.stdout + done.stderr
    # RELION 3.1.3 keeps unknown labels, with a warning.
    assert "unknown label: cryoposeIsJunk" in done.stdout + done.stderr
    out = read_particles(tmp_path / "out.star")
    assert len(out) == 5 and out.optics is not None and len(out.optics) == 1
    angles = ["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]
    # RELION writes ~7 significant digits (e.g. -16.98542 for -16.985423).
    np.testing.assert_allclose(
        out.particles[angles].to_numpy(), t.particles[angles].to_numpy(), atol=5e-6
    )
    assert out.particles["cryoposeIsJunk"].tolist() == [0, 1, 0, 0, 1]
    assert out.particles["rlnImageName"].tolist() == t.particles["rlnImageName"].tolist()


def test_relion_reads_converted_30_file(relion: None, tmp_path: Path) -> None:
    t = read_particles(DATA / "starfiles" / "sample_particles_relion30.star")
    write_particles(t, tmp_path / "written.star")
    done = _star_handler(tmp_path / "written.star", tmp_path / "out.star")
    assert done.returncode == 0, done.stdout + done.stderr
    out = read_particles(tmp_path / "out.star")
    assert len(out) == 17 and out.optics is not None and len(out.optics) == 2
    angles = ["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]
    np.testing.assert_allclose(
        out.particles[angles].to_numpy(), t.particles[angles].to_numpy(), atol=5e-6
    )
    np.testing.assert_allclose(out.angpix(), t.angpix(), rtol=1e-6)
    np.testing.assert_allclose(
        out.shifts_angst(torch.float64).numpy(), t.shifts_angst(torch.float64).numpy(), atol=1e-5
    )  # RELION's fixed-width columns keep 5 decimals for small negative numbers
    t30 = read_particles(R30)
    write_particles(t30, tmp_path / "w30.star")
    done = _star_handler(tmp_path / "w30.star", tmp_path / "o30.star")
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(read_particles(tmp_path / "o30.star")) == 7


def test_table_without_file_is_usable() -> None:
    t = ParticleTable(
        particles=pd.DataFrame({"rlnImageName": ["1@x.mrcs"], "rlnPixelSize": [1.0]}),
        optics=None,
        blocks={},
        particles_block="",
    )
    assert t.angpix().tolist() == [1.0] and shutil.which("true") is not None


def test_relocated_table_finds_its_images_from_the_new_folder(tmp_path: Path) -> None:
    """Image names are relative to the star file: a relocated copy written elsewhere reads the
    same images (RELION's convention), and the original names are left alone."""
    from cryopose.io.mrc import read_images, write_stack

    source = tmp_path / "project" / "Extract"
    source.mkdir(parents=True)
    images = torch.arange(3 * 4 * 4, dtype=torch.float32).reshape(3, 4, 4)
    write_stack(source / "stack.mrcs", images, 2.0)
    particles = pd.DataFrame(
        {"rlnImageName": ["000003@Extract/stack.mrcs", "000001@Extract/stack.mrcs"]}
    )
    star = tmp_path / "project" / "particles.star"
    write_star({"particles": particles}, star)
    table = read_particles(star)
    target = tmp_path / "elsewhere" / "run" / "kept.star"
    target.parent.mkdir(parents=True)
    moved = table.relocated(target)
    write_particles(moved, target)
    assert moved.particles["rlnImageName"].tolist() == [
        "000003@../../project/Extract/stack.mrcs",
        "000001@../../project/Extract/stack.mrcs",
    ]
    assert table.particles["rlnImageName"].tolist()[0] == "000003@Extract/stack.mrcs"
    back = read_images(read_particles(target).image_locations())
    torch.testing.assert_close(back, images[[2, 0]])
