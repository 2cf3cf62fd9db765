"""Raw STAR reading/writing: every real file round-trips exactly; malformed files fail clearly."""

from __future__ import annotations

import shlex
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cryopose.errors import InputError
from cryopose.io.star import read_star, write_star

DATA = Path(__file__).parents[1] / "data"
STAR_FILES = sorted((DATA / "starfiles").glob("*.star")) + sorted(
    (DATA / "particles").glob("*.star")
)


def _independent_loops(path: Path) -> dict[str, tuple[list[str], list[list[str]]]]:
    """Brute-force reference parser: labels and raw tokens of every loop block."""
    loops: dict[str, tuple[list[str], list[list[str]]]] = {}
    name, in_loop = None, False
    for line in path.read_text().splitlines():
        s = line.strip()
        if s.startswith("data_"):
            name, in_loop = s[5:], False
        elif s.startswith("loop_"):
            loops[name] = ([], [])
            in_loop = True
        elif in_loop and s.startswith("_"):
            loops[name][0].append(s.split()[0][1:])
        elif in_loop and s and not s.startswith("#"):
            loops[name][1].append(shlex.split(s))
    return loops


def test_data_files_are_present() -> None:
    assert len(STAR_FILES) == 26


@pytest.mark.parametrize("path", STAR_FILES, ids=lambda p: p.name)
def test_round_trip_keeps_every_block_column_and_value(path: Path, tmp_path: Path) -> None:
    blocks = read_star(path)
    write_star(blocks, tmp_path / "out.star")
    again = read_star(tmp_path / "out.star")
    assert list(again) == list(blocks)
    for name, block in blocks.items():
        if isinstance(block, dict):
            assert again[name] == block
            assert [type(v) for v in again[name].values()] == [type(v) for v in block.values()]
        else:
            pd.testing.assert_frame_equal(again[name], block, check_exact=True)


@pytest.mark.parametrize("path", STAR_FILES, ids=lambda p: p.name)
def test_values_equal_an_independent_parse(path: Path) -> None:
    blocks = read_star(path)
    for name, (labels, rows) in _independent_loops(path).items():
        df = blocks[name]
        assert isinstance(df, pd.DataFrame)
        assert list(df.columns) == labels
        assert len(df) == len(rows)
        for j, label in enumerate(labels):
            tokens = [r[j] for r in rows]
            column = df[label]
            if column.dtype.kind in "if":
                # Exactly Python's correctly rounded parse of the text in the file.
                expected = np.array([float(t) for t in tokens])
                np.testing.assert_array_equal(column.to_numpy(dtype=float), expected)
            else:
                assert column.tolist() == tokens


def test_names_that_look_like_numbers_stay_text(tmp_path: Path) -> None:
    blocks = read_star(DATA / "particles" / "empiar_10076_7.star")
    df = blocks[""]
    assert isinstance(df, pd.DataFrame)
    assert df["rlnMicrographName"].tolist() == ["1", "2", "3", "4", "5", "6", "7"]
    names = pd.DataFrame({"rlnImageName": ["000012@x.mrcs"], "rlnMicrographName": ["0001"]})
    write_star({"particles": names}, tmp_path / "n.star")
    assert "000012@x.mrcs" in (tmp_path / "n.star").read_text()
    back = read_star(tmp_path / "n.star")["particles"]
    assert isinstance(back, pd.DataFrame)
    assert back.iloc[0].tolist() == ["000012@x.mrcs", "0001"]


def test_floats_keep_full_precision(tmp_path: Path) -> None:
    values = [0.1, 1 / 3, 1e-9, 123456.78901234567, -2.5e300, np.nan]
    df = pd.DataFrame({"rlnDefocusU": values, "rlnClassNumber": range(6)})
    write_star({"p": df, "g": {"rlnFinalResolution": 1 / 7}}, tmp_path / "f.star")
    back = read_star(tmp_path / "f.star")
    pd.testing.assert_frame_equal(back["p"], df, check_exact=True)
    assert back["g"] == {"rlnFinalResolution": 1 / 7}


def test_quoted_values_and_mixed_columns() -> None:
    simple = read_star(DATA / "starfiles" / "basic_single_quote.star")[""]
    assert simple == {
        "no_quote_string": "noquote",
        "quote_string": "quote string",
        "whitespace_string": " ",
        "empty_string": "",
    }
    loop = read_star(DATA / "starfiles" / "loop_double_quote.star")[""]
    assert isinstance(loop, pd.DataFrame)
    assert loop["whitespace_string"].tolist() == [" ", " "]
    # '5.0' and '' in one column: text, so the empty value is not turned into NaN.
    assert loop["number_and_empty"].tolist() == ["5.0", ""]
    assert loop["number"].tolist() == [6.0, 7.0]


def test_empty_single_line_multiblock_and_tabs() -> None:
    empty = read_star(DATA / "starfiles" / "empty_loop.star")[""]
    assert isinstance(empty, pd.DataFrame)
    assert empty.shape == (0, 1) and list(empty.columns) == ["rlnCoordinateX"]
    multi = read_star(DATA / "starfiles" / "single_line_middle_of_multiblock.star")
    assert [len(b) for b in multi.values()] == [1, 1]
    optics = read_star(DATA / "starfiles" / "sample_particles_relion31.star")["optics"]
    assert isinstance(optics, pd.DataFrame)
    # Row 2 of data_optics is tab-separated in the file.
    assert optics.iloc[1][["rlnOpticsGroupName", "rlnVoltage"]].tolist() == ["opticsGroup2", 200.0]


def test_empty_loop_followed_by_another_block(tmp_path: Path) -> None:
    blocks = {"a": pd.DataFrame({"rlnX": pd.Series([], dtype=float)}), "b": {"rlnY": 2}}
    write_star(blocks, tmp_path / "e.star")
    back = read_star(tmp_path / "e.star")
    assert back["b"] == {"rlnY": 2}
    assert isinstance(back["a"], pd.DataFrame) and back["a"].shape == (0, 1)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "file is empty"),
        ("   \n\n", "file is empty"),
        ("# just a comment\n", "no data block"),
        ("data_x\n\nloop_\n_a #1\n_b #2\n1 2\n3\n", "row 2 (line 7): expected 2 fields"),
        ("data_x\n\nloop_\n_a #1\n_b #2\n1 2 3\n", "row 1 (line 6): expected 2 fields"),
        ('data_x\n\nloop_\n_a #1\n"unclosed 2\n', "quote is not closed"),
        ("data_x\n_a 1 2\n", "expected '_label value'"),
        ("data_x\n\ndata_y\n_a 1\n", "block is empty"),
        ("data_x\n_a 1\ndata_x\n_b 2\n", "appears twice"),
        ("data_x\nloop_\n1 2\n", "loop_ has no _label"),
    ],
)
def test_malformed_files_raise_input_error(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "bad.star"
    path.write_text(text)
    with pytest.raises(InputError, match=r"bad\.star") as info:
        read_star(path)
    assert expected in str(info.value)


def test_binary_file_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "bin.star"
    path.write_bytes(b"data_\n\xff\xfe\x00")
    with pytest.raises(InputError, match="not UTF-8"):
        read_star(path)


def test_failed_write_leaves_old_file(tmp_path: Path) -> None:
    path = tmp_path / "keep.star"
    write_star({"a": {"rlnX": 1}}, path)
    before = path.read_text()
    with pytest.raises(InputError, match="column rlnName"):
        write_star({"a": pd.DataFrame({"rlnName": ['it\'s "both" quotes']})}, path)
    assert path.read_text() == before
    assert list(tmp_path.iterdir()) == [path]
