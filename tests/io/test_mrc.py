from __future__ import annotations

import bz2
import doctest
import pickle
import re
import shutil
import warnings
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import torch

import cryopose.io.mrc as mrc_module
from cryopose.errors import InputError
from cryopose.io.mrc import (
    MapHeader,
    StackCache,
    map_statistics,
    open_stack,
    read_images,
    read_map,
    read_map_header,
    write_map,
    write_stack,
)


def mrcfile_data(path: Path) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # permissive mode warns about RELION's headers
        with mrcfile.open(path, permissive=True) as mrc:
            return np.array(mrc.data, dtype=np.float32)


def new_mrc(path: Path, data: np.ndarray, voxel_size: float = 1.0) -> Path:
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(data)
        mrc.voxel_size = voxel_size
    return path


def bad_input(*parts: str) -> pytest.RaisesExc[InputError]:
    """Expect an InputError whose message contains ``parts`` in order."""
    return pytest.raises(InputError, match=".*".join(re.escape(part) for part in parts))


def rss_bytes() -> dict[str, int]:
    """Resident memory: anonymous (the process's own) and file-backed (mapped page cache)."""
    sizes = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("RssAnon:", "RssFile:")):
                name, kb, _ = line.split()
                sizes[name.rstrip(":")] = int(kb) * 1024
    return sizes


def test_module_tutorial_runs() -> None:
    result = doctest.testmod(mrc_module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 10
    assert result.failed == 0


# --- maps ------------------------------------------------------------------------------------


def test_read_real_emdb_map(data_dir: Path) -> None:
    data, angpix = read_map(data_dir / "EMD-3197.map")
    assert data.dtype == torch.float32
    assert data.shape == (20, 20, 20)
    assert angpix == pytest.approx(11.4)
    np.testing.assert_array_equal(data.numpy(), mrcfile_data(data_dir / "EMD-3197.map"))


def test_bz2_map_equals_uncompressed(data_dir: Path) -> None:
    plain, angpix = read_map(data_dir / "EMD-3197.map")
    packed, packed_angpix = read_map(data_dir / "EMD-3197.map.bz2")
    assert torch.equal(plain, packed)
    assert angpix == packed_angpix
    assert read_map_header(data_dir / "EMD-3197.map.bz2").compression == "bzip2"
    assert map_statistics(data_dir / "EMD-3197.map.bz2") == map_statistics(
        data_dir / "EMD-3197.map"
    )


def test_gzip_map_with_permuted_axes_and_anisotropic_voxels(data_dir: Path) -> None:
    # EMD-3001 stores columns along z, rows along x, sections along y (MAPC/MAPR/MAPS 3 1 2).
    path = data_dir / "emd_3001.map.gz"
    header = read_map_header(path)
    assert header.compression == "gzip"
    assert header.axis_order == (3, 1, 2)
    assert header.stored_shape == (25, 43, 73)
    assert header.shape == (73, 25, 43)
    assert header.voxel_size == (0.44825, 0.3925, 0.45875)
    assert header.nstart == (-21, -12, 0)
    assert not header.is_stack
    data, angpix = read_map(path)
    assert data.shape == header.shape
    assert angpix == header.voxel_size[0]
    stored = mrcfile_data(path)
    np.testing.assert_array_equal(data.numpy(), stored.transpose(2, 0, 1))
    # The values are those the header's statistics describe.
    with mrcfile.open(path, permissive=True) as mrc:
        dmin, dmax, dmean, rms = (float(mrc.header[k]) for k in ("dmin", "dmax", "dmean", "rms"))
    stats = map_statistics(path, chunk=1000)
    assert stats["min"] == pytest.approx(dmin)
    assert stats["max"] == pytest.approx(dmax)
    assert stats["mean"] == pytest.approx(dmean, abs=1e-7)
    assert stats["std"] == pytest.approx(rms, rel=1e-5)


def test_permuted_axes_are_put_in_zyx_order(tmp_path: Path) -> None:
    xyz = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)  # indexed [x, y, z]
    path = tmp_path / "yzx.mrc"
    with mrcfile.new(path) as mrc:
        # Columns along y, rows along z, sections along x: stored array is [x, z, y].
        mrc.set_data(np.ascontiguousarray(xyz.transpose(0, 2, 1)))
        mrc.header.mapc, mrc.header.mapr, mrc.header.maps = 2, 3, 1
    data, _ = read_map(path, angpix=1.0)
    np.testing.assert_array_equal(data.numpy(), xyz.transpose(2, 1, 0))
    with bad_input("yzx.mrc", "axis order"):
        open_stack(path)


@pytest.mark.parametrize("name", ["EMD-3197.map", "emd_3001.map.gz"])
@pytest.mark.parametrize("out_name", ["copy.mrc", "copy.map.gz", "copy.mrc.bz2"])
def test_round_trip_real_maps(data_dir: Path, tmp_path: Path, name: str, out_name: str) -> None:
    data, angpix = read_map(data_dir / name)
    out = tmp_path / out_name
    write_map(out, data, angpix, origin=(12.5, -3.25, 100.0))
    again, again_angpix = read_map(out)
    assert torch.equal(again, data)
    assert again_angpix == angpix
    header = read_map_header(out)
    assert header.origin == (12.5, -3.25, 100.0)
    assert header.voxel_size == (angpix, angpix, angpix)
    assert header.mode == 2 and header.dtype == "float32"
    assert header.axis_order == (1, 2, 3)
    assert not header.is_stack
    assert sorted(p.name for p in tmp_path.iterdir()) == [out_name]  # no temporary left over


def test_write_map_accepts_numpy_and_2d(tmp_path: Path) -> None:
    volume = np.random.default_rng(0).normal(size=(3, 5, 7))  # float64 in
    write_map(tmp_path / "v.mrc", volume, angpix=0.5)
    data, angpix = read_map(tmp_path / "v.mrc")
    assert data.shape == (3, 5, 7) and angpix == 0.5
    np.testing.assert_allclose(data.numpy(), volume.astype(np.float32))
    assert read_map_header(tmp_path / "v.mrc").origin == (0.0, 0.0, 0.0)

    image = torch.randn(6, 8)
    write_map(tmp_path / "image.mrc", image, angpix=2.0)
    data, _ = read_map(tmp_path / "image.mrc")
    assert data.shape == (1, 6, 8)
    assert torch.equal(data[0], image)


def test_stack_files_are_marked_as_stacks(tmp_path: Path, data_dir: Path) -> None:
    images = torch.randn(4, 6, 6)
    write_stack(tmp_path / "a.mrcs", images, angpix=1.2)
    write_map(tmp_path / "b.mrcs", images, angpix=1.2)
    for name in ("a.mrcs", "b.mrcs"):
        header = read_map_header(tmp_path / name)
        assert header.is_stack and header.ispg == 0
        assert header.voxel_size[:2] == (1.2, 1.2)
        with mrcfile.open(tmp_path / name) as mrc:
            assert mrc.is_image_stack()
        assert torch.equal(read_map(tmp_path / name)[0], images)
    assert read_map_header(data_dir / "relion31.mrcs").is_stack
    assert not read_map_header(data_dir / "EMD-3197.map").is_stack


def test_header_reports_sizes_without_reading_data(data_dir: Path) -> None:
    header = read_map_header(data_dir / "relion31.mrcs")
    assert isinstance(header, MapHeader)
    assert header.shape == (5, 256, 256)
    assert header.header_bytes == 1024
    assert header.data_bytes == 5 * 256 * 256 * 4
    assert header.file_bytes == (data_dir / "relion31.mrcs").stat().st_size
    assert header.byte_order == "<"
    with pytest.raises(AttributeError):
        header.mode = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("dtype", "mode"),
    [(np.int8, 0), (np.int16, 1), (np.uint16, 6), (np.float16, 12), (np.dtype(">f4"), 2)],
)
def test_other_modes_and_byte_orders_read_as_float32(
    tmp_path: Path, dtype: np.dtype, mode: int
) -> None:
    values = np.arange(60).reshape(3, 4, 5).astype(dtype)
    path = new_mrc(tmp_path / "m.mrc", values)
    header = read_map_header(path)
    assert header.mode == mode
    data, _ = read_map(path)
    assert data.dtype == torch.float32
    np.testing.assert_array_equal(data.numpy(), values.astype(np.float32))
    with open_stack(path) as stack:
        np.testing.assert_array_equal(stack[1:].numpy(), values[1:].astype(np.float32))
    assert map_statistics(path, chunk=7)["max"] == 59.0


def test_map_statistics_in_chunks_equal_numpy(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    values = (rng.normal(size=(9, 11, 13)) * 3 + 1000).astype(np.float32)
    path = new_mrc(tmp_path / "s.mrc", values)
    expected = values.astype(np.float64)
    for chunk in (1, 100, 1 << 22):
        stats = map_statistics(path, chunk=chunk)
        assert stats["min"] == expected.min() and stats["max"] == expected.max()
        assert stats["mean"] == pytest.approx(expected.mean(), rel=1e-12)
        assert stats["std"] == pytest.approx(expected.std(), rel=1e-9)
    values[8, 10, 12] = np.nan  # in the last chunk
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # mrcfile warns about NaN when writing
        new_mrc(path, values)
    assert all(np.isnan(v) for v in map_statistics(path, chunk=100).values())


# --- stacks -----------------------------------------------------------------------------------


def test_stack_indexing_equals_mrcfile(data_dir: Path) -> None:
    full = mrcfile_data(data_dir / "relion31.mrcs")
    with open_stack(data_dir / "relion31.mrcs") as stack:
        assert len(stack) == 5 and stack.shape == (5, 256, 256)
        assert stack.path == data_dir / "relion31.mrcs"
        assert stack.angpix == 1.0
        assert stack[2].shape == (256, 256)
        np.testing.assert_array_equal(stack[2].numpy(), full[2])
        np.testing.assert_array_equal(stack[np.int64(-1)].numpy(), full[-1])
        np.testing.assert_array_equal(stack[1:4].numpy(), full[1:4])
        np.testing.assert_array_equal(stack[::2].numpy(), full[::2])
        np.testing.assert_array_equal(stack[[4, 0, 4]].numpy(), full[[4, 0, 4]])
        np.testing.assert_array_equal(stack[np.array([3, 1])].numpy(), full[[3, 1]])
        np.testing.assert_array_equal(stack[torch.tensor([0, 2])].numpy(), full[[0, 2]])
        assert stack[[]].shape == (0, 256, 256)
        image = stack[0]
        assert image.dtype == torch.float32
        image += 1  # a writable copy, not a view of the file
        np.testing.assert_array_equal(stack[0].numpy(), full[0])
    with pytest.raises(ValueError, match="closed"):
        stack[0]


def test_stack_index_out_of_range_names_file(data_dir: Path) -> None:
    with open_stack(data_dir / "relion31.mrcs") as stack:
        for index in (5, -6, [0, 7]):
            with bad_input("relion31.mrcs", "requested but the stack holds 5"):
                stack[index]  # type: ignore[index]
        with pytest.raises(TypeError):
            stack[[0.5]]  # type: ignore[index]


def test_single_image_and_volume_open_as_stacks(tmp_path: Path, data_dir: Path) -> None:
    image = np.random.default_rng(2).normal(size=(6, 8)).astype(np.float32)
    path = new_mrc(tmp_path / "one.mrc", image)
    with open_stack(path) as stack:
        assert stack.shape == (1, 6, 8)
        np.testing.assert_array_equal(stack[0].numpy(), image)
    with open_stack(data_dir / "EMD-3197.map") as stack:
        assert len(stack) == 20 and stack.angpix == pytest.approx(11.4)


def test_compressed_stack_reads(data_dir: Path) -> None:
    with open_stack(data_dir / "EMD-3197.map.bz2") as stack:
        np.testing.assert_array_equal(
            stack[[3, 1]].numpy(), mrcfile_data(data_dir / "EMD-3197.map")[[3, 1]]
        )


def test_stack_is_memory_mapped(tmp_path: Path) -> None:
    path = tmp_path / "big.mrcs"
    images = np.random.default_rng(3).normal(size=(2000, 64, 64)).astype(np.float32)
    write_stack(path, images, angpix=1.0)
    expected = images[[5, 1999, 10, 700]]
    del images
    file_bytes = path.stat().st_size
    before = rss_bytes()
    stack = open_stack(path)
    got = stack[[5, 1999, 10, 700]]
    got10 = stack[100:110]
    after = rss_bytes()
    assert isinstance(stack._data(), np.memmap)
    np.testing.assert_array_equal(got.numpy(), expected)
    assert got10.shape == (10, 64, 64)
    # Reading the whole file would add 32 MB of anonymous memory. Mapped pages (kernel
    # read-ahead around each image, about 1 MB) are page cache the kernel can take back.
    anon = after["RssAnon"] - before["RssAnon"]
    mapped = after["RssFile"] - before["RssFile"]
    assert anon < file_bytes / 16, f"anonymous memory grew by {anon} bytes"
    assert mapped < file_bytes / 4, f"mapped file pages grew by {mapped} bytes"
    stack.close()


def test_stack_pickles_without_data(data_dir: Path) -> None:
    stack = open_stack(data_dir / "relion31.mrcs", angpix=2.806)
    first = stack[0]
    blob = pickle.dumps(stack)
    assert len(blob) < 10_000
    copy = pickle.loads(blob)
    assert copy.angpix == 2.806
    assert torch.equal(copy[0], first)
    cache = StackCache()
    cache.get(data_dir / "relion31.mrcs")
    assert len(pickle.loads(pickle.dumps(cache))) == 0


class _StackDataset(torch.utils.data.Dataset[torch.Tensor]):
    def __init__(self, path: Path) -> None:
        self.stack = open_stack(path)

    def __len__(self) -> int:
        return len(self.stack)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.stack[i]


def test_stack_in_dataloader_workers(data_dir: Path) -> None:
    dataset = _StackDataset(data_dir / "relion31.mrcs")
    dataset[0]  # opened in the parent before the workers fork
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=2)
    batches = torch.cat(list(loader))
    np.testing.assert_array_equal(batches.numpy(), mrcfile_data(data_dir / "relion31.mrcs"))


# --- read_images -------------------------------------------------------------------------------


def test_read_images_keeps_order_across_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    a = rng.normal(size=(5, 8, 8)).astype(np.float32)
    b = rng.normal(size=(3, 8, 8)).astype(np.float32)
    write_stack(tmp_path / "a.mrcs", a, angpix=1.0)
    write_stack(tmp_path / "b.mrcs", b, angpix=1.0)
    locations = [
        (tmp_path / "b.mrcs", 2),
        (tmp_path / "a.mrcs", 4),
        (str(tmp_path / "a.mrcs"), 0),
        (tmp_path / "b.mrcs", 0),
        (tmp_path / "a.mrcs", 4),
        (tmp_path / "b.mrcs", 1),
    ]
    expected = np.stack([b[2], a[4], a[0], b[0], a[4], b[1]])
    np.testing.assert_array_equal(read_images(locations).numpy(), expected)
    with StackCache(max_open=1) as cache:  # eviction on every file switch
        for _ in range(2):
            np.testing.assert_array_equal(read_images(locations, cache=cache).numpy(), expected)
        assert len(cache) == 1
    assert read_images([]).shape == (0, 0, 0)


def test_read_images_rejects_mixed_box_sizes(data_dir: Path) -> None:
    locations = [(data_dir / "relion31.mrcs", 0), (data_dir / "EMD-3197.map", 0)]
    with bad_input("EMD-3197.map", "20x20", "relion31.mrcs holds 256x256"):
        read_images(locations)


def test_read_images_out_of_range(data_dir: Path) -> None:
    locations = [(data_dir / "relion31.mrcs", 0), (data_dir / "relion31.mrcs", 12)]
    with pytest.raises(InputError) as err:
        read_images(locations)
    assert err.value.path == data_dir / "relion31.mrcs"
    assert err.value.where == "location 1"
    assert "image 12 requested but the stack holds 5 images" in err.value.message


# --- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reader",
    [read_map_header, read_map, open_stack, map_statistics, lambda p: read_images([(p, 0)])],
)
def test_header_only_file(data_dir: Path, reader: object) -> None:
    with bad_input("header_only.mrc: expected 131072 bytes of data for 32x32x32 float32, found 0"):
        reader(data_dir / "header_only.mrc")  # type: ignore[operator]


def test_truncated_file(tmp_path: Path) -> None:
    path = tmp_path / "cut.mrcs"
    write_stack(path, np.zeros((256, 64, 64), np.float32), angpix=1.0)
    with open(path, "r+b") as f:
        f.truncate(1024 + 1000)
    for reader in (read_map_header, read_map, open_stack, map_statistics):
        with bad_input(
            "cut.mrcs: expected 4194304 bytes of data for 64x64x256 float32, found 1000"
        ):
            reader(path)


@pytest.mark.parametrize("suffix", [".gz", ".bz2"])
def test_truncated_compressed_file(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"cut.mrc{suffix}"
    write_map(path, np.random.default_rng(5).normal(size=(32, 32, 32)), angpix=1.0)
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    if suffix == ".gz":  # a bzip2 file of one block cannot be read at all once cut
        assert read_map_header(path).shape == (32, 32, 32)
    for reader in (read_map, map_statistics, lambda p: open_stack(p)[0]):
        with bad_input(path.name):
            reader(path)


def test_corrupt_compressed_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.mrc.gz"
    path.write_bytes(b"\x1f\x8b" + bytes(range(256)) * 8)
    with bad_input("bad.mrc.gz: cannot read gzip data"):
        read_map_header(path)
    short = tmp_path / "short.mrc.bz2"
    short.write_bytes(bz2.compress(b"\0" * 100))
    with bad_input(
        "short.mrc.bz2: expected at least 1024 bytes of MRC header, found 100 after bzip2"
    ):
        read_map_header(short)


def test_empty_missing_and_folder(tmp_path: Path) -> None:
    (tmp_path / "empty.mrcs").touch()
    for reader in (read_map_header, read_map, open_stack, map_statistics):
        with bad_input("empty.mrcs: empty file; expected an MRC file"):
            reader(tmp_path / "empty.mrcs")
    with bad_input("missing.mrc: no such file"):
        read_map(tmp_path / "missing.mrc")
    with bad_input("is a folder"):
        read_map(tmp_path)


def test_files_that_are_not_mrc(tmp_path: Path) -> None:
    short = tmp_path / "notes.mrc"
    short.write_text("hello")
    with bad_input("notes.mrc: expected at least 1024 bytes of MRC header, found 5"):
        read_map(short)
    text = tmp_path / "particles.star.mrc"
    text.write_text("data_particles\n\nloop_\n_rlnImageName #1\n" + "1@a.mrcs\n" * 300)
    with bad_input("particles.star.mrc: ", "is this an MRC file"):
        read_map(text)
    noise = tmp_path / "noise.mrc"
    noise.write_bytes(np.random.default_rng(6).bytes(5000))
    with bad_input("noise.mrc: ", "is this an MRC file"):
        open_stack(noise)


def test_unsupported_mode(tmp_path: Path) -> None:
    path = new_mrc(tmp_path / "complex.mrc", np.ones((2, 4, 4), np.complex64))
    with bad_input(
        "complex.mrc: MRC mode 4 (complex float32) is not supported; expected a real-valued mode"
    ):
        read_map(path)
    with open(path, "r+b") as f:  # mode field is the 4th int32
        f.seek(12)
        f.write(np.int32(7).tobytes())
    with bad_input("complex.mrc: unknown MRC mode 7"):
        read_map_header(path)


@pytest.mark.parametrize("voxel", [0.0, -1.0, float("nan")])
def test_bad_voxel_size_when_one_is_needed(tmp_path: Path, voxel: float) -> None:
    path = new_mrc(tmp_path / "novox.mrcs", np.ones((3, 4, 4), np.float32))
    with mrcfile.open(path, "r+") as mrc:
        mrc.header.cella.x = voxel * 4
    header = read_map_header(path)  # reporting it is fine
    assert not header.voxel_size[0] > 0
    with bad_input("novox.mrcs: the header's voxel size is ", "expected a positive pixel size"):
        read_map(path)
    data, angpix = read_map(path, angpix=2.5)
    assert angpix == 2.5 and data.shape == (3, 4, 4)
    with open_stack(path) as stack:
        assert stack[0].shape == (4, 4)  # images need no pixel size
        with bad_input("novox.mrcs"):
            _ = stack.angpix
    assert open_stack(path, angpix=3.0).angpix == 3.0
    with bad_input("novox.mrcs: pixel size must be a positive number"):
        open_stack(path, angpix=voxel)


def test_write_rejects_bad_arguments(tmp_path: Path) -> None:
    out = tmp_path / "out.mrc"
    for angpix in (0.0, -2.0, float("nan"), float("inf")):
        with bad_input("out.mrc: pixel size must be a positive number"):
            write_map(out, torch.zeros(2, 2, 2), angpix)
    with bad_input("out.mrc: cannot write data of shape (2, 2, 2, 2)"):
        write_map(out, torch.zeros(2, 2, 2, 2), 1.0)
    with bad_input("out.mrc: origin must be three finite numbers"):
        write_map(out, torch.zeros(2, 2, 2), 1.0, origin=(0.0, float("nan"), 0.0))
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_old_file(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "map.mrc"
    shutil.copy(data_dir / "EMD-3197.map", out)
    before = out.read_bytes()

    def interrupted(self: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(mrcfile.mrcobject.MrcObject, "set_volume", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_map(out, torch.ones(4, 4, 4), 1.0)
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["map.mrc"]
