"""Cryo-ET: template matching, segmentation picking, clustering."""
