"""cryopose: deep learning for cryo-EM particle alignment and cryo-ET particle picking.

Conventions are RELION's (see ``DESIGN.md``): rotation matrices ``(..., 3, 3)`` built from
RELION ZYZ Euler angles, shifts in Angstrom with RELION's sign, explicit pixel sizes.

>>> import cryopose
>>> cryopose.__version__
'0.1.0'
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cryopose")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"

__all__ = ["__version__"]
