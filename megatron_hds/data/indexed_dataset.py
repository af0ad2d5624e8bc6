"""Megatron "MMIDIDX" v1 indexed datasets (prefix.idx + prefix.bin): the streaming builder,
the zero-copy memory-mapped reader, merging, and the start-up check that a pair of files is
intact (:meth:`IndexedDataset.verify`). Byte-compatible with Megatron-LM."""

from __future__ import annotations

import mmap
import operator
import os
import shutil
import struct
from array import array

import numpy as np

__all__ = [
    "DTYPE_CODES",
    "dtype_code",
    "optimal_dtype",
    "data_file_path",
    "index_file_path",
    "IndexedDatasetBuilder",
    "IndexedDataset",
]

_MAGIC = b"MMIDIDX\x00\x00"
_VERSION = 1
# magic, version u64, dtype code u8, N u64, D u64; "<" means little-endian and no padding.
_HEADER = struct.Struct("<9sQBQQ")
_HEADER_SIZE = _HEADER.size  # 34

DTYPE_CODES: dict[int, type] = {
    1: np.uint8,
    2: np.int8,
    3: np.int16,
    4: np.int32,
    5: np.int64,
    6: np.float64,
    7: np.float32,
    8: np.uint16,
}
_CODE_OF_DTYPE = {np.dtype(t): code for code, t in DTYPE_CODES.items()}

# The builder keeps lengths in array('i') and document indices in array('q') and hands their
# raw bytes to numpy as int32 / int64, so those C types must have exactly these sizes.
assert array("i").itemsize == 4 and array("q").itemsize == 8

_COPY_CHUNK = 16 << 20  # bytes per read when byte-copying another dataset's .bin
_WRITE_BUFFER = 4 << 20  # coalesces the many small per-document writes of preprocessing
_VERIFY_CHUNK = 1 << 22  # index entries checked at a time (bounds verify()'s memory)
_VERIFY_TOKEN_BYTES = 16 << 20  # .bin bytes whose tokens verify() reads: all of a smaller file
_VERIFY_WINDOW = 1 << 20  # a larger file is read in evenly spaced windows of this size


def dtype_code(dtype) -> int:
    """The MMIDIDX code of a token dtype; ValueError if the format cannot store it."""
    try:
        dt = np.dtype(dtype)
    except TypeError as e:
        raise ValueError(f"not a numpy dtype: {dtype!r}") from e
    code = _CODE_OF_DTYPE.get(dt)
    if code is None:
        supported = ", ".join(np.dtype(t).name for t in DTYPE_CODES.values())
        raise ValueError(f"dtype {dt!s} ({dtype!r}) is not supported by MMIDIDX; use one of: {supported}")
    return code


def optimal_dtype(vocab_size: int) -> np.dtype:
    """Megatron's choice of token dtype: uint16 when vocab_size < 65500, else int32."""
    if vocab_size is not None and vocab_size < 65500:
        return np.dtype(np.uint16)
    return np.dtype(np.int32)


def data_file_path(prefix: str) -> str:
    return prefix + ".bin"


def index_file_path(prefix: str) -> str:
    return prefix + ".idx"


def _as_1d_array(tokens) -> np.ndarray:
    if isinstance(tokens, np.ndarray):
        return tokens.reshape(-1)
    # torch tensors (CPU or not) without importing torch here
    if hasattr(tokens, "detach") and hasattr(tokens, "numpy"):
        return tokens.detach().cpu().numpy().reshape(-1)
    return np.asarray(tokens).reshape(-1)


class IndexedDatasetBuilder:
    """Streams tokens to a .bin file and writes the matching .idx on finalize()."""

    def __init__(self, bin_path: str, dtype=np.int32):
        self.dtype = np.dtype(DTYPE_CODES[dtype_code(dtype)])
        self._code = dtype_code(self.dtype)
        self._write_dtype = self.dtype.newbyteorder("<")
        self._bin_path = bin_path
        self._data_file = open(bin_path, "wb", buffering=_WRITE_BUFFER)
        self._lengths = array("i")
        self._doc_indices = array("q", [0])

    # -- adding data -------------------------------------------------------------------

    def add_item(self, tokens) -> None:
        """Append one sequence; it belongs to the current document until end_document()."""
        arr = _as_1d_array(tokens)
        self._lengths.append(arr.size)
        self._data_file.write(arr.astype(self._write_dtype, copy=False).tobytes())

    def end_document(self) -> None:
        """Close the current document (possibly empty, which repeats the previous index)."""
        self._doc_indices.append(len(self._lengths))

    def add_document(self, tokens, lengths) -> None:
        """Append one document: flat `tokens` split into sequences of `lengths`, then close it."""
        arr = _as_1d_array(tokens)
        if isinstance(lengths, (list, tuple)):
            # The common case (one or a few lengths from preprocessing): plain Python is
            # cheaper here than building numpy arrays for the checks.
            total = sum(lengths)
            if total != arr.size or (lengths and min(lengths) < 0):
                raise ValueError(
                    f"sequence lengths {list(lengths)[:8]} (sum {total}) do not split "
                    f"a document of {arr.size} tokens"
                )
            self._lengths.extend(lengths)
        else:
            lens = np.asarray(lengths).reshape(-1)
            if lens.size and (lens.min() < 0 or lens.max() > np.iinfo(np.int32).max):
                raise ValueError(f"sequence lengths out of int32 range: min {lens.min()}, max {lens.max()}")
            total = int(lens.sum(dtype=np.int64))
            if total != arr.size:
                raise ValueError(
                    f"sequence lengths {lens[:8].tolist()} (sum {total}) do not split "
                    f"a document of {arr.size} tokens"
                )
            self._lengths.frombytes(lens.astype(np.int32, copy=False).tobytes())
        self._data_file.write(arr.astype(self._write_dtype, copy=False).tobytes())
        self._doc_indices.append(len(self._lengths))

    def add_index(self, prefix: str) -> None:
        """Append every document of the dataset at `prefix` (same dtype required)."""
        self._require_closed_document(f"add_index({prefix!r})")
        other = IndexedDataset(prefix)
        if other.dtype != self.dtype:
            raise ValueError(
                f"cannot merge {prefix!r}: its dtype is {other.dtype}, this builder writes {self.dtype}"
            )
        offset = len(self._lengths)
        self._lengths.frombytes(other.sequence_lengths.astype(np.int32).tobytes())
        self._doc_indices.frombytes((other.document_indices[1:] + offset).astype(np.int64).tobytes())
        del other  # drop the mmaps before streaming the file
        with open(data_file_path(prefix), "rb") as src:
            shutil.copyfileobj(src, self._data_file, _COPY_CHUNK)

    # -- finishing ---------------------------------------------------------------------

    def finalize(self, idx_path: str) -> None:
        """Close the .bin and write the .idx describing it."""
        self._require_closed_document(f"finalize({idx_path!r})")
        written = self._data_file.tell()
        self._data_file.close()

        itemsize = self.dtype.itemsize
        lengths = np.frombuffer(self._lengths, dtype=np.int32)
        doc_indices = np.frombuffer(self._doc_indices, dtype=np.int64)
        n = lengths.size
        pointers = np.zeros(n, dtype=np.int64)
        if n > 1:
            np.cumsum(lengths[:-1].astype(np.int64) * itemsize, out=pointers[1:])
        expected = int(pointers[-1]) + int(lengths[-1]) * itemsize if n else 0
        if expected != written:
            raise RuntimeError(
                f"{self._bin_path}: wrote {written} bytes but the sequence lengths describe {expected}"
            )

        with open(idx_path, "wb") as f:
            f.write(_HEADER.pack(_MAGIC, _VERSION, self._code, n, doc_indices.size))
            f.write(lengths.astype("<i4", copy=False).tobytes())
            f.write(pointers.astype("<i8", copy=False).tobytes())
            f.write(doc_indices.astype("<i8", copy=False).tobytes())

    def close(self) -> None:
        """Close the .bin without writing an index (used when abandoning a build)."""
        if not self._data_file.closed:
            self._data_file.close()

    def __enter__(self) -> "IndexedDatasetBuilder":
        return self

    def __exit__(self, *exc) -> None:
        # finalize() must be called inside the block; leaving only releases the file.
        self.close()

    def _require_closed_document(self, what: str) -> None:
        # Sequences after the last end_document() would end up in no document (d[-1] != N),
        # or silently inside the next dataset's first document when merging.
        open_seqs = len(self._lengths) - self._doc_indices[-1]
        if open_seqs:
            raise ValueError(f"{what}: {open_seqs} sequence(s) added since the last end_document(); call it first")


class IndexedDataset:
    """Read-only, memory-mapped view of prefix.idx / prefix.bin; sequences are zero-copy views."""

    def __init__(self, path_prefix: str):
        self.path_prefix = path_prefix
        self._open()

    def _open(self) -> None:
        idx_path = index_file_path(self.path_prefix)
        bin_path = data_file_path(self.path_prefix)
        for p in (idx_path, bin_path):
            if not os.path.isfile(p):
                raise FileNotFoundError(f"indexed dataset file not found: {p}")

        idx_size = os.path.getsize(idx_path)
        if idx_size < _HEADER_SIZE:
            raise ValueError(f"{idx_path}: {idx_size} bytes is too short for an MMIDIDX header ({_HEADER_SIZE})")
        with open(idx_path, "rb") as f:
            self._idx_mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        magic, version, code, n, d = _HEADER.unpack_from(self._idx_mmap, 0)
        if magic != _MAGIC:
            raise ValueError(f"{idx_path}: bad magic {magic!r}, expected {_MAGIC!r} (not an MMIDIDX index)")
        if version != _VERSION:
            raise ValueError(f"{idx_path}: unsupported MMIDIDX version {version}, only {_VERSION} is supported")
        if code not in DTYPE_CODES:
            raise ValueError(f"{idx_path}: unknown dtype code {code}, expected one of {sorted(DTYPE_CODES)}")
        expected_idx = _HEADER_SIZE + 12 * n + 8 * d
        if idx_size != expected_idx:
            raise ValueError(
                f"{idx_path}: size {idx_size} bytes does not match N={n}, D={d} ({expected_idx} bytes expected)"
            )
        if d < 1:
            raise ValueError(f"{idx_path}: document_indices is empty (D=0); it must at least hold 0")

        self.dtype = np.dtype(DTYPE_CODES[code])
        self._read_dtype = self.dtype.newbyteorder("<")
        # frombuffer handles the unaligned offsets (34 + 4N need not be a multiple of 8).
        self.sequence_lengths = np.frombuffer(self._idx_mmap, dtype="<i4", count=n, offset=_HEADER_SIZE)
        self.sequence_pointers = np.frombuffer(self._idx_mmap, dtype="<i8", count=n, offset=_HEADER_SIZE + 4 * n)
        self.document_indices = np.frombuffer(self._idx_mmap, dtype="<i8", count=d, offset=_HEADER_SIZE + 12 * n)

        # Only the last sequence is checked: a full pointer scan would be O(N) on every open.
        expected_bin = 0
        if n:
            expected_bin = int(self.sequence_pointers[-1]) + int(self.sequence_lengths[-1]) * self.dtype.itemsize
        bin_size = os.path.getsize(bin_path)
        if bin_size != expected_bin:
            raise ValueError(
                f"{bin_path}: size {bin_size} bytes does not match its index {idx_path} "
                f"({expected_bin} bytes expected); the file is truncated or belongs to another index"
            )
        if bin_size:
            with open(bin_path, "rb") as f:
                self._bin_buffer = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        else:
            self._bin_buffer = b""  # mmap refuses empty files; only 0-length reads can happen

    # -- pickling: mmaps cannot be pickled, so DataLoader workers reopen by prefix --------

    def __getstate__(self):
        return {"path_prefix": self.path_prefix}

    def __setstate__(self, state):
        self.path_prefix = state["path_prefix"]
        self._open()

    # -- access --------------------------------------------------------------------------

    def __len__(self) -> int:
        return self.sequence_lengths.size

    @property
    def num_documents(self) -> int:
        return self.document_indices.size - 1

    def _check_index(self, idx) -> int:
        i = operator.index(idx)
        n = self.sequence_lengths.size
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"sequence index {idx} out of range for {n} sequences in {self.path_prefix}")
        return i

    def __getitem__(self, idx):
        if isinstance(idx, slice):
            start, stop, step = idx.indices(len(self))
            if step != 1:
                return [self[i] for i in range(start, stop, step)]
            if start >= stop:
                return []
            lengths = self.sequence_lengths[start:stop]
            total = int(lengths.sum(dtype=np.int64))
            flat = np.frombuffer(
                self._bin_buffer, dtype=self._read_dtype, count=total, offset=int(self.sequence_pointers[start])
            )
            return np.split(flat, np.cumsum(lengths[:-1], dtype=np.int64))
        i = self._check_index(idx)
        return np.frombuffer(
            self._bin_buffer,
            dtype=self._read_dtype,
            count=int(self.sequence_lengths[i]),
            offset=int(self.sequence_pointers[i]),
        )

    def get(self, idx: int, offset: int = 0, length: int | None = None) -> np.ndarray:
        """View of tokens [offset, offset + length) of sequence idx (to its end if length is None)."""
        i = self._check_index(idx)
        seq_len = int(self.sequence_lengths[i])
        if length is None:
            length = seq_len - offset
        if offset < 0 or length < 0 or offset + length > seq_len:
            raise IndexError(
                f"offset {offset}, length {length} out of range for sequence {idx} of {seq_len} tokens"
            )
        return np.frombuffer(
            self._bin_buffer,
            dtype=self._read_dtype,
            count=length,
            offset=int(self.sequence_pointers[i]) + offset * self.dtype.itemsize,
        )

    def verify(self, vocab_size: int | None = None) -> None:
        """The start-up check, so that a damaged file fails here, naming itself, and not inside
        a training step: every index entry is consistent (lengths non-negative, each sequence
        starting where the previous one ends, document boundaries ascending from 0 to N), and
        the tokens of the .bin (all of it up to 16 MiB, evenly spaced 1 MiB windows of a larger
        one) are inside the vocabulary. ValueError naming the file and the first problem."""
        idx_path, bin_path = index_file_path(self.path_prefix), data_file_path(self.path_prefix)
        itemsize = self.dtype.itemsize
        n = len(self)
        end = 0  # byte where the sequences checked so far end
        for start in range(0, n, _VERIFY_CHUNK):
            lengths = self.sequence_lengths[start:start + _VERIFY_CHUNK].astype(np.int64)
            if (lengths < 0).any():
                i = int(np.argmax(lengths < 0))
                raise ValueError(f"{idx_path}: sequence {start + i} has a negative length {lengths[i]}: the index is "
                                 "corrupted (rebuild it with tools/preprocess_data.py)")
            expected = np.empty_like(lengths)
            expected[0] = end
            np.cumsum(lengths[:-1] * itemsize, out=expected[1:])
            expected[1:] += end
            pointers = self.sequence_pointers[start:start + _VERIFY_CHUNK]
            if (pointers != expected).any():
                i = int(np.argmax(pointers != expected))
                raise ValueError(f"{idx_path}: sequence {start + i} starts at byte {pointers[i]} but the sequences "
                                 f"before it end at byte {expected[i]}: the index is corrupted (rebuild it with "
                                 "tools/preprocess_data.py)")
            end = int(expected[-1] + lengths[-1] * itemsize)
        documents = self.document_indices
        if documents[0] != 0 or documents[-1] != n:
            raise ValueError(f"{idx_path}: document boundaries run from {documents[0]} to {documents[-1]}, not from "
                             f"0 to its {n} sequences: the index is corrupted")
        for start in range(0, documents.size - 1, _VERIFY_CHUNK):
            steps = np.diff(documents[start:start + _VERIFY_CHUNK + 1])
            if (steps < 0).any():
                i = start + int(np.argmax(steps < 0))
                raise ValueError(f"{idx_path}: document {i} ends at sequence {documents[i + 1]}, before it starts at "
                                 f"{documents[i]}: the index is corrupted")
        if vocab_size is not None:
            self._verify_tokens(bin_path, vocab_size)

    def _verify_tokens(self, bin_path: str, vocab_size: int) -> None:
        itemsize = self.dtype.itemsize
        size = len(self._bin_buffer)
        if size <= _VERIFY_TOKEN_BYTES:
            windows = [(0, size)]
        else:
            count = _VERIFY_TOKEN_BYTES // _VERIFY_WINDOW
            starts = np.linspace(0, size - _VERIFY_WINDOW, count).astype(np.int64) // itemsize * itemsize
            windows = [(int(s), _VERIFY_WINDOW) for s in starts]
        for offset, length in windows:
            tokens = np.frombuffer(self._bin_buffer, dtype=self._read_dtype, count=length // itemsize, offset=offset)
            if tokens.size == 0:
                continue
            bad = (tokens >= vocab_size) | (tokens < 0)
            if bad.any():
                i = int(np.argmax(bad))
                byte = offset + i * itemsize
                sequence = int(np.searchsorted(self.sequence_pointers, byte, side="right")) - 1
                raise ValueError(f"{bin_path}: token {tokens[i]} at byte {byte} (sequence {sequence}) is outside the "
                                 f"vocabulary of {vocab_size} tokens: the file is corrupted or was made with another "
                                 "tokenizer")

    @staticmethod
    def exists(path_prefix: str) -> bool:
        return os.path.isfile(index_file_path(path_prefix)) and os.path.isfile(data_file_path(path_prefix))

    def __repr__(self) -> str:
        return (
            f"IndexedDataset({self.path_prefix!r}, dtype={self.dtype}, "
            f"sequences={len(self)}, documents={self.num_documents})"
        )
