"""Checkpoints record every file's size and sha256; loading a damaged one (a shard truncated,
corrupted or missing; the record itself unreadable) fails at once, naming what is wrong and
the newest intact checkpoint. A save that fails for lack of space leaves the previous
checkpoint and ``latest`` as they were and removes its own partial files, on every rank."""

import errno
import json
import os

import pytest
import torch
import torch.distributed as dist

from megatron_hds.checkpoint import store as ckpt
from megatron_hds.checkpoint import integrity, layout
from megatron_hds.training.preemption import agree
from tests.checkpoint.test_store import _save, _save_layout
from tests.distributed import run_distributed
from tests.full_disk import FullDiskFile


def _shard(root, iteration, name="mp_rank_00"):
    return os.path.join(root, f"iter_{iteration:07d}", name, "model_optim_rng.pt")


def test_the_record_matches_the_files(tmp_path):
    _save_layout(tmp_path, 4, 2, 1)
    record = json.load(open(tmp_path / "iter_0000004" / "checksums.json"))
    assert (record["iteration"], record["tp_size"], record["pp_size"]) == (4, 2, 1)
    assert sorted(record["files"]) == ["mp_rank_00/model_optim_rng.pt", "mp_rank_01/model_optim_rng.pt"]
    for name, entry in record["files"].items():
        path = os.path.join(tmp_path, "iter_0000004", name)
        assert entry == {"bytes": os.path.getsize(path), "sha256": integrity.file_sha256(path)}
    assert integrity.verify_checkpoint(str(tmp_path), 4) == []


def test_a_truncated_corrupted_or_missing_shard_is_named_with_the_newest_intact_checkpoint(tmp_path):
    root = str(tmp_path)
    for it in (1, 2, 3):
        _save_layout(root, it, 2, 1)
    with open(_shard(root, 3, "mp_rank_01"), "r+b") as f:  # a copy that stopped half-way
        f.truncate(os.path.getsize(_shard(root, 3, "mp_rank_01")) // 2)
    for rank in (0, 1):  # every rank sees it, whichever shard it reads
        with pytest.raises(integrity.CheckpointDamagedError) as error:
            ckpt.load_checkpoint(root, rank, 0, 2, 1)
        message = str(error.value)
        assert "checkpoint iteration 3" in message and "mp_rank_01/model_optim_rng.pt is" in message
        assert "(truncated)" in message and "newest intact checkpoint is iteration 2" in message
        assert "write 2 into" in message

    # Same size, other bytes: found by the rank that reads the shard (its checksum).
    path = _shard(root, 2)
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(path, "wb").write(bytes(data))
    assert integrity.verify_checkpoint(root, 2) == ["mp_rank_00/model_optim_rng.pt does not match its recorded sha256 "
                                               "(corrupted)"]
    with pytest.raises(integrity.CheckpointDamagedError, match=r"iteration 2 .*corrupted.*newest intact checkpoint is "
                                                          r"iteration 1"):
        ckpt.load_checkpoint(root, 0, 0, 2, 1, iteration=2)

    os.remove(_shard(root, 1, "mp_rank_01"))
    with pytest.raises(integrity.CheckpointDamagedError, match=r"mp_rank_01/model_optim_rng.pt is missing. No older "
                                                          r"intact checkpoint is left"):
        ckpt.load_checkpoint(root, 0, 0, 2, 1, iteration=1)
    assert integrity.newest_intact_iteration(root) == (None, False)


def test_damage_without_a_record_is_still_named(tmp_path):
    """A checkpoint saved without checksums.json (older versions, Megatron-LM): a truncated shard
    fails with its name, not torch's zip error alone; a missing directory names the others."""
    _save(tmp_path, 1)
    _save(tmp_path, 2)
    for it in (1, 2):
        os.remove(tmp_path / f"iter_{it:07d}" / "checksums.json")
    with open(_shard(tmp_path, 2), "r+b") as f:
        f.truncate(100)
    with pytest.raises(integrity.CheckpointDamagedError, match=r"mp_rank_00/model_optim_rng.pt cannot be read .*newest "
                                                          r"intact checkpoint is iteration 1 \(saved without checksums"):
        ckpt.load_checkpoint(str(tmp_path), 0, 0, 1, 1)
    (tmp_path / "iter_0000001" / "checksums.json").write_text("{not json")
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("7\n")
    with pytest.raises(integrity.CheckpointDamagedError, match="iter_0000007 does not exist"):
        ckpt.load_checkpoint(str(tmp_path), 0, 0, 1, 1)
    assert "checksums.json cannot be read" in integrity.verify_checkpoint(str(tmp_path), 1)[0]


def _no_space(room=0):
    """A replacement for the shard writer's constructor: its file fills up after ``room`` bytes."""
    real_init = integrity.HashingWriter.__init__

    def init(self, file):
        real_init(self, FullDiskFile(file, room))

    return init


def test_a_full_disk_leaves_the_previous_checkpoint_and_latest(tmp_path, monkeypatch):
    _save(tmp_path, 1)
    before = sorted(os.listdir(tmp_path))
    monkeypatch.setattr(integrity.HashingWriter, "__init__", _no_space(room=200))
    with pytest.raises(ckpt.CheckpointSaveError, match=r"iteration 2 .*No space left on device.*still names "
                                                       r"iteration 1, which is untouched"):
        _save(tmp_path, 2)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == before  # no temporary directory or file is left
    assert ckpt.load_checkpoint(str(tmp_path), 0, 0, 1, 1)["iteration"] == 1

    # The disk fills while the tracker is rewritten: the new directory is taken out again.
    real_write_text = ckpt.write_text_atomic

    def tracker_fails(path, text, durable=False):
        if path == layout.tracker_path(str(tmp_path)):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write_text(path, text, durable=durable)

    monkeypatch.setattr(ckpt, "write_text_atomic", tracker_fails)
    with pytest.raises(ckpt.CheckpointSaveError, match="committing it"):
        _save(tmp_path, 3)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == before and layout.find_latest_iteration(str(tmp_path)) == 1


def _second_save_out_of_space(root):
    rank = dist.get_rank()
    _save(root, 1, tp_rank=rank, tp_size=2, rank=rank, barrier=dist.barrier)
    if rank == 1:
        integrity.HashingWriter.__init__ = _no_space()
    with pytest.raises(ckpt.CheckpointSaveError) as error:
        _save(root, 2, tp_rank=rank, tp_size=2, rank=rank, barrier=dist.barrier, agree=agree)
    return str(error.value)


def test_a_full_disk_on_one_writer_is_agreed_and_cleaned_up(tmp_path):
    messages = run_distributed(_second_save_out_of_space, 2, str(tmp_path), timeout=120)
    assert "No space left on device" in messages[1]
    assert "another rank failed" in messages[0] and "still names iteration 1" in messages[0]
    assert sorted(os.listdir(tmp_path)) == ["iter_0000001", "latest_checkpointed_iteration.txt"]
    assert integrity.verify_checkpoint(str(tmp_path), 1) == []
    assert torch.equal(ckpt.load_checkpoint(str(tmp_path), 1, 0, 2, 1)["model"]["w"], torch.full((2,), 1.0))
