"""Simulation: density maps from atomic models, particle stacks, cryo-ET tomograms."""

from cryopose.simulate.density import density_from_file, density_map

__all__ = ["density_from_file", "density_map"]
