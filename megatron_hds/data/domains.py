"""The run's domains, in one fixed order shared by every rank and every component: from the
preprocessing manifest (--data-manifest) or from Megatron's --data-path blend."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from megatron_hds.data.indexed_dataset import IndexedDataset
from megatron_hds.data.manifest import load_manifest


@dataclass
class Domains:
    """The run's domains, in a fixed order shared by every rank and every component."""

    names: list
    prefixes: list
    natural_weights: np.ndarray


def resolve_domains(data) -> Domains:
    """Domains from --data-manifest, or from Megatron's --data-path [w1] p1 [w2] p2 ..."""
    if data.data_manifest is not None:
        manifest = load_manifest(data.data_manifest)
        return Domains(manifest.names, [d.prefix for d in manifest.domains],
                       np.asarray(manifest.natural_weights, dtype=np.float64))
    items = list(data.data_path)
    try:
        weights = [float(w) for w in items[0::2]]
        prefixes = items[1::2]
        if len(weights) != len(prefixes):
            raise ValueError
    except ValueError:
        # Bare prefixes: natural weights are their token shares.
        prefixes = items
        weights = [float(IndexedDataset(p).sequence_lengths.sum(dtype=np.int64)) for p in prefixes]
    names = []
    for prefix in prefixes:
        if not IndexedDataset.exists(prefix):
            raise FileNotFoundError(f"--data-path prefix {prefix!r} has no .bin/.idx")
        name = os.path.basename(prefix)
        names.append(name if name not in names else f"{name}_{len(names)}")
    total = sum(weights)
    if not total > 0 or any(w < 0 for w in weights):
        raise ValueError(f"--data-path weights {weights} must be non-negative with a positive sum")
    return Domains(names, prefixes, np.asarray(weights, dtype=np.float64) / total)
