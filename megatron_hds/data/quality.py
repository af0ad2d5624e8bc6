"""Document quality for the data scheduler: MTLD lexical diversity over token ids, and
the per-document float32 sidecar stored beside each dataset.

MTLD (McCarthy and Jarvis 2010, "MTLD, vocd-D, and HD-D"): walk the sequence keeping
the type-token ratio (TTR) of the current segment; each time it falls to the
threshold (0.72) a full factor is counted and the segment restarts; the leftover
segment adds the partial factor (1 - TTR) / (1 - threshold). MTLD is the sequence
length divided by the factor count, computed forwards and backwards and averaged.

Edge cases (our definitions, documented in docs/formats.md): an empty sequence has MTLD 0;
a direction whose factor count is 0 (every token distinct, so TTR never left 1) scores
the sequence length, the most diverse value possible, which is also the scheduler's
normalisation maximum.
"""

from __future__ import annotations

import os

import numpy as np

from megatron_hds.atomic_io import atomic_path

try:  # the C loop built by setup.py; same results, ~50x faster than the Python loop
    from megatron_hds.data import _mtld as _mtld_c
except ImportError:  # no compiler at install time: the Python reference below
    _mtld_c = None

_C_DTYPES = (np.dtype(np.uint16), np.dtype(np.int32), np.dtype(np.int64))
MTLD_BACKEND = "c" if _mtld_c is not None else "python"
MTLD_THRESHOLD = 0.72
QUALITY_SUFFIX = ".mtld.npy"


def _mtld_factors(tokens, threshold: float) -> float:
    # The per-token hot loop of preprocessing: locals only, no attribute lookups.
    factors = 0.0
    seen: set = set()
    add = seen.add
    count = 0
    types = 0
    for token in tokens:
        count += 1
        if token not in seen:
            add(token)
            types += 1
        # A new type cannot lower the TTR (it was above the threshold and
        # (t+1)/(c+1) >= t/c), so the check is only needed on repeats.
        elif types / count <= threshold:
            factors += 1.0
            seen = set()
            add = seen.add
            count = 0
            types = 0
    if count:
        factors += (1.0 - types / count) / (1.0 - threshold)
    return factors


def _mtld_one_direction(tokens, threshold: float) -> float:
    factors = _mtld_factors(tokens, threshold)
    return len(tokens) / factors if factors > 0 else float(len(tokens))


def mtld_python(tokens, threshold: float = MTLD_THRESHOLD) -> float:
    """Bidirectional MTLD of a sequence of hashable tokens: the reference implementation."""
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"MTLD threshold must be in (0, 1), got {threshold}")
    tokens = list(tokens)
    if not tokens:
        return 0.0
    forward = _mtld_one_direction(tokens, threshold)
    backward = _mtld_one_direction(tokens[::-1], threshold)
    return (forward + backward) / 2.0


def mtld(tokens, threshold: float = MTLD_THRESHOLD) -> float:
    """Bidirectional MTLD of a sequence of non-negative token ids (C loop when built)."""
    if _mtld_c is None:
        return mtld_python(tokens, threshold)
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"MTLD threshold must be in (0, 1), got {threshold}")
    array = tokens if isinstance(tokens, np.ndarray) and tokens.dtype in _C_DTYPES else np.asarray(tokens, np.int64)
    return _mtld_c.mtld(np.ascontiguousarray(array), threshold)


def quality_path(dataset_prefix: str) -> str:
    """Where the per-document MTLD sidecar of a dataset lives."""
    return dataset_prefix + QUALITY_SUFFIX


def save_quality(path: str, values) -> None:
    """Write the float32 per-document array atomically (temporary name, then rename)."""
    with atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, np.asarray(values, dtype="<f4"), allow_pickle=False)


def load_quality(dataset_prefix: str, num_documents: int | None = None) -> np.ndarray:
    """The memory-mapped per-document MTLD array of a dataset; checks its length when
    the dataset's document count is given."""
    path = quality_path(dataset_prefix)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"quality sidecar {path!r} not found; re-run tools/preprocess_data.py")
    array = np.load(path, mmap_mode="r", allow_pickle=False)
    if array.dtype != np.float32 or array.ndim != 1:
        raise ValueError(f"quality sidecar {path!r} must be a 1-D float32 array, got {array.dtype} {array.shape}")
    if num_documents is not None and len(array) != num_documents:
        raise ValueError(f"quality sidecar {path!r} has {len(array)} values but the dataset has {num_documents} documents")
    return array
