"""Per-domain GPT datasets: Megatron's ``--split`` document ranges, and for one domain x
one split a seeded document order plus Megatron's sample index (samples of seq_length+1
tokens crossing document boundaries), built once, cached as .npy and memory-mapped.

One dataset holds exactly ONE epoch of its documents. Epoch wrapping and the per-epoch
order of samples belong to the mixture sampler (data/mixture.py): there is no shuffle
index here, sample i is simply the i-th window of the shuffled document stream, and the
sampler permutes ``range(len(dataset))`` itself.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import operator
import os
import time
from typing import Callable, Sequence

import numpy as np

from megatron_hds.atomic_io import atomic_path, remove_stale_temporaries, write_text_atomic
from megatron_hds.data.indexed_dataset import IndexedDataset, data_file_path, index_file_path

__all__ = [
    "SPLIT_NAMES",
    "INDEX_FORMAT_VERSION",
    "split_document_ranges",
    "default_cache_dir",
    "GPTDataset",
    "build_domain_datasets",
]

logger = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "valid", "test")
# Bump when the content or layout of the cached arrays changes: old caches then miss.
INDEX_FORMAT_VERSION = 1
_CACHE_KINDS = ("document_index", "document_offsets", "sample_index")
# Samples placed per searchsorted call while building: bounds the builder's temporary
# memory (a few arrays of this many int64) whatever the domain size.
_BUILD_CHUNK = 1 << 22
_PROGRESS_EVERY_S = 10.0
# Entries of sequence_lengths / document_indices hashed into the dataset fingerprint.
_FINGERPRINT_SAMPLES = 4096


# -- split -------------------------------------------------------------------------------


def _parse_split(split: str) -> list[float]:
    if not isinstance(split, str):
        raise ValueError(f"--split must be a string like '969,30,1', got {split!r}")
    parts = [p.strip() for p in split.replace("/", ",").split(",")]
    if len(parts) > len(SPLIT_NAMES):
        raise ValueError(f"--split {split!r} has {len(parts)} parts; at most 3 (train,valid,test) are accepted")
    weights = []
    for part in parts:
        try:
            value = float(part)
        except ValueError:
            raise ValueError(
                f"--split {split!r}: {part!r} is not a number; expected up to 3 non-negative "
                f"numbers separated by commas, e.g. '969,30,1'"
            ) from None
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"--split {split!r}: {part!r} must be a finite non-negative number")
        weights.append(value)
    # Megatron pads a short split with zeros ("99,1" means no test split).
    weights += [0.0] * (len(SPLIT_NAMES) - len(weights))
    if sum(weights) <= 0:
        raise ValueError(f"--split {split!r}: the weights sum to 0; at least one split must be positive")
    return weights


def split_document_ranges(num_documents: int, split: str) -> list[tuple[int, int]]:
    """Contiguous [begin, end) document ranges of the train, valid and test splits.

    Megatron's arithmetic, so the same --split puts the same documents in each split:
    weights normalised in float64, bookends summed cumulatively, each bookend placed
    at ``int(round(bookend * num_documents))`` (Python's round, half to even). The first
    bookend is 0 and the last is num_documents exactly."""
    num_documents = operator.index(num_documents)
    if num_documents < 0:
        raise ValueError(f"num_documents must be >= 0, got {num_documents}")
    weights = np.asarray(_parse_split(split), dtype=np.float64)
    normalised = (weights / weights.sum()).tolist()
    bookends = [0.0]
    for w in normalised:
        bookends.append(bookends[-1] + w)
    cuts = [int(round(b * float(num_documents))) for b in bookends]
    # float sums can land a hair under 1.0; the last split must still end at the last document
    cuts[0], cuts[-1] = 0, num_documents
    return [(cuts[k], cuts[k + 1]) for k in range(len(SPLIT_NAMES))]


# -- cache helpers -----------------------------------------------------------------------


def default_cache_dir(prefix: str) -> str:
    """Where indices go without --data-cache-path: a `cache` folder beside the dataset."""
    return os.path.join(os.path.dirname(os.path.abspath(prefix)), "cache")


def _fingerprint(ds: IndexedDataset) -> dict:
    """A cheap identity of a dataset's content: counts, file sizes and a hash of evenly
    spaced index entries. Deliberately no path and no mtime, so a copied or re-mounted
    dataset (another node, another mount point) finds the same cache."""
    h = hashlib.md5()
    for array in (ds.sequence_lengths, ds.document_indices):
        n = array.size
        picks = np.unique(np.linspace(0, n - 1, min(n, _FINGERPRINT_SAMPLES)).astype(np.int64)) if n else []
        h.update(np.ascontiguousarray(array[picks], dtype="<i8").tobytes())
    return {
        "sequences": int(len(ds)),
        "documents": int(ds.num_documents),
        "dtype": ds.dtype.name,
        "idx_bytes": os.path.getsize(index_file_path(ds.path_prefix)),
        "bin_bytes": os.path.getsize(data_file_path(ds.path_prefix)),
        "sampled_md5": h.hexdigest(),
    }


def _shuffle_entropy(dataset_name: str, split_name: str) -> list[int]:
    # md5, not hash(): Python salts str hashes per process, and every rank and every run
    # must draw the same order.
    digest = hashlib.md5(f"{dataset_name}|{split_name}".encode("utf-8")).digest()
    return [int.from_bytes(digest[i : i + 4], "little") for i in range(0, 16, 4)]


def _save_atomic(path: str, array: np.ndarray) -> None:
    # A reader that sees the final name sees a complete file.
    with atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, array, allow_pickle=False)


# -- index building ----------------------------------------------------------------------


def _document_lengths(ds: IndexedDataset, begin: int, end: int) -> np.ndarray:
    """Tokens per document for documents [begin, end): a document of several sequences
    (sentences) counts as one document of their total length."""
    d = np.asarray(ds.document_indices[begin : end + 1], dtype=np.int64)
    if d.size < 2:
        return np.zeros(0, dtype=np.int64)
    seq_cumsum = np.zeros(int(d[-1] - d[0]) + 1, dtype=np.int64)
    np.cumsum(ds.sequence_lengths[d[0] : d[-1]], dtype=np.int64, out=seq_cumsum[1:])
    return seq_cumsum[d[1:] - d[0]] - seq_cumsum[d[:-1] - d[0]]


def _build_indices(
    ds: IndexedDataset,
    document_range: tuple[int, int],
    seq_length: int,
    rng: np.random.Generator,
    label: str,
) -> dict[str, np.ndarray]:
    """The three cached arrays of one epoch over documents [begin, end):

    document_index   (docs,)   int64: document ids in the IndexedDataset, shuffled.
    document_offsets (docs+1,) int64: token offset of each position of document_index in
                     the epoch's token stream (last entry = tokens in the epoch).
    sample_index     (samples+1, 2) int64: Megatron's layout; row i = (position in
                     document_index, offset in that document) of stream token i*seq_length.
    """
    begin, end = document_range
    t0 = time.perf_counter()
    lengths = _document_lengths(ds, begin, end)
    order = rng.permutation(end - begin)
    document_index = (order + begin).astype(np.int64)
    document_offsets = np.zeros(order.size + 1, dtype=np.int64)
    np.cumsum(lengths[order], out=document_offsets[1:])
    total_tokens = int(document_offsets[-1])
    # seq_length+1 tokens per sample, consecutive samples share one token (Megatron's
    # add_extra_token_to_sequence with drop_last_partial_sequence).
    num_samples = max(total_tokens - 1, 0) // seq_length
    logger.debug(
        "building %s indices: %d documents, %d tokens -> %d samples of %d+1 tokens",
        label, order.size, total_tokens, num_samples, seq_length,
    )

    sample_index = np.zeros((num_samples + 1, 2), dtype=np.int64)
    last_report = time.perf_counter()
    for start in range(0, num_samples + 1, _BUILD_CHUNK):
        stop = min(start + _BUILD_CHUNK, num_samples + 1)
        positions = np.arange(start, stop, dtype=np.int64) * seq_length
        # side="right" skips empty documents: the chosen document is the one that holds
        # the token, exactly where Megatron's walk stops.
        k = np.searchsorted(document_offsets, positions, side="right") - 1
        sample_index[start:stop, 0] = k
        sample_index[start:stop, 1] = positions - document_offsets[k]
        if time.perf_counter() - last_report > _PROGRESS_EVERY_S:
            last_report = time.perf_counter()
            logger.info("  %s: %d / %d samples placed", label, stop, num_samples + 1)
    # Megatron starts the walk at (0, 0) even when the first document is empty.
    sample_index[0] = (0, 0)
    logger.debug("built %s indices in %.2f s", label, time.perf_counter() - t0)
    return {"document_index": document_index, "document_offsets": document_offsets, "sample_index": sample_index}


# -- the dataset -------------------------------------------------------------------------


class GPTDataset:
    """One domain x one split: one epoch of samples of ``seq_length + 1`` tokens.

    ``len(ds)`` is the number of samples in one epoch of the split's documents
    (``(tokens - 1) // seq_length``; 0 when the split is too small for one sample, in
    which case the caller must give the domain no weight or refuse). ``ds[i]`` is an int64 array of seq_length + 1 tokens; sample i covers tokens
    [i*seq_length, i*seq_length + seq_length + 1) of the concatenation of the documents in
    ``document_index`` order, so consecutive samples overlap by one token.

    Building: with ``is_builder`` the indices are built and written to ``cache_dir`` if
    missing; then ``barrier()`` is called (by every process, builder or not, when given);
    then the cached files are memory-mapped. A non-builder that finds no cache after the
    barrier raises FileNotFoundError naming the file.
    """

    def __init__(
        self,
        dataset: IndexedDataset | str,
        split_name: str,
        document_range: tuple[int, int],
        seq_length: int,
        seed: int,
        cache_dir: str | None = None,
        is_builder: bool = True,
        barrier: Callable[[], None] | None = None,
        name: str | None = None,
    ):
        self.indexed = dataset if isinstance(dataset, IndexedDataset) else IndexedDataset(dataset)
        prefix = self.indexed.path_prefix
        if split_name not in SPLIT_NAMES:
            raise ValueError(f"split_name {split_name!r} is not one of {SPLIT_NAMES}")
        try:
            begin, end = (operator.index(x) for x in document_range)
        except (TypeError, ValueError):
            raise ValueError(f"document_range must be two integers (begin, end), got {document_range!r}") from None
        if not 0 <= begin <= end <= self.indexed.num_documents:
            raise ValueError(
                f"document_range {document_range!r} is not within [0, {self.indexed.num_documents}] "
                f"documents of {prefix!r}"
            )
        if isinstance(seq_length, bool) or not isinstance(seq_length, (int, np.integer)) or seq_length < 1:
            raise ValueError(f"seq_length must be a positive integer, got {seq_length!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")

        self.name = name if name is not None else os.path.basename(prefix)
        self.split_name = split_name
        self.document_range = (begin, end)
        self.seq_length = int(seq_length)
        self.seed = int(seed)
        self.cache_dir = os.path.abspath(cache_dir if cache_dir is not None else default_cache_dir(prefix))

        basename = os.path.basename(prefix)
        # The order depends on the dataset's name and the split, not on its directory:
        # domains differ, runs and moved copies agree.
        self._shuffle_entropy = [self.seed, *_shuffle_entropy(basename, split_name)]
        self.description = {
            "class": "megatron_hds.GPTDataset",
            "format_version": INDEX_FORMAT_VERSION,
            "dataset": basename,
            "fingerprint": _fingerprint(self.indexed),
            "split": split_name,
            "document_range": [begin, end],
            "seq_length": self.seq_length,
            "add_extra_token": 1,
            "seed": self.seed,
            "shuffle": "numpy.default_rng([seed, md5(basename|split)]).permutation",
        }
        text = json.dumps(self.description, sort_keys=True)
        self.description_hash = hashlib.md5(text.encode("utf-8")).hexdigest()
        stem = os.path.join(self.cache_dir, f"{basename}-{split_name}-{self.description_hash}")
        self._cache_stem = stem
        self.cache_paths = {kind: f"{stem}-{kind}.npy" for kind in _CACHE_KINDS}
        self._description_path = f"{stem}-description.json"

        if is_builder:  # what a builder killed mid-write left (the directory may be shared: only dead writers')
            remove_stale_temporaries(*self.cache_paths.values(), self._description_path, older_than_s=3600)
        if is_builder and not self._cache_complete():
            self._build_and_save()
        if barrier is not None:
            barrier()
        self._load(warn_if_empty=is_builder)

    # -- cache -------------------------------------------------------------------------

    def _cache_complete(self) -> bool:
        return all(os.path.isfile(p) for p in self.cache_paths.values())

    def _label(self) -> str:
        return f"{self.name}/{self.split_name} (documents {self.document_range[0]}:{self.document_range[1]})"

    def _build_and_save(self) -> None:
        arrays = _build_indices(
            self.indexed,
            self.document_range,
            self.seq_length,
            np.random.default_rng(self._shuffle_entropy),
            self._label(),
        )
        os.makedirs(self.cache_dir, exist_ok=True)
        for kind in _CACHE_KINDS:
            _save_atomic(self.cache_paths[kind], arrays[kind])
        # For humans deciding what a cache file is; never read back.
        write_text_atomic(self._description_path, json.dumps(self.description, indent=2, sort_keys=True) + "\n")
        logger.debug("saved %s indices to %s", self._label(), self.cache_paths["sample_index"])

    def _load(self, warn_if_empty: bool = False) -> None:
        arrays = {}
        for kind, path in self.cache_paths.items():
            if not os.path.isfile(path):
                raise FileNotFoundError(
                    f"index cache file {path!r} of {self._label()} is missing. It is written by the builder "
                    f"process (is_builder=True) before the barrier; check that one process builds, that a "
                    f"barrier is passed, and that the cache directory is shared by all processes"
                )
            # A plain read-only ndarray over the mapping: np.memmap's per-slice bookkeeping
            # would cost more than the sample reads themselves.
            arrays[kind] = np.asarray(np.load(path, mmap_mode="r", allow_pickle=False))
        begin, end = self.document_range
        docs = end - begin
        di, do, si = arrays["document_index"], arrays["document_offsets"], arrays["sample_index"]
        num_samples = max(int(do[-1]) - 1, 0) // self.seq_length if do.shape == (docs + 1,) else -1
        if di.shape != (docs,) or num_samples < 0 or si.shape != (num_samples + 1, 2):
            raise ValueError(
                f"index cache {self.cache_paths['sample_index']!r} does not match {self._label()} "
                f"(shapes {di.shape}, {do.shape}, {si.shape}); delete {self._cache_stem}-* and rebuild"
            )
        self.document_index = di
        self.document_offsets = do
        self.sample_index = si
        self._num_samples = num_samples
        if num_samples == 0 and warn_if_empty:  # once, not once per rank
            logger.warning(
                "%s has %d tokens, too few for one sample of %d+1 tokens: it has no samples",
                self._label(), int(do[-1]), self.seq_length,
            )

    # -- pickling: memmaps would be pickled as full copies; reopen by path instead ------

    def __getstate__(self):
        state = self.__dict__.copy()
        for key in ("document_index", "document_offsets", "sample_index"):
            state.pop(key)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._load()

    # -- access ------------------------------------------------------------------------

    def __len__(self) -> int:
        return self._num_samples

    @property
    def num_documents(self) -> int:
        return self.document_range[1] - self.document_range[0]

    @property
    def num_tokens(self) -> int:
        """Tokens in one epoch of this split's documents."""
        return int(self.document_offsets[-1])

    def _check_sample(self, idx) -> int:
        i = operator.index(idx)
        if i < 0:
            i += self._num_samples
        if not 0 <= i < self._num_samples:
            raise IndexError(f"sample {idx} out of range for {self._num_samples} samples of {self._label()}")
        return i

    def _bounds(self, i: int) -> tuple[int, int, int, int]:
        (k0, o0), (k1, o1) = self.sample_index[i : i + 2].tolist()
        return k0, o0, k1, o1

    def _copy_document(self, doc: int, offset: int, length: int, out: np.ndarray, pos: int) -> None:
        """out[pos:pos+length] = tokens [offset, offset+length) of document doc."""
        if length == 0:
            return
        first, last = self.indexed.document_indices[doc : doc + 2].tolist()
        if last - first == 1:  # document-level preprocessing: one sequence per document
            out[pos : pos + length] = self.indexed.get(first, offset, length)
            return
        for seq in range(first, last):
            seq_len = int(self.indexed.sequence_lengths[seq])
            if offset >= seq_len:
                offset -= seq_len
                continue
            n = min(seq_len - offset, length)
            out[pos : pos + n] = self.indexed.get(seq, offset, n)
            pos += n
            length -= n
            offset = 0
            if length == 0:
                return

    def __getitem__(self, idx) -> np.ndarray:
        k0, o0, k1, o1 = self._bounds(self._check_sample(idx))
        # One int64 buffer filled straight from the memory-mapped .bin: the only copy.
        out = np.empty(self.seq_length + 1, dtype=np.int64)
        if k0 == k1:
            self._copy_document(int(self.document_index[k0]), o0, o1 + 1 - o0, out, 0)
            return out
        docs = self.document_index[k0 : k1 + 1].tolist()
        offsets = self.document_offsets[k0 : k1 + 1].tolist()
        pos = 0
        n = offsets[1] - offsets[0] - o0
        self._copy_document(docs[0], o0, n, out, pos)
        pos += n
        for j in range(1, len(docs) - 1):
            n = offsets[j + 1] - offsets[j]
            self._copy_document(docs[j], 0, n, out, pos)
            pos += n
        self._copy_document(docs[-1], 0, o1 + 1, out, pos)
        return out

    def sample_document_spans(self, idx) -> np.ndarray:
        """(document id in the IndexedDataset, tokens) of each document sample idx covers,
        in order, as an int64 array of shape (n, 2); counts sum to seq_length + 1 (the
        shared boundary token included); documents contributing no token are left out."""
        k0, o0, k1, o1 = self._bounds(self._check_sample(idx))
        docs = np.asarray(self.document_index[k0 : k1 + 1], dtype=np.int64)
        counts = np.diff(np.asarray(self.document_offsets[k0 : k1 + 2], dtype=np.int64))
        counts[-1] = o1 + 1
        counts[0] -= o0
        keep = counts > 0
        return np.stack([docs[keep], counts[keep]], axis=1)

    def samples_quality(self, indices, quality) -> np.ndarray:
        """Token-weighted mean of the per-document ``quality`` (indexed by document id in
        the IndexedDataset, e.g. quality.load_quality) over each sample, vectorised."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size == 0:
            return np.zeros(0, dtype=np.float64)
        bad = (idx < 0) | (idx >= self._num_samples)
        if bad.any():
            raise IndexError(
                f"sample {int(idx[bad][0])} out of range for {self._num_samples} samples of {self._label()}"
            )
        if len(quality) != self.indexed.num_documents:
            raise ValueError(
                f"quality array has {len(quality)} values but {self.indexed.path_prefix!r} has "
                f"{self.indexed.num_documents} documents"
            )
        beg = np.asarray(self.sample_index[idx])
        end = np.asarray(self.sample_index[idx + 1])
        spans = end[:, 0] - beg[:, 0] + 1
        starts = np.zeros(idx.size, dtype=np.int64)
        np.cumsum(spans[:-1], out=starts[1:])
        # Every (sample, document position) pair, flattened sample after sample.
        pos = np.repeat(beg[:, 0] - starts, spans) + np.arange(int(spans.sum()), dtype=np.int64)
        offsets = np.asarray(self.document_offsets)
        counts = offsets[pos + 1] - offsets[pos]
        lasts = starts + spans - 1
        counts[lasts] = end[:, 1] + 1
        counts[starts] -= beg[:, 1]
        values = np.asarray(quality, dtype=np.float64)[np.asarray(self.document_index)[pos]]
        return np.add.reduceat(values * counts, starts) / (self.seq_length + 1)

    def __repr__(self) -> str:
        return (
            f"GPTDataset({self.name!r}, split={self.split_name!r}, documents={self.document_range}, "
            f"seq_length={self.seq_length}, samples={self._num_samples})"
        )


def build_domain_datasets(
    prefixes: Sequence[str],
    names: Sequence[str],
    split: str,
    seq_length: int,
    seed: int,
    cache_dir: str | None = None,
    is_builder: bool = True,
    barrier: Callable[[], None] | None = None,
    held_out_prefixes: dict | None = None,
    eval_seed: int | None = None,
) -> dict[str, list[GPTDataset]]:
    """{split name: [dataset of each domain, in the order of prefixes]} for all three
    splits. Every domain gets an entry in every split, possibly empty (len 0) so lists
    stay aligned with the domains. The builder builds every missing index first, then
    ONE barrier, then the others load: one synchronisation for all domains.

    held_out_prefixes: {"valid"/"test": [prefix per domain]} for splits preprocessed apart
    (all their documents are that split's, and the training datasets give that split no
    documents). eval_seed: the seed of the valid and test sample order (default: seed), so
    runs of different training seeds can be evaluated on the same samples."""
    if len(prefixes) != len(names):
        raise ValueError(f"{len(prefixes)} dataset prefixes but {len(names)} domain names")
    if not prefixes:
        raise ValueError("no dataset prefixes given")
    held_out_prefixes = held_out_prefixes or {}
    weights = _parse_split(split)  # fail on a bad --split before opening anything
    # A split with its own datasets takes no share of the training datasets' documents.
    own_split = ",".join("0" if name in held_out_prefixes else repr(w) for name, w in zip(SPLIT_NAMES, weights))
    indexed = [IndexedDataset(p) for p in prefixes]
    separate = {split_name: [IndexedDataset(p) for p in held] for split_name, held in held_out_prefixes.items()}
    seeds = {"train": seed, "valid": seed if eval_seed is None else eval_seed,
             "test": seed if eval_seed is None else eval_seed}

    def make(builder: bool) -> dict[str, list[GPTDataset]]:
        result: dict[str, list[GPTDataset]] = {s: [] for s in SPLIT_NAMES}
        for k, (ds, name) in enumerate(zip(indexed, names)):
            ranges = split_document_ranges(ds.num_documents, own_split)
            for split_name, document_range in zip(SPLIT_NAMES, ranges):
                source = ds
                if split_name in separate:
                    source = separate[split_name][k]
                    document_range = (0, source.num_documents)
                result[split_name].append(
                    GPTDataset(source, split_name, document_range, seq_length, seeds[split_name],
                               cache_dir=cache_dir, is_builder=builder, name=name)
                )
        return result

    t0 = time.perf_counter()
    result = make(True) if is_builder else None
    if barrier is not None:
        barrier()
    if result is None:
        result = make(False)
    logger.info(
        "%d domain datasets ready in %.2f s (train samples: %d)",
        len(prefixes), time.perf_counter() - t0, sum(len(d) for d in result["train"]),
    )
    return result
