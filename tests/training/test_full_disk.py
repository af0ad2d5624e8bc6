"""A checkpoint that cannot be written for lack of space (ENOSPC from the shard's file) stops the
run with a clear error, leaving the previous checkpoint and ``latest`` intact and none of its own
partial files; with --continue-on-save-failure the run trains on and the next interval saves."""

import os

import pytest
import torch

from megatron_hds.arguments import parse_args
from megatron_hds.checkpoint import integrity
from megatron_hds.checkpoint.integrity import verify_checkpoint
from megatron_hds.checkpoint.layout import find_latest_iteration
from megatron_hds.checkpoint.store import CheckpointSaveError
from megatron_hds.parallel.state import ParallelState
from megatron_hds.training.metrics import read_metrics
from megatron_hds.training.trainer import Trainer
from tests.full_disk import FullDiskFile

FULL_AT = 3


def _argv(manifest, save, *extra):
    return ["--data-manifest", manifest, "--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4",
            "--seq-length", "32", "--global-batch-size", "4", "--micro-batch-size", "2", "--log-interval", "1",
            "--eval-iters", "1", "--eval-interval", "0", "--split", "80,10,10", "--train-iters", "5",
            "--save", save, "--save-interval", "1", *extra]


@pytest.fixture
def disk_fills_at_iteration_3(monkeypatch):
    saving = {}
    save, init = Trainer.save, integrity.HashingWriter.__init__

    def trainer_save(self):
        saving["iteration"] = self.iteration
        return save(self)

    def writer_init(self, file):
        init(self, FullDiskFile(file, 1000) if saving.get("iteration") == FULL_AT else file)

    monkeypatch.setattr(Trainer, "save", trainer_save)
    monkeypatch.setattr(integrity.HashingWriter, "__init__", writer_init)


def _train(argv):
    torch.set_num_threads(1)
    config = parse_args(argv)
    return Trainer(config, ParallelState.from_config(config.parallel)).train()


def test_a_full_disk_stops_the_run_and_keeps_the_last_checkpoint(demo_manifest, tmp_path, monkeypatch,
                                                                 disk_fills_at_iteration_3):
    save = str(tmp_path / "run")
    with pytest.raises(CheckpointSaveError) as error:
        _train(_argv(demo_manifest, save))
    message = str(error.value)
    assert f"checkpoint iteration {FULL_AT}" in message and "No space left on device" in message
    assert f"still names iteration {FULL_AT - 1}, which is untouched" in message
    assert sorted(os.listdir(save)) == ["iter_0000001", "iter_0000002", "latest_checkpointed_iteration.txt",
                                        "metrics.jsonl"]
    assert find_latest_iteration(save) == 2 and verify_checkpoint(save, 2) == []
    # Once there is space again, the same command (with --load) resumes from it.
    monkeypatch.undo()
    assert _train(_argv(demo_manifest, save, "--load", save))["iteration"] == 5
    assert [r["iteration"] for r in read_metrics(save)["train"]] == [1, 2, 3, 4, 5]


def test_with_the_flag_training_goes_on_and_the_next_interval_saves(demo_manifest, tmp_path,
                                                                    disk_fills_at_iteration_3):
    save = str(tmp_path / "run")
    assert _train(_argv(demo_manifest, save, "--continue-on-save-failure"))["iteration"] == 5
    assert sorted(os.listdir(save)) == ["iter_0000001", "iter_0000002", "iter_0000004", "iter_0000005",
                                        "latest_checkpointed_iteration.txt", "metrics.jsonl"]
    assert find_latest_iteration(save) == 5 and verify_checkpoint(save, 4) == []
    assert [r["iteration"] for r in read_metrics(save)["train"]] == [1, 2, 3, 4, 5]
