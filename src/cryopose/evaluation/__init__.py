"""Evaluation: angular errors, map metrics (FSC, PCC), the gold-standard protocol, SHREC metrics."""
