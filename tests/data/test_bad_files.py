"""Bad files fail at start-up, with an error naming the file and what is wrong, never a numpy or
pickle traceback inside a step: a truncated or corrupted .bin/.idx, a manifest naming a missing
dataset, a damaged tokenizer or one that is not the datasets', a truncated or missing
checkpoint shard (the error names the newest intact checkpoint)."""

import json
import os
import shutil

import numpy as np
import pytest

from megatron_hds.arguments import parse_args
from megatron_hds.checkpoint.integrity import CheckpointDamagedError
from megatron_hds.parallel.state import ParallelState
from megatron_hds.training.trainer import Trainer


@pytest.fixture
def data(demo_manifest, tmp_path):
    """A private copy of the demo datasets and their manifest, to damage."""
    copy = tmp_path / "data"
    shutil.copytree(os.path.dirname(demo_manifest), copy, ignore=shutil.ignore_patterns("cache"))
    manifest = str(copy / os.path.basename(demo_manifest))
    prefix = os.path.join(str(copy), json.load(open(manifest))["domains"][0]["prefix"])
    return manifest, prefix


def _start(manifest, tmp_path, *extra):
    argv = ["--data-manifest", manifest, "--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4",
            "--seq-length", "32", "--global-batch-size", "4", "--micro-batch-size", "2", "--train-iters", "2",
            "--log-interval", "1", "--eval-iters", "1", "--eval-interval", "0", "--split", "80,10,10",
            "--data-cache-path", str(tmp_path / "cache"), *extra]
    config = parse_args(argv)
    return Trainer(config, ParallelState.from_config(config.parallel))


def _rewrite(path, change):
    data = bytearray(open(path, "rb").read())
    change(data)
    open(path, "wb").write(bytes(data))


def test_a_truncated_bin_or_idx_is_named(data, tmp_path):
    manifest, prefix = data
    with open(prefix + ".bin", "r+b") as f:
        f.truncate(os.path.getsize(prefix + ".bin") - 10)
    with pytest.raises(ValueError, match=rf"{prefix}\.bin: size \d+ bytes does not match its index .*truncated"):
        _start(manifest, tmp_path)
    with open(prefix + ".idx", "r+b") as f:
        f.truncate(os.path.getsize(prefix + ".idx") - 8)
    with pytest.raises(ValueError, match=rf"{prefix}\.idx: size \d+ bytes does not match N="):
        _start(manifest, tmp_path)


def test_a_corrupted_idx_is_named(data, tmp_path):
    manifest, prefix = data
    n = int(np.frombuffer(open(prefix + ".idx", "rb").read(), dtype="<u8", count=1, offset=18)[0])

    def shift_a_pointer(idx):  # the 4th sequence's pointer, same file size
        at = 34 + 4 * n + 8 * 3
        idx[at:at + 8] = (np.frombuffer(bytes(idx[at:at + 8]), "<i8")[0] + 2).astype("<i8").tobytes()

    _rewrite(prefix + ".idx", shift_a_pointer)
    with pytest.raises(ValueError, match=rf"{prefix}\.idx: sequence 3 starts at byte \d+ but the sequences before "
                                         r"it end at byte \d+: the index is corrupted"):
        _start(manifest, tmp_path)


def test_a_corrupted_bin_is_named(data, tmp_path):
    manifest, prefix = data

    def overwrite(tokens):  # garbage in the middle: 0xFFFF is no token of a 2000-token vocabulary
        middle = len(tokens) // 2 // 2 * 2
        tokens[middle:middle + 64] = b"\xff" * 64

    _rewrite(prefix + ".bin", overwrite)
    with pytest.raises(ValueError, match=rf"{prefix}\.bin: token 65535 at byte \d+ \(sequence \d+\) is outside the "
                                         r"vocabulary of 2000 tokens"):
        _start(manifest, tmp_path)


def test_a_manifest_naming_a_missing_dataset(data, tmp_path):
    manifest, prefix = data
    os.remove(prefix + ".bin")
    name = json.load(open(manifest))["domains"][0]["name"]
    with pytest.raises(FileNotFoundError, match=rf"'{prefix}\.bin' of domain '{name}' is missing"):
        _start(manifest, tmp_path)


def test_a_tokenizer_that_is_not_the_datasets(data, tmp_path, sp_model, capsys):
    manifest, _ = data
    record = json.load(open(manifest))["tokenizer"]
    # The same model file read as another Megatron type has another vocabulary.
    with pytest.raises(SystemExit):
        _start(manifest, tmp_path, "--tokenizer-model", sp_model, "--tokenizer-type", "SentencePieceTokenizer")
    error = capsys.readouterr().err
    assert f"--tokenizer-model '{sp_model}' has a vocabulary of" in error and "(2000 tokens)" in error
    # Another model of the same size (the manifest says so by its checksum).
    other = dict(json.load(open(manifest)), tokenizer={**record, "sha256": "0" * 64})
    json.dump(other, open(manifest, "w"))
    with pytest.raises(SystemExit):
        _start(manifest, tmp_path, "--tokenizer-model", sp_model)
    assert "is not the tokenizer the datasets of --data-manifest" in capsys.readouterr().err
    # A damaged model file.
    broken = tmp_path / "broken.model"
    broken.write_bytes(open(sp_model, "rb").read()[:500])
    with pytest.raises(SystemExit):
        _start(manifest, tmp_path, "--tokenizer-model", str(broken))
    assert f"SentencePiece model '{broken}' cannot be read" in capsys.readouterr().err


def test_a_truncated_or_missing_checkpoint_shard_fails_at_start_up(data, tmp_path):
    manifest, _ = data
    save = str(tmp_path / "ckpt")
    _start(manifest, tmp_path, "--save", save, "--save-interval", "1").train()
    shard = os.path.join(save, "iter_0000002", "mp_rank_00", "model_optim_rng.pt")
    with open(shard, "r+b") as f:
        f.truncate(1000)
    with pytest.raises(CheckpointDamagedError, match=r"checkpoint iteration 2 .* is damaged: mp_rank_00/"
                                                     r"model_optim_rng.pt is 1000 bytes but was saved with \d+ "
                                                     r"\(truncated\)\. The newest intact checkpoint is iteration 1"):
        _start(manifest, tmp_path, "--save", save, "--load", save)
    os.remove(shard)
    with pytest.raises(CheckpointDamagedError, match=r"model_optim_rng.pt is missing\. The newest intact checkpoint "
                                                     r"is iteration 1"):
        _start(manifest, tmp_path, "--save", save, "--load", save)
