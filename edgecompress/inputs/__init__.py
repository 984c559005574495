"""The user's inputs: model and data specs, preprocessing, image folders, splits, loaders, model loading."""
from __future__ import annotations

from edgecompress.inputs.loaders import BatchStream, loader, seeded_indices
from edgecompress.inputs.preprocess import Preprocess
from edgecompress.inputs.resolve import resolve_inputs
from edgecompress.inputs.splits import DataSplits

__all__ = ["BatchStream", "DataSplits", "Preprocess", "loader", "resolve_inputs", "seeded_indices"]
