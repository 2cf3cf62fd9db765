"""File formats: MRC maps and stacks, RELION STAR particle tables, cryoSPARC .cs, models, picks.

The few verbs most users need:

>>> from cryopose.io import read_particles, write_particles, read_map, write_map
>>> import torch, tempfile, pathlib
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> write_map(folder / "blob.mrc", torch.ones(8, 8, 8), angpix=2.5)
>>> volume, angpix = read_map(folder / "blob.mrc")
>>> tuple(volume.shape), angpix
((8, 8, 8), 2.5)

``read_particles`` reads RELION 3.0 to 5 particle files (and ``read_cryosparc`` cryoSPARC
``.cs`` files) into a :class:`ParticleTable`; ``write_particles`` writes RELION 3.1+ files,
atomically, keeping every column and block.
"""

from cryopose.io.cryosparc import cryosparc_fields, read_cryosparc
from cryopose.io.describe import describe
from cryopose.io.image_names import parse_image_name, resolve_image_path
from cryopose.io.mrc import (
    MapHeader,
    MrcStack,
    StackCache,
    map_statistics,
    open_stack,
    read_images,
    read_map,
    read_map_header,
    write_map,
    write_stack,
)
from cryopose.io.particles import ParticleTable, read_particles, write_particles
from cryopose.io.picks import Picks, read_picks, write_picks
from cryopose.io.star import read_star, write_star
from cryopose.io.structure import Atoms, read_structure, structure_summary

__all__ = [
    "Atoms",
    "MapHeader",
    "MrcStack",
    "ParticleTable",
    "Picks",
    "StackCache",
    "cryosparc_fields",
    "describe",
    "map_statistics",
    "open_stack",
    "parse_image_name",
    "read_cryosparc",
    "read_images",
    "read_map",
    "read_map_header",
    "read_particles",
    "read_picks",
    "read_star",
    "read_structure",
    "resolve_image_path",
    "structure_summary",
    "write_map",
    "write_particles",
    "write_picks",
    "write_stack",
    "write_star",
]
