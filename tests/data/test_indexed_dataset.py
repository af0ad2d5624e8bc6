"""MMIDIDX v1 indexed dataset: exact bytes, dtypes, zero-copy reads, merging, bad files, merge CLI."""

import mmap
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from megatron_hds.data.indexed_dataset import (
    DTYPE_CODES,
    IndexedDataset,
    IndexedDatasetBuilder,
    data_file_path,
    dtype_code,
    index_file_path,
    optimal_dtype,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def build(prefix, docs, dtype=np.uint16):
    """docs: list of documents, each a list of sequences (lists of ints)."""
    prefix = str(prefix)
    builder = IndexedDatasetBuilder(data_file_path(prefix), dtype=dtype)
    for doc in docs:
        for seq in doc:
            builder.add_item(seq)
        builder.end_document()
    builder.finalize(index_file_path(prefix))
    return prefix


def read_bytes(prefix):
    return Path(index_file_path(prefix)).read_bytes(), Path(data_file_path(prefix)).read_bytes()


WORKED_DOCS = [[[1, 2, 3]], [[4, 5]], [], [[6], [7, 8, 9]]]


def test_worked_example_bytes(tmp_path):
    prefix = build(tmp_path / "ex", WORKED_DOCS, np.uint16)
    idx, bin_ = read_bytes(prefix)

    expected_idx = (
        b"MMIDIDX\x00\x00"
        + struct.pack("<Q", 1)
        + struct.pack("<B", 8)
        + struct.pack("<Q", 4)
        + struct.pack("<Q", 5)
        + struct.pack("<4i", 3, 2, 1, 3)
        + struct.pack("<4q", 0, 6, 10, 12)
        + struct.pack("<5q", 0, 1, 2, 2, 4)
    )
    assert len(expected_idx) == 122
    assert idx == expected_idx
    assert bin_ == struct.pack("<9H", *range(1, 10))
    assert len(bin_) == 18

    ds = IndexedDataset(prefix)
    assert len(ds) == 4
    assert ds.num_documents == 4
    assert ds.dtype == np.uint16
    assert ds.sequence_lengths.tolist() == [3, 2, 1, 3]
    assert ds.sequence_pointers.tolist() == [0, 6, 10, 12]
    assert ds.document_indices.tolist() == [0, 1, 2, 2, 4]
    assert [s.tolist() for s in ds[:]] == [[1, 2, 3], [4, 5], [6], [7, 8, 9]]
    d = ds.document_indices
    docs = [[ds[i].tolist() for i in range(d[j], d[j + 1])] for j in range(ds.num_documents)]
    assert docs == WORKED_DOCS
    assert ds[-1].tolist() == [7, 8, 9]
    assert ds.get(3, offset=1).tolist() == [8, 9]
    assert ds.get(3, offset=1, length=1).tolist() == [8]


def test_add_document_matches_add_item(tmp_path):
    """add_document (the preprocessing path) writes the same bytes as add_item + end_document,
    for list, numpy and torch inputs."""
    a = build(tmp_path / "a", WORKED_DOCS, np.uint16)
    b = str(tmp_path / "b")
    builder = IndexedDatasetBuilder(data_file_path(b), dtype=np.uint16)
    builder.add_document(np.array([1, 2, 3], dtype=np.int64), [3])
    builder.add_document(torch.tensor([4, 5]), np.array([2]))
    builder.add_document(np.array([], dtype=np.int32), [])
    builder.add_document([6, 7, 8, 9], (1, 3))
    builder.finalize(index_file_path(b))
    assert read_bytes(a) == read_bytes(b)


def test_add_document_rejects_lengths_not_matching_tokens(tmp_path):
    builder = IndexedDatasetBuilder(str(tmp_path / "x.bin"), dtype=np.int32)
    with pytest.raises(ValueError, match="sum 4"):
        builder.add_document(np.arange(5), [1, 3])
    with pytest.raises(ValueError, match="sum 4"):
        builder.add_document(np.arange(5), np.array([1, 3]))
    builder.close()


def test_finalize_refuses_open_document(tmp_path):
    builder = IndexedDatasetBuilder(str(tmp_path / "x.bin"), dtype=np.int32)
    builder.add_item([1, 2])
    with pytest.raises(ValueError, match="end_document"):
        builder.finalize(str(tmp_path / "x.idx"))
    builder.close()


def _range_values(dtype):
    dt = np.dtype(dtype)
    if dt.kind == "f":
        info = np.finfo(dt)
        return np.array([info.min, -1.5, 0.0, info.tiny, 3.25, info.max], dtype=dt)
    info = np.iinfo(dt)
    return np.array([info.min, info.min + 1, 0, 1, info.max - 1, info.max], dtype=dt)


@pytest.mark.parametrize("code", sorted(DTYPE_CODES))
def test_every_dtype_code_round_trips(tmp_path, code):
    dtype = DTYPE_CODES[code]
    assert dtype_code(dtype) == code
    values = _range_values(dtype)
    prefix = build(tmp_path / f"d{code}", [[values[:2]], [values[2:], values[:1]]], dtype)
    idx, bin_ = read_bytes(prefix)
    assert idx[17] == code
    assert bin_ == np.concatenate([values, values[:1]]).astype(np.dtype(dtype).newbyteorder("<")).tobytes()

    ds = IndexedDataset(prefix)
    assert ds.dtype == np.dtype(dtype)
    assert ds[0].dtype == np.dtype(dtype)
    np.testing.assert_array_equal(ds[0], values[:2])
    np.testing.assert_array_equal(ds[1], values[2:])
    np.testing.assert_array_equal(ds[2], values[:1])
    assert ds.sequence_pointers.tolist() == [0, 2 * values.itemsize, 6 * values.itemsize]
    assert ds.document_indices.tolist() == [0, 1, 3]


def test_dtype_helpers():
    assert optimal_dtype(32000) == np.uint16
    assert optimal_dtype(65499) == np.uint16
    assert optimal_dtype(65500) == np.int32
    assert optimal_dtype(128256) == np.int32
    with pytest.raises(ValueError, match="uint32"):
        dtype_code(np.uint32)
    with pytest.raises(ValueError, match="float16"):
        IndexedDatasetBuilder("/nonexistent/never-created.bin", dtype=np.float16)


def _base_chain_reaches_mmap(arr):
    obj = arr
    while isinstance(obj, np.ndarray):
        obj = obj.base
    if isinstance(obj, memoryview):  # np.frombuffer keeps the exporter behind a memoryview
        obj = obj.obj
    return isinstance(obj, mmap.mmap)


def test_reads_are_zero_copy_read_only_views(tmp_path):
    prefix = build(tmp_path / "z", WORKED_DOCS, np.uint16)
    ds = IndexedDataset(prefix)

    seq = ds[3]
    assert not seq.flags.owndata
    assert not seq.flags.writeable
    assert _base_chain_reaches_mmap(seq)
    part = ds.get(3, offset=1, length=2)
    assert np.shares_memory(seq, part)
    for s in ds[0:4]:
        assert not s.flags.owndata and _base_chain_reaches_mmap(s)
    assert np.shares_memory(ds[1:3][1], ds[2])
    for arr in (ds.sequence_lengths, ds.sequence_pointers, ds.document_indices):
        assert _base_chain_reaches_mmap(arr) and not arr.flags.writeable

    with pytest.raises(ValueError, match="read-only"):
        seq[0] = 42
    with pytest.raises(ValueError):
        seq.flags.writeable = True
    assert ds[3].tolist() == [7, 8, 9]


def test_indexing_edge_cases(tmp_path):
    prefix = build(tmp_path / "e", [[[1], [], [2, 3]], []], np.int32)
    ds = IndexedDataset(prefix)
    assert ds[1].tolist() == []
    assert [s.tolist() for s in ds[::2]] == [[1], [2, 3]]
    assert [s.tolist() for s in ds[1:]] == [[], [2, 3]]
    assert ds[np.int64(2)].tolist() == [2, 3]
    with pytest.raises(IndexError, match="3"):
        ds[3]
    with pytest.raises(IndexError, match="-4"):
        ds[-4]
    with pytest.raises(IndexError):
        ds.get(2, offset=1, length=2)
    assert ds.document_indices.tolist() == [0, 3, 3]
    # mmaps cannot be pickled; DataLoader workers reopen by prefix
    ds2 = pickle.loads(pickle.dumps(ds))
    assert ds2[2].tolist() == [2, 3]


def test_empty_dataset(tmp_path):
    prefix = build(tmp_path / "empty", [], np.uint16)
    idx, bin_ = read_bytes(prefix)
    assert len(idx) == 34 + 8 and bin_ == b""
    ds = IndexedDataset(prefix)
    assert len(ds) == 0 and ds.num_documents == 0 and ds[:] == []


PARTS = [
    [[[1, 2, 3]], [[4, 5]], []],
    [[[6], [7, 8, 9]], [[10]]],
    [[], [[11, 12, 13, 14], [15]]],
]


def test_merge_equals_building_the_concatenation(tmp_path):
    a = build(tmp_path / "a", PARTS[0])
    b = build(tmp_path / "b", PARTS[1])
    whole = build(tmp_path / "whole", PARTS[0] + PARTS[1])

    merged = str(tmp_path / "merged")
    builder = IndexedDatasetBuilder(data_file_path(merged), dtype=np.uint16)
    builder.add_index(a)
    builder.add_index(b)
    builder.finalize(index_file_path(merged))
    assert read_bytes(merged) == read_bytes(whole)

    # merging onto a builder that already holds documents shifts the indices
    mixed = str(tmp_path / "mixed")
    builder = IndexedDatasetBuilder(data_file_path(mixed), dtype=np.uint16)
    for doc in PARTS[0]:
        builder.add_document([t for s in doc for t in s], [len(s) for s in doc])
    builder.add_index(b)
    builder.finalize(index_file_path(mixed))
    assert read_bytes(mixed) == read_bytes(whole)


def test_merge_dtype_mismatch_raises(tmp_path):
    a = build(tmp_path / "a", PARTS[0], np.int32)
    builder = IndexedDatasetBuilder(str(tmp_path / "m.bin"), dtype=np.uint16)
    with pytest.raises(ValueError, match=r"int32.*uint16"):
        builder.add_index(a)
    builder.close()


def _corrupt(prefix, offset, data):
    p = Path(index_file_path(prefix))
    raw = bytearray(p.read_bytes())
    raw[offset : offset + len(data)] = data
    p.write_bytes(bytes(raw))


def test_bad_files_name_the_path(tmp_path):
    prefix = build(tmp_path / "bad", WORKED_DOCS)
    idx_path, bin_path = index_file_path(prefix), data_file_path(prefix)

    _corrupt(prefix, 0, b"NOTMMIDX\x00")
    with pytest.raises(ValueError, match="bad magic") as e:
        IndexedDataset(prefix)
    assert idx_path in str(e.value)

    build(tmp_path / "bad", WORKED_DOCS)
    _corrupt(prefix, 9, struct.pack("<Q", 2))
    with pytest.raises(ValueError, match="version 2") as e:
        IndexedDataset(prefix)
    assert idx_path in str(e.value)

    build(tmp_path / "bad", WORKED_DOCS)
    _corrupt(prefix, 17, bytes([9]))
    with pytest.raises(ValueError, match="dtype code 9") as e:
        IndexedDataset(prefix)
    assert idx_path in str(e.value)

    build(tmp_path / "bad", WORKED_DOCS)
    Path(bin_path).write_bytes(Path(bin_path).read_bytes()[:-2])
    with pytest.raises(ValueError, match="16 bytes") as e:
        IndexedDataset(prefix)
    assert bin_path in str(e.value)

    build(tmp_path / "bad", WORKED_DOCS)
    Path(idx_path).write_bytes(Path(idx_path).read_bytes()[:-8])
    with pytest.raises(ValueError, match="114 bytes") as e:
        IndexedDataset(prefix)
    assert idx_path in str(e.value)

    Path(idx_path).unlink()
    assert not IndexedDataset.exists(prefix)
    with pytest.raises(FileNotFoundError) as e:
        IndexedDataset(prefix)
    assert idx_path in str(e.value)


def test_merge_tool_cli(tmp_path):
    src = tmp_path / "parts"
    src.mkdir()
    # names chosen so sorted order differs from creation order
    for name, docs in zip(["p0", "p1", "p2"], PARTS):
        build(src / name, docs)
    (src / "README.txt").write_text("not a dataset")
    whole = build(tmp_path / "whole", PARTS[0] + PARTS[1] + PARTS[2])

    out = tmp_path / "out" / "merged"
    result = subprocess.run(
        [sys.executable, "tools/merge_datasets.py", "--input", str(src), "--output-prefix", str(out)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert read_bytes(str(out)) == read_bytes(whole)
    assert sorted(p.name for p in out.parent.iterdir()) == ["merged.bin", "merged.idx"]

    out2 = tmp_path / "out" / "reordered"
    result = subprocess.run(
        [
            sys.executable,
            "tools/merge_datasets.py",
            "--input-prefixes",
            str(src / "p1"),
            str(src / "p0"),
            "--output-prefix",
            str(out2),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    reordered = build(tmp_path / "reordered_ref", PARTS[1] + PARTS[0])
    assert read_bytes(str(out2)) == read_bytes(reordered)
