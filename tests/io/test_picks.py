from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import starfile
import torch

from cryopose.errors import InputError
from cryopose.io.picks import Picks, read_picks, write_picks

SHREC_TEXT = """\
# SHREC submission: pdb x y z rotZ1 rotX rotZ2

1bxn 10 20 30 0 90 180
3qm1 1.5 2.25 -3.75 12.5 -45 7

4CR2 511 0 199.0 1e1 0 0
"""


def test_read_shrec_text_with_angles(tmp_path: Path) -> None:
    path = tmp_path / "particle_locations.txt"
    path.write_text(SHREC_TEXT)
    picks = read_picks(path)
    assert picks.class_ids.tolist() == ["1bxn", "3qm1", "4CR2"]
    np.testing.assert_array_equal(picks.coords, [[10, 20, 30], [1.5, 2.25, -3.75], [511, 0, 199]])
    assert picks.angles is not None
    np.testing.assert_array_equal(picks.angles, [[0, 90, 180], [12.5, -45, 7], [10, 0, 0]])
    assert picks.scores is None


def test_read_shrec_text_without_angles(tmp_path: Path) -> None:
    path = tmp_path / "picks.txt"
    path.write_text("1s3x 4 11 15\n  \n3cf3\t12.5 5 8\n")
    picks = read_picks(path)
    assert picks.class_ids.tolist() == ["1s3x", "3cf3"]
    np.testing.assert_array_equal(picks.coords, [[4, 11, 15], [12.5, 5, 8]])
    assert picks.angles is None


def test_bad_line_names_the_line(tmp_path: Path) -> None:
    lines = ["# header", "1bxn 1 2 3", "", "1bxn 1 2 3", "1bxn 1 2 3", "1bxn 1 2 3", "1bxn 1 two 3"]
    path = tmp_path / "bad.txt"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError) as info:
        read_picks(path)
    assert info.value.where == "line 7"
    assert info.value.message == "expected 'pdb x y z [rotZ1 rotX rotZ2]'"
    assert info.value.path == path


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("1bxn 1 2\n", 1),  # too few fields
        ("1bxn 1 2 3 4 5\n", 1),  # half the angles
        ("1bxn 1 2 3\n1bxn 1 2 3 0 0 0\n", 2),  # angles on some lines only
        ("1bxn 1 nan 3\n", 1),  # not finite
    ],
)
def test_malformed_lines(tmp_path: Path, text: str, line: int) -> None:
    path = tmp_path / "bad.txt"
    path.write_text(text)
    with pytest.raises(InputError, match="expected 'pdb x y z") as info:
        read_picks(path)
    assert info.value.where == f"line {line}"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="file not found"):
        read_picks(tmp_path / "absent.txt")


def test_read_star_with_class_number_and_score(tmp_path: Path) -> None:
    df = pd.DataFrame(
        {
            "rlnCoordinateX": [10.0, 3.5],
            "rlnCoordinateY": [20.0, 4.5],
            "rlnCoordinateZ": [30.0, 5.5],
            "rlnClassNumber": [2, 7],
            "rlnAutopickFigureOfMerit": [0.9, 0.1],
            "rlnAngleRot": [10.0, 20.0],
        }
    )
    path = tmp_path / "picks.star"
    starfile.write({"particles": df}, path)
    picks = read_picks(path)
    assert picks.class_ids.tolist() == ["2", "7"]
    np.testing.assert_array_equal(picks.coords, [[10, 20, 30], [3.5, 4.5, 5.5]])
    assert picks.scores is not None
    np.testing.assert_array_equal(picks.scores, [0.9, 0.1])
    assert picks.angles is None  # RELION ZYZ angles are not SHREC ZXZ angles


def test_read_star_cryopose_class_takes_precedence(tmp_path: Path) -> None:
    df = pd.DataFrame(
        {
            "rlnCoordinateX": [1.0],
            "rlnCoordinateY": [2.0],
            "rlnCoordinateZ": [3.0],
            "rlnClassNumber": [1],
            "cryoposeClass": ["3j9i"],
        }
    )
    path = tmp_path / "picks.star"
    starfile.write({"optics": pd.DataFrame({"rlnOpticsGroup": [1]}), "particles": df}, path)
    picks = read_picks(path)
    assert picks.class_ids.tolist() == ["3j9i"]
    np.testing.assert_array_equal(picks.coords, [[1, 2, 3]])


def test_read_star_without_class_column(tmp_path: Path) -> None:
    df = pd.DataFrame({"rlnCoordinateX": [1.0], "rlnCoordinateY": [2.0], "rlnCoordinateZ": [3.0]})
    path = tmp_path / "picks.star"
    starfile.write({"particles": df}, path)
    with pytest.raises(InputError, match="cryoposeClass or rlnClassNumber") as info:
        read_picks(path)
    assert info.value.where == "block particles"


def test_write_read_round_trip_is_exact(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    coords = rng.uniform(-5, 600, size=(50, 3))
    angles = rng.uniform(-180, 180, size=(50, 3))
    ids = rng.choice(["1bxn", "3qm1", "fiducial"], size=50)
    picks = Picks(ids, torch.from_numpy(coords), angles)
    path = tmp_path / "out" / "picks.txt"
    assert write_picks(picks, path) == path
    back = read_picks(path)
    assert back.class_ids.tolist() == ids.tolist()
    np.testing.assert_array_equal(back.coords, coords)
    assert back.angles is not None
    np.testing.assert_array_equal(back.angles, angles)
    assert [p.name for p in path.parent.iterdir()] == ["picks.txt"]  # no temp file left


def test_write_rejects_class_with_space(tmp_path: Path) -> None:
    path = tmp_path / "picks.txt"
    with pytest.raises(InputError, match="one SHREC field") as info:
        write_picks(Picks(["ok", "two words"], [[0, 0, 0], [1, 1, 1]]), path)
    assert info.value.where == "pick 1"
    assert not path.exists()


def test_picks_validates_shapes() -> None:
    with pytest.raises(InputError, match="coords must have shape"):
        Picks(["a", "b"], [[0, 0, 0]])
    with pytest.raises(InputError, match="finite"):
        Picks(["a"], [[0, np.inf, 0]])
    empty = Picks([], [])
    assert len(empty) == 0 and empty.coords.shape == (0, 3)


def test_empty_picks_file_round_trips(tmp_path: Path) -> None:
    # A picker that vetoes everything writes a header-only file; reading it gives no picks.
    path = tmp_path / "picks.txt"
    write_picks(Picks([], []), path)
    picks = read_picks(path)
    assert len(picks) == 0 and picks.coords.shape == (0, 3) and picks.angles is None
