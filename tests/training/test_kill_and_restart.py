"""Crash at any instant: a DP=2 run with the HDS scheduler and a checkpoint every step is killed
with SIGKILL (every rank at once, as a node failure or the scheduler does) at seeded random
moments -- inside steps, inside checkpoint writes, the tracker update, a metrics line, the
index-cache build, and at random times -- and restarted with the same command each time
(``--save D --load D``, D absent at the first start). The finished run must equal an
uninterrupted one bit for bit: every iteration's metrics, logged once, and the final weights;
and no partial checkpoint or temporary file may be left behind."""

import json
import os
import random
import time

import torch

from megatron_hds.checkpoint.integrity import verify_checkpoint
from megatron_hds.checkpoint.layout import find_latest_iteration
from megatron_hds.checkpoint.store import load_checkpoint
from tests.ranks import Ranks

TRAIN_ITERS = 10
SEED = 20240611
COMPARED = ("iteration", "consumed_samples", "lr", "loss", "grad_norm", "domain_loss", "domain_weights",
            "domain_samples", "batch_hash", "reward")


def _flags(manifest, save, cache):
    return ["--data-manifest", manifest, "--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4",
            "--seq-length", "32", "--position-embedding-type", "rope", "--hidden-dropout", "0.1",
            "--global-batch-size", "8", "--micro-batch-size", "2", "--lr", "3e-3", "--lr-warmup-iters", "2",
            "--log-interval", "1", "--eval-iters", "1", "--eval-interval", "0", "--split", "80,10,10",
            "--mixing", "hds", "--mixing-batch-layout", "hds", "--mixing-warmup-fraction", "0.2",
            "--hds-batch-size", "4", "--hds-hidden-sizes", "32", "32", "--hds-sketch-size", "256", "--hds-lr", "1e-3",
            "--train-iters", str(TRAIN_ITERS), "--save", save, "--load", save, "--save-interval", "1",
            "--data-cache-path", cache]


def _kill_plan(rng):
    """(point, occurrence) of each of 10 attempts: the index cache first (only the first start
    builds it), then every point once and three more inside checkpoint writes or at random
    times, shuffled; occurrences 1-2 keep each attempt's progress to about one step, so the
    run is still going at the last kill."""
    points = ["backward", "observe", "shard_write", "tracker", "metrics", "timed"]
    points += rng.choices(["shard_write", "tracker", "timed"], k=3)
    rng.shuffle(points)
    return [("cache", rng.randint(1, 40))] + [(p, rng.randint(1, 2)) for p in points]


def _run_until_killed(argv, log_dir, point, occurrence, rng, metrics_path):
    """One attempt; returns True when it was killed, False when it finished."""
    timed = point == "timed"
    env = {} if timed else {"MEGATRON_HDS_CRASH": f"{point}:{occurrence}"}
    size_at_start = os.path.getsize(metrics_path) if os.path.exists(metrics_path) else 0
    ranks = Ranks(["-m", "tests.training.crash_harness", *argv], 2, log_dir, env)
    if timed:  # a random instant once this attempt trains (its first metrics line appears)
        deadline = time.monotonic() + 120
        while ranks.poll() == [None, None] and time.monotonic() < deadline:
            if os.path.exists(metrics_path) and os.path.getsize(metrics_path) > size_at_start:
                time.sleep(rng.uniform(0.0, 0.08))
                ranks.kill()
                break
            time.sleep(0.002)
    codes = ranks.wait(timeout=180)
    if codes == [0, 0]:
        return False
    assert all(code == -9 for code in codes), f"{point}:{occurrence} ended with {codes}:\n{ranks.logs()}"
    return True


def _train_records(metrics_path):
    """The raw train records of metrics.jsonl, asserting every line is complete JSON."""
    with open(metrics_path) as f:
        lines = f.read().splitlines()
    records = [json.loads(line) for line in lines]  # a cut line fails here
    return records, [r for r in records if r["kind"] == "train"]


def test_sigkill_at_random_moments_then_restart_equals_an_uninterrupted_run(demo_manifest, tmp_path):
    straight, crashed = str(tmp_path / "straight"), str(tmp_path / "crashed")
    assert not os.path.exists(crashed)  # --save D --load D from the very first start
    reference = Ranks(["-m", "megatron_hds.training.pretrain", *_flags(demo_manifest, straight,
                                                                      str(tmp_path / "cache_straight"))],
                      2, str(tmp_path / "logs_straight"))
    assert reference.wait(timeout=180) == [0, 0], reference.logs()

    rng = random.Random(SEED)
    argv = _flags(demo_manifest, crashed, str(tmp_path / "cache_crashed"))
    metrics_path = os.path.join(crashed, "metrics.jsonl")
    kills = []
    for attempt, (point, occurrence) in enumerate(_kill_plan(rng)):
        if _run_until_killed(argv, str(tmp_path / f"logs_{attempt}"), point, occurrence, rng, metrics_path):
            kills.append((point, occurrence, find_latest_iteration(crashed)))
        else:
            break
    else:
        final = Ranks(["-m", "megatron_hds.training.pretrain", *argv], 2, str(tmp_path / "logs_final"))
        assert final.wait(timeout=180) == [0, 0], final.logs()
    assert len(kills) >= 10, kills
    assert {p for p, _, _ in kills} >= {"cache", "backward", "observe", "shard_write", "tracker", "metrics"}, kills

    # Every iteration logged once, in order, on complete lines, with the uninterrupted run's numbers.
    ref_all, ref_train = _train_records(os.path.join(straight, "metrics.jsonl"))
    all_records, train = _train_records(metrics_path)
    assert [r["iteration"] for r in train] == list(range(1, TRAIN_ITERS + 1)), kills
    assert [r["kind"] for r in all_records] == [r["kind"] for r in ref_all]  # one config record, the same evals
    for mine, theirs in zip(train, ref_train):
        assert {k: mine.get(k) for k in COMPARED} == {k: theirs.get(k) for k in COMPARED}, mine["iteration"]
    assert len({json.dumps(r["domain_weights"]) for r in train}) > 5  # the agent did move the weights

    # The same final weights, bit for bit.
    a, b = load_checkpoint(straight, 0, 0, 1, 1), load_checkpoint(crashed, 0, 0, 1, 1)
    assert a["iteration"] == b["iteration"] == TRAIN_ITERS
    assert a["model"].keys() == b["model"].keys()
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name

    # Nothing half-done is left: only committed, intact checkpoints, the tracker and the log.
    leftovers = [n for n in os.listdir(crashed) if not n.startswith("iter_")]
    assert sorted(leftovers) == ["latest_checkpointed_iteration.txt", "metrics.jsonl"], leftovers
    for name in os.listdir(crashed):
        if name.startswith("iter_"):
            assert verify_checkpoint(crashed, int(name[5:])) == [], name
    # The index-cache array that the first attempt's rank 0 was writing is gone too.
    assert [n for n in os.listdir(tmp_path / "cache_crashed") if ".tmp-" in n] == []
