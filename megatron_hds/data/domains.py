"""The run's domains, in one fixed order shared by every rank and every component: from the
preprocessing manifest (--data-manifest, with optional separate validation and test manifests)
or from Megatron's --data-path blend."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from megatron_hds.data.indexed_dataset import IndexedDataset
from megatron_hds.data.manifest import load_manifest


@dataclass
class Domains:
    """The run's domains, in a fixed order shared by every rank and every component."""

    names: list
    prefixes: list  # the training datasets
    natural_weights: np.ndarray  # token shares of the training datasets
    # Held-out datasets preprocessed apart ({"valid": [prefix per domain], "test": ...}); a split
    # without an entry comes from the training datasets' documents (--split).
    held_out_prefixes: dict = field(default_factory=dict)


def _held_out_prefixes(train, path: str, flag: str) -> list:
    """The datasets of a held-out manifest, in the training manifest's domain order."""
    manifest = load_manifest(path)
    if sorted(manifest.names) != sorted(train.names):
        raise ValueError(f"{flag} {path!r} has the domains {sorted(manifest.names)}, but --data-manifest "
                         f"{train.path!r} has {sorted(train.names)}: they must be the same")
    for key in ("sha256", "vocab_size"):
        if manifest.tokenizer.get(key) != train.tokenizer.get(key):
            raise ValueError(f"{flag} {path!r} was tokenized with another tokenizer than --data-manifest "
                             f"{train.path!r} ({key} {manifest.tokenizer.get(key)!r} vs {train.tokenizer.get(key)!r})")
    by_name = {d.name: d.prefix for d in manifest.domains}
    return [by_name[name] for name in train.names]


def resolve_domains(data) -> Domains:
    """Domains from --data-manifest (and --valid/--test-data-manifest), or from Megatron's
    --data-path [w1] p1 [w2] p2 ..."""
    if data.data_manifest is not None:
        manifest = load_manifest(data.data_manifest)
        held_out = {}
        for split, path, flag in (("valid", data.valid_data_manifest, "--valid-data-manifest"),
                                  ("test", data.test_data_manifest, "--test-data-manifest")):
            if path is not None:
                held_out[split] = _held_out_prefixes(manifest, path, flag)
        return Domains(manifest.names, [d.prefix for d in manifest.domains],
                       np.asarray(manifest.natural_weights, dtype=np.float64), held_out)
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
