"""RELION image names and the search for their stacks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cryopose.errors import InputError
from cryopose.io.image_names import parse_image_name, resolve_image_path


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("12@stack.mrcs", (11, "stack.mrcs")),
        ("000012@stack.mrcs", (11, "stack.mrcs")),
        ("1@Extract/job007/a b.mrcs", (0, "Extract/job007/a b.mrcs")),
        ("stack.mrc", (0, "stack.mrc")),
        ("/abs/one.mrc", (0, "/abs/one.mrc")),
    ],
)
def test_parse_image_name(name: str, expected: tuple[int, str]) -> None:
    assert parse_image_name(name) == expected


@pytest.mark.parametrize("name", ["0@x.mrcs", "-1@x.mrcs", "a@x.mrcs", "3@", ""])
def test_bad_image_names(name: str) -> None:
    with pytest.raises(InputError, match=r"p\.star: row 4"):
        parse_image_name(name, "p.star", "row 4")


def test_resolution_order(tmp_path: Path) -> None:
    star_dir, pdir = tmp_path / "star", tmp_path / "moved"
    (star_dir / "Extract").mkdir(parents=True)
    (pdir / "Extract").mkdir(parents=True)
    for folder in (star_dir / "Extract", pdir / "Extract", pdir):
        (folder / "s.mrcs").write_bytes(b"x")
    # particles_dir joined with the relative path wins ...
    assert (
        resolve_image_path("Extract/s.mrcs", star_dir, pdir) == (pdir / "Extract/s.mrcs").resolve()
    )
    # ... then particles_dir + basename ...
    assert resolve_image_path("Other/s.mrcs", star_dir, pdir) == (pdir / "s.mrcs").resolve()
    # ... then the star file's folder.
    assert resolve_image_path("Extract/s.mrcs", star_dir) == (star_dir / "Extract/s.mrcs").resolve()
    # Absolute paths and paths relative to the working directory are used as given.
    absolute = (star_dir / "Extract/s.mrcs").resolve()
    assert resolve_image_path(str(absolute), tmp_path / "nowhere") == absolute
    cwd = Path.cwd()
    try:
        os.chdir(star_dir)
        assert resolve_image_path("Extract/s.mrcs", tmp_path / "nowhere") == absolute
    finally:
        os.chdir(cwd)


def test_missing_file_names_star_row_and_paths(tmp_path: Path) -> None:
    with pytest.raises(InputError) as info:
        resolve_image_path(
            "Extract/gone.mrcs", tmp_path, tmp_path / "p", star_path="in.star", where="row 3"
        )
    message = str(info.value)
    assert message.startswith("in.star: row 3: image file 'Extract/gone.mrcs' not found")
    for tried in (
        tmp_path / "p/Extract/gone.mrcs",
        tmp_path / "p/gone.mrcs",
        tmp_path / "Extract/gone.mrcs",
    ):
        assert str(tried) in message
