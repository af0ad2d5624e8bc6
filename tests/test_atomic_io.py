"""atomic_io: the final name appears only with complete content; failures leave nothing."""

import os

import pytest

from megatron_hds.atomic_io import atomic_path, write_text_atomic


def test_success_replaces_the_target(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    write_text_atomic(str(target), "new", durable=True)
    assert target.read_text() == "new"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_failure_keeps_the_old_content_and_no_temporary(tmp_path):
    target = tmp_path / "out.npy"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(str(target), suffix=".npy") as tmp:
            assert tmp.endswith(".npy") and os.path.dirname(tmp) == str(tmp_path)
            with open(tmp, "w") as f:
                f.write("half")
            raise RuntimeError("crash while writing")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.npy"]
