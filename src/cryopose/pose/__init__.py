"""Pose inference, pruning, local refinement, reconstruction pipeline, streaming."""
