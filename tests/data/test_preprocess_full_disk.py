"""Preprocessing on a full disk (ENOSPC) leaves nothing that looks complete: a write that fails
removes every partial output, and a failure after an earlier run's output was replaced leaves
no manifest naming datasets it does not describe."""

import errno
import os

import pytest

import preprocess_data
from megatron_hds.data.indexed_dataset import IndexedDatasetBuilder
from megatron_hds.data.manifest import load_manifest
from tests.full_disk import FullDiskFile


def _run(corpus, sp_model, prefix):
    return preprocess_data.preprocess(preprocess_data.parse_args(
        ["--input", corpus, "--output-prefix", prefix, "--domain-key", "meta.pile_set_name",
         "--tokenizer-model", sp_model, "--append-eod"]))


def test_a_full_disk_while_writing_leaves_nothing(demo_corpus, sp_model, tmp_path, monkeypatch):
    class FillingBuilder(IndexedDatasetBuilder):
        def __init__(self, bin_path, dtype):
            super().__init__(bin_path, dtype)
            self._data_file = FullDiskFile(self._data_file, room=30_000)

    monkeypatch.setattr(preprocess_data, "IndexedDatasetBuilder", FillingBuilder)
    with pytest.raises(OSError, match="No space left on device"):
        _run(demo_corpus, sp_model, str(tmp_path / "out" / "demo"))
    assert os.listdir(tmp_path / "out") == []


def test_a_full_disk_while_replacing_an_output_leaves_no_stale_manifest(demo_corpus, sp_model, tmp_path,
                                                                       monkeypatch):
    prefix = str(tmp_path / "out" / "demo")
    _run(demo_corpus, sp_model, prefix)
    assert load_manifest(prefix + "_manifest.json")  # complete

    def no_space(path, manifest):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(preprocess_data, "write_manifest", no_space)
    with pytest.raises(OSError, match="No space left on device"):
        _run(demo_corpus, sp_model, prefix)
    # the datasets were replaced by the new run's: the old manifest must not vouch for them
    assert not os.path.exists(prefix + "_manifest.json")
    assert not [n for n in os.listdir(tmp_path / "out") if ".tmp-" in n]
